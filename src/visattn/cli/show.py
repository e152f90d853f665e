"""``visattn show``: PNGs that explain the mechanisms.

    visattn show partition --size 8 --partition-size 4 --out partition.png      # an 8 x 8 map, 2 x 2 groups
    visattn show partition --size 10x14 --partition-size 4 --query 3,5 --out p.png
    visattn show attention --checkpoint runs/digits --query 0.3,0.5 --out attention.png
    visattn show attention --checkpoint runs/photos --image cat.jpg --stage 1

``partition``: which pixels share a group (attend to each other) under block (window) and grid partition.
``attention``: what a query point attends to in the block and grid attention of a model (exact attention weights),
or, for mechanisms without an exact token map, which input pixels influence the query's feature (input gradient).
"""

from __future__ import annotations

import argparse

from ._common import add_runtime_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="PNGs of partitions and attention maps",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    part = kinds.add_parser("partition", help="window vs grid partition of an H x W map")
    part.add_argument("--size", default="8", help="map size: N or HxW (default 8)")
    part.add_argument("--partition-size", "-p", type=int, default=4, help="P (default 4)")
    part.add_argument("--query", default="0,0", help="pixel y,x whose group is highlighted (default 0,0)")
    part.add_argument("--out", "-o", default="partition.png")
    part.set_defaults(run=run_partition)
    att = kinds.add_parser("attention", help="attention maps of a model for an image and a query point")
    att.add_argument("--checkpoint", "-c", help="trained model (run folder or file); or --model for random weights")
    att.add_argument("--model", "-m", help="model name (random weights unless --checkpoint)")
    att.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE")
    att.add_argument("--image", help="image file, or digits:N for the N-th built-in test digit (default digits:0)")
    att.add_argument("--img-size", type=int, help="input size (default: the checkpoint's)")
    att.add_argument("--query", default="0.5,0.5",
                     help="query point y,x as fractions of the image (0.5,0.5 = centre) or pixels (e.g. 12,20)")
    att.add_argument("--stage", type=int, default=0, help="stage whose attention is shown (default 0)")
    att.add_argument("--layers", help="shell pattern of module names to show (default: the stage's first two)")
    att.add_argument("--out", "-o", default="attention.png")
    add_runtime_args(att)
    att.set_defaults(run=run_attention)


def _pair(text: str, what: str) -> tuple[float, float]:
    try:
        a, b = (float(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"{what} expects two comma-separated numbers, got {text!r}") from None
    return a, b


def run_partition(args: argparse.Namespace) -> int:
    from ..show import plot_partitions
    from ._common import parse_sizes

    (h, w), = parse_sizes(args.size)
    if args.partition_size < 1 or h < 1 or w < 1:
        raise ValueError("--size and --partition-size must be positive")
    qy, qx = (int(v) for v in _pair(args.query, "--query"))
    path = plot_partitions(h, w, args.partition_size, args.out, query=(qy, qx))
    if path:
        print(f"wrote {path}")
    return 0


def run_attention(args: argparse.Namespace) -> int:
    import torch

    from ..checkpoint import load_model
    from ..registry import create_model
    from ..show import attention_maps, exact_attention_modules, plot_attention, receptive_field, select
    from ..tasks.augment import apply_crops, center_crops, normalize
    from ..tasks.classification.data import IMAGENET_MEAN, IMAGENET_STD, load_digits, read_image
    from ._common import apply_runtime, parse_overrides

    apply_runtime(args)
    if args.checkpoint:
        model, meta = load_model(args.checkpoint, model_name=args.model)
    elif args.model:
        torch.manual_seed(0)
        model, meta = create_model(args.model, **parse_overrides(args.overrides)).eval(), {}
    else:
        raise ValueError("pass --checkpoint (a trained model) or --model (random weights)")
    size = args.img_size or int(meta.get("img_size") or 224)
    if size < model.min_input_size:
        raise ValueError(f"--img-size {size} is too small for this model: it needs at least {model.min_input_size}")
    crop_pct = float(meta.get("crop_pct") or 1.0)
    source = args.image or "digits:0"
    if source.startswith("digits:"):
        from ..tasks.classification.data import _BUILTIN_TEST_FRACTION, _stratified_split

        images, labels, _ = load_digits(size)
        _, test_idx = _stratified_split(labels, _BUILTIN_TEST_FRACTION, seed=0)
        image = images[test_idx[int(source.split(":", 1)[1])]][None]   # (1, 3, S, S) uint8
    else:
        image = read_image(source, round(size / crop_pct))[None]
    image = apply_crops(image, center_crops(1, crop_pct), size).round().clamp(0, 255).to(torch.uint8)
    x = normalize(image.float(), meta.get("mean") or IMAGENET_MEAN, meta.get("std") or IMAGENET_STD)
    q = _pair(args.query, "--query")
    query = q if max(q) < 1 else (q[0] / size, q[1] / size)           # fractions, or pixels of the input
    if not all(0 <= v < 1 for v in query):
        raise ValueError(f"--query {args.query} lies outside the {size}x{size} image")
    info = getattr(model, "feature_info", [])
    if not 0 <= args.stage < max(len(info), 1):
        raise ValueError(f"--stage {args.stage}: the model has stages 0..{len(info) - 1}")
    prefix = info[args.stage]["module"] + "." if info else ""
    names = select(exact_attention_modules(model), args.layers, prefix, 2)
    if names:
        maps = attention_maps(model, x, query, names)
        for m in maps:
            h, w = m["map"].shape
            m["title"] = f"{m['partition']} attention\n{m['name']} ({h}x{w} map)"
        kind = "attention weights (mean over heads)"
    else:
        if not hasattr(model, "forward_intermediates"):
            raise ValueError("this model exposes neither partition attention nor forward_intermediates")
        rf = receptive_field(model, x, query, args.stage)
        maps = [{"name": f"stage {args.stage}", "map": rf,
                 "title": f"stage {args.stage} feature at the query:\ninput-gradient magnitude"}]
        kind = "input-gradient influence (no exact token map for this mechanism)"
    with torch.no_grad():
        probs = model(x).float().softmax(-1)[0]
    classes = meta.get("classes") or [str(i) for i in range(len(probs))]
    top = int(probs.argmax())
    title = f"{meta.get('model') or args.model}: {kind}; predicted {classes[top]} ({float(probs[top]):.2f})"
    path = plot_attention(image[0], query, maps, args.out, title=title)
    for m in maps:
        print(f"{m['name']}: map {tuple(m['map'].shape)}, max weight {float(m['map'].max()):.3f}")
    if path:
        print(f"wrote {path}")
    return 0
