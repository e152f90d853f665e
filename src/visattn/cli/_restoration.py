"""``visattn eval`` for super-resolution / denoising checkpoints: PSNR and SSIM against the no-model baseline.

    visattn eval --checkpoint runs/grl-sr                   # the evaluation images the run was validated on
    visattn eval --checkpoint grl_x4.safetensors --data Set5 --out eval/   # HR/ (+ LR_bicubic/X4/) or a flat folder

SR reports the Y channel with ``scale`` border pixels cropped (the SR papers' protocol), denoising all channels; the
metrics and the degradations (MATLAB bicubic, seeded Gaussian noise) are those of training (``tasks/restoration``).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # command modules import torch inside run() only (``visattn --help`` stays instant)
    from torch import nn


def run_eval(args: argparse.Namespace, model: "nn.Module", meta: dict[str, Any], device: Any) -> int:
    import torch

    from ..checkpoint import resolve_model_file, write_json_atomic
    from ..tasks.restoration import (
        RestorationData,
        RestorationTask,
        builtin_eval_items,
        load_benchmark,
        load_restoration_data,
    )

    task_name = args.task if args.task in ("sr", "denoise") else meta.get("task")
    if task_name not in ("sr", "denoise"):
        raise ValueError(f"{type(model).__name__} is a restoration model: pass --task sr or --task denoise")
    if args.split != "val":
        raise ValueError("restoration checkpoints are evaluated on their evaluation images only (--split val)")
    upscale = int(getattr(model.config, "upscale", 1))
    if (task_name == "sr") != (upscale > 1):
        kind = "a denoising" if upscale == 1 else f"an x{upscale} super-resolution"
        raise ValueError(f"the checkpoint holds {kind} model, not a {task_name} one")
    scale, channels = upscale, int(model.config.in_chans)
    sigma = float(meta.get("noise_sigma") or 25.0)
    saved = meta.get("data") or {}
    if args.data:
        path = Path(args.data)
        if path.is_dir():
            items = load_benchmark(path, scale, channels)
        elif args.data == "photos":
            items = builtin_eval_items(scale, channels)
        else:
            raise ValueError(f"--data {args.data}: not a folder of images (or the built-in 'photos')")
        source = args.data
    elif saved.get("source"):
        data = load_restoration_data(saved["source"], task=task_name, scale=scale, channels=channels,
                                     patch=int(meta.get("patch_size") or 8 * scale), val_data=saved.get("val_data"),
                                     val_fraction=saved.get("val_fraction", 0.1),
                                     split_seed=saved.get("split_seed", 0))
        items, source = data.val, saved.get("val_data") or saved["source"]
    else:
        raise ValueError("the checkpoint does not record its data; pass --data (a folder of images)")
    if args.limit is not None:
        items = items[: args.limit]
    if not items:
        raise ValueError(f"{source}: no evaluation images")
    task = RestorationTask(RestorationData(train=[], val=items, source={"source": source}), task=task_name,
                           scale=scale, sigma=sigma, patch=scale, channels=channels)
    model.to(device)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()

    result = task.evaluate(model, device=device, autocast=autocast)
    base = "bicubic" if task_name == "sr" else "noisy"
    weights, _ = resolve_model_file(args.checkpoint)
    out = Path(args.out) if args.out else weights.parent
    report = {"checkpoint": str(weights), "model": meta.get("model", args.model), "task": task_name,
              "scale": scale, "noise_sigma": sigma if task_name == "denoise" else None, "data": source, **result}
    write_json_atomic(out / "eval.json", report)
    print(f"PSNR {result['val_psnr']:.2f} dB  SSIM {result['val_ssim']:.4f}  ({base}: "
          f"{result[f'val_{base}_psnr']:.2f} dB / {result[f'val_{base}_ssim']:.4f}; {result['val_count']} images, "
          f"{source})")
    print(f"wrote {out / 'eval.json'}")
    return 0
