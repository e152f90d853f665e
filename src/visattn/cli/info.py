"""``visattn info NAME``: one model's config, parameters, GFLOPs at chosen sizes, feature pyramid and the paper's
numbers."""

from __future__ import annotations

import argparse

from ._common import parse_overrides, parse_sizes


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="config, params, GFLOPs and features of one model",
                       description=__doc__)
    p.add_argument("name", help="registered model name")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--sizes", default="224", help="input sizes for GFLOPs, e.g. 224,384 (default 224)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..bench import model_summary
    from .paper import PAPER

    overrides = parse_overrides(args.overrides)
    sizes = parse_sizes(args.sizes)
    first = model_summary(args.name, img_size=sizes[0], **overrides)
    print(f"{args.name}  ({first['class']}, {first['module']})")
    print(f"  parameters      {first['params']:,}" + (f"  (reference implementation: {first['reference_params']:,})"
                                                        if first["reference_params"] else ""))
    for size in sizes:
        s = first if size == sizes[0] else model_summary(args.name, img_size=size, **overrides)
        print(f"  GFLOPs @{size[0]}x{size[1]:<5} {s['gmacs']:.2f}  (multiply-adds)")
    print(f"  min input size  {first['min_input_size']}")
    print("  features        " + ", ".join(f"{f['module']}: {f['num_chs']}ch /{f['reduction']}"
                                            for f in first["feature_info"]))
    paper = PAPER.get(args.name)
    if paper:
        top1 = f", top-1 {paper[2]}%" if paper[2] is not None else ""
        print(f"  paper           {paper[0]}M params, {paper[1]} GFLOPs{top1} ({paper[3]})")
    print("  config")
    for f in dataclasses.fields(first["config"]):
        print(f"    {f.name:<22} {getattr(first['config'], f.name)!r}")
    return 0
