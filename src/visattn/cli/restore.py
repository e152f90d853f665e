"""``visattn restore``: restore image files with a trained restoration model (super-resolution, denoising...), tile
by tile.

    visattn restore --checkpoint runs/grl-sr IMAGE...                       # a visattn run: task and scale from it
    visattn restore --model grl_tiny --task sr --scale 4 --checkpoint sr_grl_tiny_c3x4.ckpt IMAGE...   # official
    visattn restore --model grl_tiny_denoise --task denoise --sigma 25 --checkpoint dn.ckpt --out restored/ IMAGE...

Images of any size go through overlapping tiles (``--tile``, ``--tile-overlap``) blended with a cross-fade, so memory
is bounded by the tile. Outputs are written beside the inputs (the task's suffix: ``<stem>_x4.png``,
``<stem>_denoised.png``) or into ``--out``; existing files are never replaced without ``--overwrite``, and an input
is never replaced at all. ``--degrade`` first applies the task's degradation to clean inputs (a fixed seed per image)
and saves that input too (``<stem>_noisy.png``, ``<stem>_lr.png``): a demonstration on any photo.
Grayscale inputs to an RGB model are restored as RGB and saved as grayscale; 16-bit grayscale PNGs stay 16-bit.
Demosaicking reads a one-channel image as the RGGB mosaic (an RGB one is sampled at each site's colour) and writes RGB.

A dual-pixel defocus model (6 input channels: the left and right views) takes each IMAGE as the left view and its
right view from ``--right-view`` (one per IMAGE, in order), or finds it by DPDD's names: ``<stem>_L`` / ``<stem>_R``
in one folder, ``<split>_l/`` / ``<split>_r/`` folders, or Restormer's ``inputL/`` / ``inputR/``:

    visattn restore --checkpoint runs/dp test_l/source/1P0A2417.png          # right view: test_r/source/...
    visattn restore --checkpoint runs/dp left.png --right-view right.png      # -> left_deblurred.png
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ._common import add_runtime_args

if TYPE_CHECKING:
    import torch


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="restore images with a restoration model: super-resolve, denoise (tiled)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="images to restore (dual-pixel models: left views)")
    p.add_argument("--checkpoint", "-c", required=True,
                   help="run folder, checkpoint folder, .safetensors, or official .ckpt/.pth weights (with --model)")
    p.add_argument("--model", "-m", help="architecture for weights without visattn metadata (e.g. grl_tiny)")
    p.add_argument("--task", help="the restoration task the model does (sr, denoise...; default: the checkpoint's)")
    p.add_argument("--scale", type=int, help="sr: the factor (default: the checkpoint's)")
    p.add_argument("--sigma", type=float, help="denoise: the noise level (0-255) the model is meant for")
    p.add_argument("--quality", type=int, help="jpeg: the JPEG quality (1-100) the model is meant for")
    p.add_argument("--degrade", "--add-noise", dest="degrade", action="store_true",
                   help="first apply the task's degradation to the (clean) inputs with a fixed seed per image "
                        "(denoise: Gaussian noise of --sigma; sr: bicubic downscaling; jpeg: JPEG at --quality; "
                        "demosaic: the RGGB mosaic) and save that input too")
    p.add_argument("--right-view", action="append", metavar="FILE",
                   help="dual-pixel models (6 input channels): the right view of an IMAGE, once per IMAGE in order "
                        "(default: found by DPDD's names, <stem>_R beside <stem>_L, <split>_r/ beside <split>_l/, "
                        "inputR/ beside inputL/)")
    p.add_argument("--out", "-o", help="output folder (default: beside each input)")
    p.add_argument("--suffix", help="output name suffix (default: the task's, _x<scale> or _denoised)")
    p.add_argument("--ext", default=".png", help="output format by extension (default .png)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--tile", type=int, default=256, help="input tile side in pixels, 0 for whole images (256)")
    p.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles (32)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar over tiles (default: when stderr is a terminal)")
    add_runtime_args(p)
    p.set_defaults(run=run)


# restore's own flags that set an option of the task (option name -> value given)
def _options_given(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k, v in (("scale", args.scale), ("sigma", args.sigma), ("quality", args.quality))
            if v is not None}


def _restoration_task(name: str) -> type:
    from ..tasks import get_task
    from ..tasks.restoration.task import RestorationTask, list_restoration_tasks

    cls = get_task(name)
    if not issubclass(cls, RestorationTask):
        raise ValueError(f"--task {name} is not a restoration task; restoration tasks: "
                         f"{', '.join(list_restoration_tasks())}")
    return cls


def _task_options(task_cls: type, saved: dict, given: dict) -> object:
    import dataclasses

    from ..tasks import options_from_dict

    fields = {f.name for f in dataclasses.fields(task_cls.Options)}
    for key in given:
        if key not in fields:
            raise ValueError(f"--{key} is not an option of --task {task_cls.name}")
    return options_from_dict(task_cls.Options, {**{k: v for k, v in saved.items() if k in fields}, **given},
                             what=f"options of task {task_cls.name!r}")


def _model_and_degradation(args: argparse.Namespace) -> tuple[object, type, object]:
    """The model, its task class and the degradation it undoes, from the checkpoint and the command line."""
    import logging

    from ..checkpoint import load_model, resolve_model_file
    from ..registry import get_model_class, get_model_config
    from ..tasks.restoration.task import scale_words
    from .eval import _task_of_model

    log = logging.getLogger("visattn")
    given = _options_given(args)
    _, meta = resolve_model_file(args.checkpoint)
    if meta is None:                                  # official or plain weights: the command line says what it is
        if not args.model:
            raise ValueError(f"{args.checkpoint} has no visattn metadata: pass --model (e.g. grl_tiny)")
        if getattr(get_model_class(args.model), "task", None) != "restoration":
            raise ValueError(f"{args.model} is not a restoration model")
        model = None
        if args.task is None:                          # the model's default configuration decides
            model, _ = load_model(args.checkpoint, model_name=args.model)
        task_cls = _restoration_task(args.task or _task_of_model(model))
        config = get_model_config(args.model)
        upscale = getattr(config, "upscale", None)
        implied = task_cls.Options.implied({"config": {"in_chans": getattr(config, "in_chans", None)}}, upscale)
        degradation = _task_options(task_cls, implied, given).degradation()
        if model is None or model.config.upscale != degradation.scale:
            model, _ = load_model(args.checkpoint, model_name=args.model, overrides=degradation.model_overrides())
        return model, task_cls, degradation
    model, meta = load_model(args.checkpoint, model_name=args.model)
    if getattr(type(model), "task", None) != "restoration" or not hasattr(model.config, "upscale"):
        raise ValueError(f"{args.checkpoint} holds a {type(model).__name__}, not a restoration model")
    name = meta.get("task") or _task_of_model(model)
    if args.task and args.task != name:
        raise ValueError(f"the checkpoint is a {name} model (its model {scale_words(model.config.upscale)}), "
                         f"not {args.task}")
    task_cls = _restoration_task(name)
    saved = meta.get("task_options") or task_cls.Options.implied(meta, model.config.upscale)
    degradation = _task_options(task_cls, saved, given).degradation()
    task_cls.check_scale(model.config.upscale, degradation)
    for key, value in given.items():
        if saved.get(key) is not None and saved[key] != value:
            log.warning("the model was trained with %s %s; restoring with --%s %s", key, saved[key], key, value)
    return model, task_cls, degradation


#: file-name tags of the views of a multi-view input (the dual-pixel left and right views), as DPDD names them
VIEW_TAGS = ("_L", "_R")


def _right_view_of(left: Path) -> Path | None:
    """The right view of dual-pixel ``left`` by DPDD's and Restormer's names, or None if no such file exists."""
    candidates = []
    for tag_l, tag_r in (("_L", "_R"), ("_l", "_r")):                       # <stem>_L.png beside <stem>_R.png
        if left.stem.endswith(tag_l):
            candidates.append(left.with_name(left.stem[: -len(tag_l)] + tag_r + left.suffix))
    parts = left.parts
    for i, part in enumerate(parts[:-1]):
        if part == "inputL":                                                # Restormer: inputL/ beside inputR/
            candidates.append(Path(*parts[:i], "inputR", *parts[i + 1:]))
        elif part.lower().endswith("_l"):                                   # DPDD: test_l/source/ beside test_r/
            candidates.append(Path(*parts[:i], part[:-1] + ("R" if part.endswith("L") else "r"), *parts[i + 1:]))
    return next((c for c in candidates if c.is_file()), None)


def _read_views(src: Path, right: Path | None) -> tuple[torch.Tensor, dict]:
    """The (C, H, W) image ``src``, or with its ``right`` view the (C x 2, H, W) left and right views; ``src``'s file
    info."""
    import torch

    from ..tasks.image_io import read_image_float

    def read(path: Path) -> tuple[torch.Tensor, dict]:
        if not path.is_file():
            raise ValueError(f"no such file: {path}" if path != src else "no such file")
        try:
            return read_image_float(path)
        except Exception as err:  # corrupt or non-image files: say which and go on
            which = "" if path == src else f" {path}"
            raise ValueError(f"cannot read the image{which} ({type(err).__name__}: {err})") from err

    x, info = read(src)
    if right is None:
        return x, info
    y, info_r = read(right)
    if y.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"the left view is {x.shape[-1]}x{x.shape[-2]} pixels but its right view {right} is "
                         f"{y.shape[-1]}x{y.shape[-2]}; the two views of a dual-pixel image have one size")
    if info_r["channels"] != info["channels"]:
        raise ValueError(f"the left view has {info['channels']} channel(s) but its right view {right} has "
                         f"{info_r['channels']}")
    return torch.cat([x, y]), info                                         # (C x 2, H, W): left, then right


def run(args: argparse.Namespace) -> int:
    import logging
    import sys

    import torch

    from ..tasks.image_io import write_image
    from ..tasks.restoration.metrics import rgb_to_y
    from ..tasks.restoration.tiling import count_tiles, tiled_forward
    from ._common import apply_runtime

    log = logging.getLogger("visattn")
    device = apply_runtime(args)
    model, task_cls, degradation = _model_and_degradation(args)
    model.to(device)
    views = degradation.views
    chans = model.config.in_chans // views                                  # of one image (one view)
    if chans * views != model.config.in_chans or chans not in (1, 3) or views > len(VIEW_TAGS):
        raise ValueError(f"{degradation.describe()} feeds {views} image(s) of 1 or 3 channels; the model takes "
                         f"{model.config.in_chans} channels")
    rights = [Path(r) for r in args.right_view or []]
    if rights and views == 1:
        raise ValueError(f"--right-view is for dual-pixel models (6 input channels: the left and right views); this "
                         f"model takes {model.config.in_chans} ({degradation.describe()})")
    if rights and args.degrade:
        raise ValueError("--degrade synthesises both views from one clean image; drop --right-view")
    if rights and len(rights) != len(args.images):
        raise ValueError(f"give one --right-view per IMAGE, in order: {len(args.images)} image(s), {len(rights)} "
                         "right view(s)")
    scale = degradation.scale
    min_size = getattr(type(model), "min_input_size", 1)
    if args.tile and args.tile < min_size:
        raise ValueError(f"--tile {args.tile} is smaller than the model's minimum input {min_size}")
    if args.tile and not 0 <= args.tile_overlap < args.tile:
        raise ValueError(f"--tile-overlap must be >= 0 and less than --tile {args.tile}, got {args.tile_overlap}")
    suffix = args.suffix or degradation.output_suffix
    ext = args.ext if args.ext.startswith(".") else "." + args.ext
    show = sys.stderr.isatty() if args.progress is None else args.progress
    out_dir = Path(args.out) if args.out else None
    done, failed = 0, 0
    planned: set[Path] = set()
    for index, name in enumerate(args.images):
        src = Path(name)
        dst = (out_dir or src.parent) / f"{src.stem}{suffix}{ext}"
        degraded: list[Path] = []
        if args.degrade:
            tags = [""] if views == 1 else VIEW_TAGS[:views]                # dual-pixel: <stem>_blurred_L / _R
            degraded = [dst.with_name(f"{src.stem}{degradation.input_suffix}{t}{ext}") for t in tags]
        try:
            right = None
            if views > 1 and not args.degrade:
                right = rights[index] if rights else _right_view_of(src)
                if right is None:
                    raise ValueError("is one view; a dual-pixel model (6 input channels) takes the left and right "
                                     "views: pass --right-view FILE, or keep DPDD's names (<stem>_L / <stem>_R, "
                                     "<split>_l/ / <split>_r/, inputL/ / inputR/)")
            inputs = {p.resolve() for p in (src, right) if p is not None}
            for target in (dst, *degraded):
                if target.resolve() in inputs or target in planned:
                    raise ValueError(f"output {target} would replace an input or another output; use --suffix or "
                                     "--out")
                if target.exists() and not args.overwrite:
                    raise ValueError(f"{target} exists (use --overwrite to replace it)")
            x, info = _read_views(src, right)
            if info["channels"] == 3 and chans == 1:
                raise ValueError("is an RGB image but the model restores grayscale (1-channel) images; convert it "
                                 "to grayscale or use an RGB model")
            if info["channels"] == 1 and chans == 3:                    # grey view(s) restored as RGB
                x = x.repeat_interleave(3, dim=0)
            x = x[None]                                                 # (1, C x views, H, W)
            m = degradation.size_multiple
            if args.degrade:
                if x.shape[-2] % m or x.shape[-1] % m:
                    log.info("%s: cropped to a multiple of %d pixels for the degradation", src, m)
                    x = x[..., : x.shape[-2] // m * m, : x.shape[-1] // m * m]
                x = degradation(x, torch.Generator().manual_seed(index))
            else:
                x = degradation.input_from_file(x)
            H, W = x.shape[-2:]
            if min(H, W) < min_size:
                raise ValueError(f"is {H}x{W} pixels{' once degraded' if args.degrade else ''}; "
                                 f"{type(model).__name__} needs at least {min_size}x{min_size}")
            bar = None
            if show:
                try:
                    from tqdm import tqdm

                    bar = tqdm(total=count_tiles(H, W, tile=args.tile, overlap=args.tile_overlap), desc=src.name,
                               unit="tile", leave=False, file=sys.stderr)
                except ImportError:
                    bar = None

            def fn(t: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return model(t.to(device)).float().cpu()

            out = tiled_forward(fn, x, scale=scale, tile=args.tile, overlap=args.tile_overlap,
                                progress=bar.update if bar is not None else None)
            if bar is not None:
                bar.close()
            out = out[0].clamp(0, 1)
            if info["channels"] == 1 and out.shape[0] == 3 and not degradation.single_channel_input:  # grey in/out
                out = (rgb_to_y(out[None])[0] - 16) / 219
            write_image(dst, out, bits=info["bits"])
            planned.add(dst)
            if degraded:
                saved = degradation.input_to_file(x)[0].clamp(0, 1)     # (C x views, h, w)
                for path, view in zip(degraded, saved.split(saved.shape[0] // len(degraded))):
                    write_image(path, view, bits=info["bits"])
                    planned.add(path)
            pair = f" + {right}" if right is not None else ""
            print(f"{src}{pair} ({W}x{H}) -> {dst} ({out.shape[-1]}x{out.shape[-2]})")
            done += 1
        except ValueError as err:
            log.warning("skipping %s: %s", src, err)
            failed += 1
    if failed:
        log.warning("%d of %d image(s) not restored", failed, len(args.images))
    if not done:
        raise ValueError("no image restored")
    return 0
