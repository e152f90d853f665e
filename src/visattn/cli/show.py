"""``visattn show``: PNGs that explain the mechanisms.

    visattn show partition --size 8 --partition-size 4 --out partition.png      # an 8 x 8 map, 2 x 2 groups
    visattn show partition --size 10x14 --partition-size 4 --query 3,5 --out p.png
    visattn show attention --checkpoint runs/digits --query 0.3,0.5 --out attention.png
    visattn show attention --checkpoint runs/photos --image cat.jpg --stage 1
    visattn show attention --checkpoint runs/video-mvit --video clip.mp4 --frame 5 --query 0.4,0.6 --out v.png
    visattn show attention --model mvitv2_small_video --video moving_digits:0 --frame 8 --out v.png

``partition``: which pixels share a group (attend to each other) under block (window) and grid partition.
``attention``: what a query point attends to in the block and grid attention of a model, or in the pooling attention
of an MViT (exact attention weights), or, for mechanisms without an exact token map, which input pixels influence the
query's feature (input gradient). For a video model the query is a point of one frame (--frame) and the picture has a
panel per key time step: the attention over the space-time key tokens, frame by frame.
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
    att.add_argument("--video", help="video models: a video file, or moving_digits:N for the N-th built-in training "
                                     "video (default moving_digits:0); its centred clip is shown")
    att.add_argument("--frame", type=int, help="video models: the query's frame in the clip (default: the middle one)")
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
    from ..show import attention_maps, plot_attention, receptive_field
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
    if getattr(model, "input_ndim", 4) == 5:
        return _run_video_attention(args, model, meta)
    if args.video or args.frame is not None:
        raise ValueError("--video and --frame are for video models; this is an image model: pass --image")
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
    query = _query_fractions(args, size, "image")
    names = _stage_attention_modules(args, model)
    if names:
        maps = attention_maps(model, x, query, names)
        for m in maps:
            h, w = m["map"].shape
            kind = f"{m['partition']} attention" if m["partition"] else "pooling attention"
            keys = f"{h}x{w} key map" if m["partition"] is None else f"{h}x{w} map"
            m["title"] = f"{kind}\n{m['name']} ({keys})"
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


def _run_video_attention(args: argparse.Namespace, model: object, meta: dict) -> int:
    """``show attention`` for a video model: the attention of a query point of one frame over the space-time keys."""
    import torch

    from ..show import attention_maps, exact_attention_modules, key_frame_spans, plot_video_attention
    from ..tasks.video.task import load_clip

    if args.image:
        raise ValueError("this is a video model: pass --video FILE or --video moving_digits:N, not --image")
    frames = model.num_frames
    crop = args.img_size or int(meta.get("img_size") or getattr(model.config, "img_size", (224,))[-1])
    if crop < model.min_input_size:
        raise ValueError(f"--img-size {crop} is too small for this model: it needs at least {model.min_input_size}")
    clip, x, line = load_clip(args.video or "moving_digits:0", meta, frames=frames, crop=crop)
    frame = frames // 2 if args.frame is None else args.frame
    if not 0 <= frame < frames:
        raise ValueError(f"--frame {frame}: the clip has frames 0..{frames - 1}")
    yx = _query_fractions(args, crop, "frame")
    names = _stage_attention_modules(args, model)
    if not names:
        raise ValueError(f"no space-time attention module {'matches --layers' if args.layers else 'in that stage'}; "
                         f"modules: {', '.join(exact_attention_modules(model)[:6])} ...")
    maps = attention_maps(model, x, ((frame + 0.5) / frames, *yx), names)
    with torch.no_grad():
        probs = model(x).float().softmax(-1)[0]
    classes = meta.get("classes") or [str(i) for i in range(len(probs))]
    top = int(probs.argmax())
    title = (f"{meta.get('model') or args.model}: pooling attention (mean over heads) of frame {frame}'s query over "
             f"the space-time keys; predicted {classes[top]} ({float(probs[top]):.2f})")
    path = plot_video_attention(clip, frame, yx, maps, args.out, title=title)
    print(line)
    for m in maps:
        t, h, w = m["key_size"]
        spans = ", ".join(f"{a}-{b}" for a, b in key_frame_spans(t, frames))
        print(f"{m['name']}: query {m['query']} of {m['query_size']}, keys {t}x{h}x{w} (t x h x w; frames {spans}), "
              f"max weight {float(m['map'].max()):.3f}, class token {m['prefix_weight']:.3f}")
    if path:
        print(f"wrote {path}")
    return 0


def _query_fractions(args: argparse.Namespace, size: int, what: str) -> tuple[float, float]:
    """``--query`` as fractions of a ``size`` x ``size`` input: given as fractions, or as pixels of the input."""
    q = _pair(args.query, "--query")
    query = q if max(q) < 1 else (q[0] / size, q[1] / size)
    if not all(0 <= v < 1 for v in query):
        raise ValueError(f"--query {args.query} lies outside the {size}x{size} {what}")
    return query


def _stage_attention_modules(args: argparse.Namespace, model: object) -> list[str]:
    """The exact-attention modules of ``--stage`` (at most two, or those ``--layers`` names)."""
    from ..show import exact_attention_modules, select

    info = getattr(model, "feature_info", [])
    if not 0 <= args.stage < max(len(info), 1):
        raise ValueError(f"--stage {args.stage}: the model has stages 0..{len(info) - 1}")
    prefix = info[args.stage]["module"] + "." if info else ""
    return select(exact_attention_modules(model), args.layers, prefix, 2)
