"""``visattn list [PATTERN]``: registered models with parameters and GFLOPs (ours, counted) beside the papers'.

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
    p.set_defaults(run=run)


def _fmt(value: float | None, spec: str) -> str:
    return "-".rjust(int(spec.split(".")[0])) if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    from ..registry import get_attention_class, list_attention, list_models

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
    print(header)
    print("-" * len(header))
    for name in names:
        s = model_summary(name, img_size=None if args.no_flops else args.img_size)
        paper = PAPER.get(name, (None, None, None, ""))
        print(f"{name:<22} {s['params'] / 1e6:>10.2f} {_fmt(s['reference_params'] and s['reference_params'] / 1e6, '9.2f')}"
              f" {_fmt(s.get('gmacs'), '12.2f')} {_fmt(paper[0], '9.1f')} {_fmt(paper[1], '12.1f')}"
              f" {_fmt(paper[2], '11.2f')}", flush=True)
    print("GFLOPs are multiply-adds (torch.utils.flop_counter counts 2 FLOPs per multiply-add; halved here to match "
          "the papers). ref = the reference implementation's parameter count.")
    return 0
