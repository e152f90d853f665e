"""``visattn convert``: a timm or official checkpoint -> visattn safetensors + model JSON.

    visattn convert maxvit_tiny_tf_224.pth --model maxvit_tiny --out maxvit_tiny.safetensors
    visattn convert official.pth --model cloformer_xxs --classes classes.txt --img-size 224

Keys are remapped by the model's own ``remap_state_dict`` through ``visattn.load_pretrained`` (a strict load: any
missing or unexpected key is an error). The class count is read from the checkpoint when it differs from the
variant's default. ``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``: no pickled code runs.
The written file is loaded back and compared tensor by tensor before the command reports success.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="timm / official checkpoint -> visattn safetensors + model.json",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="checkpoint file (.pth, .pt, .bin, .ckpt, .safetensors)")
    p.add_argument("--model", "-m", required=True, help="visattn model name")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--out", "-o", help="output .safetensors (default: <source stem>.visattn.safetensors)")
    p.add_argument("--classes", help="text file with one class name per line")
    p.add_argument("--img-size", type=int, default=224, help="input size recorded for inference (default 224)")
    p.add_argument("--crop-pct", type=float, help="eval centre-crop fraction (default: the model's pretrained_cfg, "
                                                  "e.g. 0.95 for MaxViT / DaViT, 0.9 for MViTv2 as in timm)")
    p.add_argument("--mean", type=float, nargs=3, help="normalisation mean (default: the model's pretrained_cfg)")
    p.add_argument("--std", type=float, nargs=3, help="normalisation std (default: the model's pretrained_cfg)")
    p.set_defaults(run=run)


def _infer_num_classes(name: str, overrides: dict, state: dict) -> int | None:
    """The class count a checkpoint was trained with: the leading size of the keys that change with num_classes."""
    import torch

    from ..registry import create_model, get_model_config

    base = get_model_config(name, **overrides).num_classes
    with torch.device("meta"):
        a = create_model(name, **{**overrides, "num_classes": base})
        b = create_model(name, **{**overrides, "num_classes": base + 1})
    remapped = a.remap_state_dict(dict(state), a) if hasattr(a, "remap_state_dict") else state
    sa, sb = a.state_dict(), b.state_dict()
    head = [k for k in sa if k in sb and sa[k].shape != sb[k].shape]
    sizes = {remapped[k].shape[0] for k in head if k in remapped and remapped[k].ndim >= 1}
    return sizes.pop() if len(sizes) == 1 else None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from ..checkpoint import export_model, model_meta
    from ..registry import create_model
    from ..weights import load_pretrained
    from ..weights.load import read_state_dict
    from ._common import parse_overrides

    overrides = parse_overrides(args.overrides)
    src = Path(args.source)
    state = read_state_dict(src)
    if "num_classes" not in overrides:
        n = _infer_num_classes(args.model, overrides, state)
        if n is not None:
            overrides["num_classes"] = n
    try:
        with torch.device("meta"):                                     # keys and shapes first, without allocating
            load_pretrained(create_model(args.model, **overrides), state)
        model = create_model(args.model, **overrides)
        load_pretrained(model, state)
    except ValueError as err:
        reason = str(err).splitlines()[0].rstrip(":")
        raise ValueError(f"{src} does not load into {args.model}: {reason}. Another architecture, or a config "
                         "that needs --set?") from err
    classes = None
    if args.classes:
        classes = [line.strip() for line in Path(args.classes).read_text().splitlines() if line.strip()]
        if len(classes) != model.config.num_classes:
            raise ValueError(f"{args.classes} lists {len(classes)} classes but the checkpoint has "
                             f"{model.config.num_classes} outputs")
    out = Path(args.out) if args.out else src.with_name(f"{src.stem}.visattn.safetensors")
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out}")
    data = getattr(model, "pretrained_cfg", {})                      # the family's preprocessing (timm's values)
    crop_pct = args.crop_pct if args.crop_pct is not None else data.get("crop_pct", 0.875)
    mean = list(args.mean if args.mean is not None else data.get("mean", (0.485, 0.456, 0.406)))
    std = list(args.std if args.std is not None else data.get("std", (0.229, 0.224, 0.225)))
    meta = model_meta(model, task="classification", classes=classes, img_size=args.img_size,
                      crop_pct=crop_pct, mean=mean, std=std, converted_from=str(src))
    weights = export_model(out.parent, model.state_dict(), meta, stem=out.name[: -len(".safetensors")])
    own = model.state_dict()
    try:
        written = load_file(weights)
        bad = [k for k in own if k not in written or not torch.equal(written[k], own[k].cpu())]
        if bad or len(written) != len(own):
            raise RuntimeError(f"verification of {weights} failed: {bad[:5]} differ from the converted model")
    except BaseException:  # no unverified output is left behind to be mistaken for a good conversion
        weights.unlink(missing_ok=True)
        weights.with_suffix(".json").unlink(missing_ok=True)
        raise
    n = sum(p.numel() for p in model.parameters())
    print(f"converted {src} -> {weights} (+ {weights.with_suffix('.json').name}): {args.model}, "
          f"{len(own)} tensors, {n:,} parameters, {model.config.num_classes} classes; verified")
    return 0
