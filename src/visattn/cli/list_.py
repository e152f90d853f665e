"""``visattn list [PATTERN]``: registered models with parameters and GFLOPs (ours, counted) beside the papers'.
``visattn list --pretrained [PATTERN]``: the published weights tags (source, input size, classes, top-1).

Parameters are counted on the meta device (no memory); FLOPs by ``torch.utils.flop_counter`` on a meta input
through the reference attention path, reported as multiply-adds (the papers' "FLOPs").
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="registered models (or attention modules) with params and GFLOPs",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'maxvit*'")
    p.add_argument("--img-size", type=int, default=224, help="input size for the GFLOPs column (default 224)")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (faster)")
    p.add_argument("--attention", action="store_true", help="list attention mechanisms instead of models")
    p.add_argument("--pretrained", action="store_true",
                   help="list published weights tags (model.tag, timm / torchvision aliases, source) instead")
    p.set_defaults(run=run)


def _fmt(value: float | None, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    from ..registry import get_attention_class, list_attention, list_models

    if args.pretrained:
        return _list_pretrained(args.pattern)
    if args.attention:
        names = list_attention(args.pattern)
        for name in names:
            cls = get_attention_class(name)
            doc = (cls.__doc__ or "").strip().splitlines()
            print(f"{name:<20} {cls.__name__:<28} {doc[0] if doc else ''}")
        return 0
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no model matches {args.pattern!r}; `visattn list` shows them all")
    from ..bench import model_summary
    from .paper import PAPER

    header = (f"{'model':<22} {'params(M)':>10} {'ref(M)':>9} {f'GFLOPs@{args.img_size}':>12} "
              f"{'paper(M)':>9} {'paper GFLOPs':>12} {'paper top-1':>11}")
    import sys

    if not args.no_flops:
        print(f"counting parameters and FLOPs at {args.img_size}x{args.img_size} for {len(names)} model(s), one row "
              "each as it is done (--no-flops is faster)", file=sys.stderr, flush=True)
    print(header)
    print("-" * len(header), flush=True)
    for name in names:
        s = model_summary(name, img_size=None if args.no_flops else args.img_size)
        paper = PAPER.get(name, (None, None, None, ""))
        print(f"{name:<22} {s['params'] / 1e6:>10.2f} {_fmt(s['reference_params'] and s['reference_params'] / 1e6, '9.2f')}"
              f" {_fmt(s.get('gmacs'), '12.2f')} {_fmt(paper[0], '9.1f')} {_fmt(paper[1], '12.1f')}"
              f" {_fmt(paper[2], '11.2f')}", flush=True)
    print("GFLOPs are multiply-adds (torch.utils.flop_counter counts 2 FLOPs per multiply-add; halved here to match "
          "the papers). ref = the reference implementation's parameter count.")
    return 0


def _list_pretrained(pattern: str) -> int:
    from ..weights.registry import LEFT_OUT, list_pretrained

    entries = list_pretrained(pattern)
    if not entries:
        entries = [e for e in list_pretrained() if any(__import__("fnmatch").fnmatch(a, pattern) for a in e.aliases)]
    if not entries:
        raise ValueError(f"no weights tag matches {pattern!r}; `visattn list --pretrained` shows them all")
    header = f"{'model.tag':<36} {'input':>14} {'classes':>7} {'top-1':>6}  {'alias':<34} source"
    print(header)
    print("-" * len(header))
    for e in entries:
        size = "x".join(map(str, e.input_size[1:]))
        top1 = f"{e.top1:6.2f}" if e.top1 is not None else "     -"
        print(f"{e.name:<36} {size:>14} {e.num_classes or '-':>7} {top1}  {(e.aliases or ('',))[0]:<34} {e.source}")
    if pattern == "*":
        print(f"\n{len(entries)} tags. Not registered (no matching visattn variant, or nothing published):")
        for what, why in LEFT_OUT.items():
            print(f"  {what}: {why}")
    return 0
