"""Image files of restoration: float decoding that keeps 16-bit grayscale precision, atomic 8/16-bit writing."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .metrics import rgb_to_y

__all__ = ["read_image_float", "write_image"]

log = logging.getLogger("visattn")

def _png_depth(path: Path) -> tuple[int, int] | None:
    # (bit depth, colour type) from a PNG's IHDR, or None for other files
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return head[24], head[25]


def read_image_float(path: str | os.PathLike, channels: int | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Decode an image file to a float (C, H, W) tensor in [0, 1].

    16-bit grayscale PNG / TIFF keep their precision (Pillow's plain RGB conversion would clip them to white);
    16-bit colour PNGs are decoded by Pillow at 8 bits (with a warning). Alpha is dropped, palettes expanded.

    Args:
        path: the file.
        channels: 1 or 3 to convert (RGB -> luma, grayscale -> three equal channels); None keeps the file's.

    Returns:
        the image and ``{"channels": file channels, "bits": 8 or 16, "size": (H, W)}``.
    """
    import numpy as np
    from PIL import Image

    path = Path(path)
    with Image.open(path) as im:
        im.load()
        bits = 8
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im).astype(np.float32)
            peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
            bits = 16 if peak > 255 else 8
            x = torch.from_numpy(arr / peak)[None]
        elif im.mode == "F":
            x = torch.from_numpy(np.asarray(im).astype(np.float32)).clamp(0, 1)[None]
            bits = 16
        else:
            if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                log.warning("%s: dropping the alpha channel", path)
            if im.mode not in ("L", "RGB"):
                im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
            arr = np.asarray(im)
            x = torch.from_numpy(arr.astype(np.float32) / 255.0)
            x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
            depth = _png_depth(path)
            if depth is not None and depth[0] == 16:
                log.warning("%s: 16-bit colour PNG decoded at 8 bits (Pillow cannot read more)", path)
    info = {"channels": x.shape[0], "bits": bits, "size": tuple(x.shape[-2:])}
    if channels is not None and channels != x.shape[0]:
        if channels == 3:
            x = x.expand(3, -1, -1)
        elif channels == 1:
            x = rgb_to_y(x[None])[0].sub(16).div(219).clamp(0, 1)       # luma rescaled to [0, 1]
        else:
            raise ValueError(f"cannot convert {path} to {channels} channels")
    return x.contiguous(), info


def write_image(path: str | os.PathLike, x: Tensor, *, bits: int = 8) -> None:
    """Save a (C, H, W) [0, 1] image atomically; 16-bit only for grayscale PNG (what Pillow can write)."""
    import numpy as np
    from PIL import Image

    path = Path(path)
    x = x.detach().float().clamp(0, 1).cpu()
    if bits == 16 and x.shape[0] == 1 and path.suffix.lower() in (".png", ".tif", ".tiff"):
        im = Image.fromarray((x[0].numpy() * 65535).round().astype(np.uint16))
    else:
        arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    im.save(tmp)
    os.replace(tmp, path)
