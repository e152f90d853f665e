"""``visattn restore``: super-resolve or denoise image files with a trained restoration model, tile by tile.

    visattn restore --checkpoint runs/grl-sr IMAGE...                       # a visattn run: task and scale from it
    visattn restore --model grl_tiny --task sr --scale 4 --checkpoint sr_grl_tiny_c3x4.ckpt IMAGE...   # official
    visattn restore --model grl_tiny_denoise --task denoise --sigma 25 --checkpoint dn.ckpt --out restored/ IMAGE...

Images of any size go through overlapping tiles (``--tile``, ``--tile-overlap``) blended with a cross-fade, so memory
is bounded by the tile. Outputs are written beside the inputs (``<stem>_x4.png``, ``<stem>_denoised.png``) or into
``--out``; existing files are never replaced without ``--overwrite``, and an input is never replaced at all.
Grayscale inputs to an RGB model are restored as RGB and saved as grayscale; 16-bit grayscale PNGs stay 16-bit.
"""

from __future__ import annotations

import argparse

from ._common import add_runtime_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("restore", help="super-resolve or denoise images with a restoration model (tiled)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", "-c", required=True,
                   help="run folder, checkpoint folder, .safetensors, or official .ckpt/.pth weights (with --model)")
    p.add_argument("--model", "-m", help="architecture for weights without visattn metadata (e.g. grl_tiny)")
    p.add_argument("--task", choices=["sr", "denoise"], help="what the model does (default: from the checkpoint)")
    p.add_argument("--scale", type=int, help="sr factor (default: the checkpoint's)")
    p.add_argument("--sigma", type=float, help="denoise: the noise level (0-255) the model is meant for")
    p.add_argument("--add-noise", action="store_true",
                   help="denoise: first add Gaussian noise of --sigma to the (clean) inputs, a fixed seed per image")
    p.add_argument("--out", "-o", help="output folder (default: beside each input)")
    p.add_argument("--suffix", help="output name suffix (default _x<scale> or _denoised)")
    p.add_argument("--ext", default=".png", help="output format by extension (default .png)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--tile", type=int, default=256, help="input tile side in pixels, 0 for whole images (256)")
    p.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles (32)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar over tiles (default: when stderr is a terminal)")
    add_runtime_args(p)
    p.set_defaults(run=run)


def _model_and_task(args: argparse.Namespace) -> tuple[object, str, int, dict]:
    from ..checkpoint import load_model, resolve_model_file
    from ..registry import get_model_config

    _, meta = resolve_model_file(args.checkpoint)
    overrides = {}
    if meta is None:                                  # official or plain weights: the command line says what it is
        if not args.model:
            raise ValueError(f"{args.checkpoint} has no visattn metadata: pass --model (e.g. grl_tiny)")
        config = get_model_config(args.model)
        if not hasattr(config, "upscale"):
            raise ValueError(f"{args.model} is not a restoration model")
        if args.task == "denoise":
            overrides["upscale"] = 1
        elif args.scale:
            overrides["upscale"] = args.scale
    model, meta = load_model(args.checkpoint, model_name=args.model, overrides=overrides)
    upscale = getattr(model.config, "upscale", None)
    if upscale is None or getattr(type(model), "task", None) != "restoration":
        raise ValueError(f"{args.checkpoint} holds a {type(model).__name__}, not a restoration model")
    task = meta.get("task") or ("denoise" if upscale == 1 else "sr")
    if args.task and args.task != task:
        what = f"x{upscale}" if upscale > 1 else "denoising"
        raise ValueError(f"the checkpoint is a {task} model ({what}), not {args.task}")
    if task == "sr" and args.scale and args.scale != upscale:
        raise ValueError(f"the checkpoint upscales x{upscale}; --scale {args.scale} needs a x{args.scale} model")
    return model, task, upscale, meta


def run(args: argparse.Namespace) -> int:
    import logging
    import sys
    from pathlib import Path

    import torch

    from ..tasks.restoration import read_image_float, rgb_to_y, tiled_forward, write_image
    from ._common import apply_runtime

    log = logging.getLogger("visattn")
    device = apply_runtime(args)
    model, task, scale, meta = _model_and_task(args)
    model.to(device)
    chans = model.config.in_chans
    min_size = getattr(type(model), "min_input_size", 1)
    sigma = args.sigma if args.sigma is not None else meta.get("noise_sigma")
    if task == "denoise" and args.sigma is not None and meta.get("noise_sigma") not in (None, args.sigma):
        log.warning("the model was trained for sigma %g; restoring with --sigma %g", meta["noise_sigma"], args.sigma)
    if args.add_noise and (task != "denoise" or sigma is None):
        raise ValueError("--add-noise is for denoising and needs --sigma")
    if args.tile and args.tile < min_size:
        raise ValueError(f"--tile {args.tile} is smaller than the model's minimum input {min_size}")
    suffix = args.suffix or (f"_x{scale}" if task == "sr" else "_denoised")
    ext = args.ext if args.ext.startswith(".") else "." + args.ext
    show = sys.stderr.isatty() if args.progress is None else args.progress
    out_dir = Path(args.out) if args.out else None
    done, failed = 0, 0
    planned: set[Path] = set()
    for index, name in enumerate(args.images):
        src = Path(name)
        dst = (out_dir or src.parent) / f"{src.stem}{suffix}{ext}"
        noisy = dst.with_name(f"{src.stem}_noisy{ext}") if args.add_noise else None
        try:
            for target in filter(None, (dst, noisy)):
                if target.resolve() == src.resolve() or target in planned:
                    raise ValueError(f"output {target} would replace an input or another output; use --suffix or "
                                     "--out")
                if target.exists() and not args.overwrite:
                    raise ValueError(f"{target} exists (use --overwrite to replace it)")
            if not src.is_file():
                raise ValueError("no such file")
            try:
                x, info = read_image_float(src)
            except Exception as err:  # corrupt or non-image files: say which and go on
                raise ValueError(f"cannot read the image ({type(err).__name__}: {err})") from err
            if info["channels"] == 3 and chans == 1:
                raise ValueError("is an RGB image but the model restores grayscale (1-channel) images; convert it "
                                 "to grayscale or use an RGB model")
            x = x.expand(chans, -1, -1) if x.shape[0] == 1 and chans == 3 else x
            H, W = x.shape[-2:]
            if min(H, W) < min_size:
                raise ValueError(f"is {H}x{W} pixels; {type(model).__name__} needs at least {min_size}x{min_size}")
            x = x[None]
            if args.add_noise:
                g = torch.Generator().manual_seed(index)
                x = x + torch.randn(x.shape, generator=g) * (sigma / 255)
            bar = None
            if show:
                try:
                    from tqdm import tqdm

                    bar = tqdm(desc=src.name, unit="tile", leave=False, file=sys.stderr)
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
            if info["channels"] == 1 and out.shape[0] == 3:              # grayscale in, grayscale out
                out = (rgb_to_y(out[None])[0] - 16) / 219
            write_image(dst, out, bits=info["bits"])
            planned.add(dst)
            if noisy is not None:
                write_image(noisy, x[0].clamp(0, 1), bits=info["bits"])
                planned.add(noisy)
            print(f"{src} ({W}x{H}) -> {dst} ({out.shape[-1]}x{out.shape[-2]})")
            done += 1
        except ValueError as err:
            log.warning("skipping %s: %s", src, err)
            failed += 1
    if failed:
        log.warning("%d of %d image(s) not restored", failed, len(args.images))
    if not done:
        raise ValueError("no image restored")
    return 0
