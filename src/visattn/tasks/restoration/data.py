"""Image restoration: super-resolution (``sr``) and denoising (``denoise``) - data, degradation, metrics, tiling.

Data sources (``--data``):

* ``photos`` (built in): the colour photographs that ship inside the scikit-image wheel (nothing is downloaded);
  :data:`TRAIN_PHOTOS` are for training and :data:`EVAL_PHOTOS` - other scenes - are held out for evaluation.
* a folder of high-quality images (any depth of sub-folders), or one with ``train/`` and ``val/`` sub-folders.
  Without ``val/`` (and without ``--val-data``), ``val_fraction`` of the images is held out with a fixed seed.
* ``--val-data``: a benchmark folder laid out like Set5 / Set14 / Urban100: ``HR/`` (or the images directly) and
  optionally the low-resolution inputs in ``LR_bicubic/X<s>/``, ``LR/X<s>/``, ``LRbicx<s>/`` or ``LR/`` (matched by
  file stem, with or without an ``x<s>`` suffix). Missing LR inputs are generated from HR.

Training samples are random crops of ``patch`` HR pixels (positions drawn once per run from the seed; every step
flips / rotates them at random), degraded on the fly: bicubic downscaling with MATLAB's antialiased kernel
(:func:`imresize`, what every SR benchmark uses to make its LR images) and 8-bit rounding for ``sr``, additive
Gaussian noise of ``sigma / 255`` for ``denoise``. Loss: L1. Evaluation: PSNR and SSIM of 8-bit outputs on whole
images through :func:`tiled_forward` - for SR on the Y channel (BT.601) after cropping ``scale`` border pixels, for
colour denoising on all channels (as the papers report them); the bicubic (SR) or noisy-input (denoising) baseline
is reported next to the model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import DistInfo, all_reduce_sum
from .base import DataError

__all__ = [
    "TRAIN_PHOTOS",
    "EVAL_PHOTOS",
    "RESTORATION_TASKS",
    "RESTORATION_DEFAULTS",
    "imresize",
    "rgb_to_y",
    "psnr",
    "ssim",
    "quantize",
    "tiled_forward",
    "read_image_float",
    "write_image",
    "RestorationTask",
    "build_restoration_task",
]

log = logging.getLogger("visattn")

RESTORATION_TASKS = ("sr", "denoise")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Photographs and textures for training (grayscale ones are replicated to RGB for RGB models), other scenes held out.
TRAIN_PHOTOS = ("astronaut", "coffee", "motorcycle_left", "ihc", "retina", "hubble_deep_field", "brick", "grass",
                "gravel", "moon", "coins")
EVAL_PHOTOS = ("chelsea", "rocket", "camera")
_PHOTO_FILES = {"astronaut": "astronaut.png", "coffee": "coffee.png", "motorcycle_left": "motorcycle_left.png",
                "ihc": "ihc.png", "retina": "retina.jpg", "hubble_deep_field": "hubble_deep_field.jpg",
                "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "moon": "moon.png",
                "coins": "coins.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg", "camera": "camera.png"}
# What `visattn train --task sr|denoise` uses for options the user leaves out.
RESTORATION_DEFAULTS = {"model": "grl_tiny", "data": "photos", "batch_size": 8, "lr": 5e-4, "min_lr": 1e-5,
                        "weight_decay": 0.0, "warmup_epochs": 0.2, "epochs": 5, "clip_grad": 0.0}
_PATCHES_PER_IMAGE = 100


# --- resampling and metrics ----------------------------------------------------------------------------------------

def _cubic(x: Tensor) -> Tensor:
    # Keys' cubic convolution kernel with a = -0.5 (MATLAB imresize, PIL, OpenCV INTER_CUBIC)
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))).to(x.dtype)


def _resize_matrix(in_len: int, out_len: int, scale: float) -> Tensor:
    """(out_len, in_len) weights of MATLAB ``imresize(..., 'bicubic')`` along one axis (antialiased when shrinking).

    Output pixel i (1-based) sits at u = i / scale + (1 - 1 / scale) / 2 in input pixels; when shrinking, the
    kernel is stretched by 1 / scale (antialiasing); taps past the border are mirrored (symmetric padding).
    """
    shrink = scale < 1
    width = 4.0 / scale if shrink else 4.0
    i = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = i / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]    # (out, taps), 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if shrink else _cubic(dist)
    w = w / w.sum(1, keepdim=True)
    # symmetric mirroring of 1-based indices: ..., 2, 1, 1, 2, ..., n, n, n-1, ...
    j = (idx - 1).long() % (2 * in_len)
    j = torch.where(j >= in_len, 2 * in_len - 1 - j, j)
    mat = torch.zeros(out_len, in_len, dtype=torch.float64)
    mat.scatter_add_(1, j, w)
    return mat


def imresize(x: Tensor, scale: float | None = None, *, size: tuple[int, int] | None = None) -> Tensor:
    """MATLAB-compatible bicubic resize of (..., H, W) float images, antialiased when downscaling.

    Args:
        x: images, any leading dimensions.
        scale: factor (0.25 shrinks 4x); the output size is ceil(scale * size), as in MATLAB.
        size: output (height, width) instead of ``scale`` (both axes then use their own factor).
    """
    H, W = x.shape[-2:]
    if size is None:
        if scale is None:
            raise ValueError("imresize needs scale or size")
        size = (math.ceil(H * scale), math.ceil(W * scale))
        sh = sw = scale
    else:
        sh, sw = size[0] / H, size[1] / W
    mh = _resize_matrix(H, size[0], sh).to(x.device, torch.float32 if x.dtype != torch.float64 else x.dtype)
    mw = _resize_matrix(W, size[1], sw).to(mh.device, mh.dtype)
    out = torch.einsum("oh,...hw,pw->...op", mh, x.to(mh.dtype), mw)
    return out.to(x.dtype)


def quantize(x: Tensor) -> Tensor:
    """Round [0, 1] images to 8-bit levels (what saving a PNG does), staying in float."""
    return (x.clamp(0, 1) * 255).round() / 255


def rgb_to_y(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma in [16, 235] (MATLAB ``rgb2ycbcr``); 1 channel: x * 255."""
    if x.shape[1] == 1:
        return x * 255
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) + 16


def _crop(x: Tensor, border: int) -> Tensor:
    return x[..., border:x.shape[-2] - border, border:x.shape[-1] - border] if border else x


def psnr(a: Tensor, b: Tensor, *, border: int = 0, y_channel: bool = True) -> Tensor:
    """PSNR (dB, 8-bit peak 255) per image of (B, C, H, W) images in [0, 1], on Y by default, borders cropped."""
    a, b = a.double(), b.double()
    a, b = (rgb_to_y(a), rgb_to_y(b)) if y_channel else (a * 255, b * 255)
    mse = (_crop(a, border) - _crop(b, border)).square().mean((1, 2, 3))
    return 10 * torch.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]                                      # (size, size)


def ssim(a: Tensor, b: Tensor, *, border: int = 0, y_channel: bool = True) -> Tensor:
    """SSIM per image (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 8-bit range), on Y
    by default, over the window positions that fit inside the cropped image ("valid"), averaged over channels."""
    a, b = a.double(), b.double()
    a, b = (rgb_to_y(a), rgb_to_y(b)) if y_channel else (a * 255, b * 255)
    a, b = _crop(a, border), _crop(b, border)
    C = a.shape[1]
    win = _gaussian_window().to(a.device).expand(C, 1, 11, 11)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels after cropping, got {tuple(a.shape[-2:])}")

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, win, groups=C)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b = filt(a * a) - mu_a ** 2, filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean((1, 2, 3))


# --- tiled inference -----------------------------------------------------------------------------------------------

def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _edge_weights(n: int, at_start: bool, at_end: bool, overlap: int) -> Tensor:
    """1-D blending weights of a tile of n output pixels: 0 over the first overlap/4 pixels of an interior edge
    (the pixels that miss context), a linear ramp over the next overlap/2, then 1. The ramps of two neighbours
    sum to one."""
    w = torch.ones(n, dtype=torch.float64)
    margin = overlap // 4
    ramp = overlap - 2 * margin
    d = torch.arange(n, dtype=torch.float64)
    rising = ((d - margin + 1) / (ramp + 1)).clamp(0, 1)
    if not at_start:
        w = torch.minimum(w, rising)
    if not at_end:
        w = torch.minimum(w, rising.flip(0))
    return w


def tiled_forward(fn: Callable[[Tensor], Tensor], x: Tensor, *, scale: int = 1, tile: int = 0, overlap: int = 32,
                  progress: Callable[[int], Any] | None = None) -> Tensor:
    """Apply an image-to-image ``fn`` to overlapping tiles of ``x`` and blend them: memory bounded by the tile.

    Interior tile edges get zero weight over their outer ``overlap // 4`` pixels and a linear cross-fade over the
    next ``overlap // 2``; image borders keep full weight. If ``fn`` sees at most ``overlap // 4`` pixels of context
    on each side, the result equals ``fn(x)`` (up to float rounding).

    Args:
        fn: maps (B, C, h, w) to (B, C', h * scale, w * scale).
        x: (B, C, H, W).
        scale: output / input size ratio.
        tile: input tile side; 0 (or a tile covering the image) runs ``fn`` on the whole image.
        overlap: input pixels shared by neighbouring tiles (< tile).
        progress: called with the number of tiles once, then with 1 after each tile (e.g. a tqdm's update).
    """
    B, _, H, W = x.shape
    if tile <= 0 or (H <= tile and W <= tile):
        if progress is not None:
            progress(1)
        return fn(x)
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    step = tile - overlap
    ys, xs = _tile_starts(H, tile, step), _tile_starts(W, tile, step)
    out = weight = None
    for y in ys:
        for x0 in xs:
            h, w = min(tile, H), min(tile, W)
            part = fn(x[..., y:y + h, x0:x0 + w])                        # (B, C', h*s, w*s)
            if out is None:
                out = torch.zeros(B, part.shape[1], H * scale, W * scale, dtype=torch.float64, device=part.device)
                weight = torch.zeros(1, 1, H * scale, W * scale, dtype=torch.float64, device=part.device)
            wy = _edge_weights(h * scale, y == 0, y + h >= H, overlap * scale)
            wx = _edge_weights(w * scale, x0 == 0, x0 + w >= W, overlap * scale)
            wt = (wy[:, None] * wx[None, :]).to(part.device)             # (h*s, w*s)
            ys_, xs_ = slice(y * scale, (y + h) * scale), slice(x0 * scale, (x0 + w) * scale)
            out[..., ys_, xs_] += part.double() * wt
            weight[..., ys_, xs_] += wt
            if progress is not None:
                progress(1)
    return (out / weight).to(x.dtype)


# --- image files ---------------------------------------------------------------------------------------------------

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


def _verify(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types for bad files
        return f"{type(err).__name__}: {err}"
    return None


def scan_images(root: Path) -> list[Path]:
    """Readable image files under ``root`` (recursively, sorted); bad or non-image files are skipped with a warning."""
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if root.is_file():
        raise DataError(f"expected a folder of images, got a file: {root}")
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        reason = _verify(path)
        if reason:
            log.warning("skipping %s: %s", path, reason)
            continue
        files.append(path)
    return files


def _skimage_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in 'photos' ship inside scikit-image: pip install 'visattn[data]'")
    return Path(spec.submodule_search_locations[0]) / "data"


def builtin_photos(names: Sequence[str], channels: int) -> list[tuple[str, Tensor]]:
    """scikit-image sample photographs as uint8 (C, H, W) tensors."""
    folder = _skimage_data_dir()
    out = []
    for name in names:
        x, _ = read_image_float(folder / _PHOTO_FILES[name], channels)
        out.append((name, (x * 255).round().to(torch.uint8)))
    return out


def builtin_eval_items(scale: int, channels: int) -> list[tuple[str, Tensor, None]]:
    """The built-in evaluation photos as (name, HR cropped to a multiple of ``scale``, no given LR) items."""
    return [(n, _mod_crop(x, scale), None) for n, x in builtin_photos(EVAL_PHOTOS, channels)]


def _load_uint8(files: Sequence[Path], channels: int) -> list[tuple[str, Tensor]]:
    out = []
    for path in files:
        try:
            x, _ = read_image_float(path, channels)
        except Exception as err:  # verified at scan time; a file can still be truncated past its header
            log.warning("skipping %s: %s", path, err)
            continue
        out.append((path.stem, (x * 255).round().to(torch.uint8)))
    return out


def _find_lr_folder(root: Path, scale: int) -> Path | None:
    for rel in (f"LR_bicubic/X{scale}", f"LR_bicubic/x{scale}", f"LR/X{scale}", f"LR/x{scale}", f"LRbicx{scale}",
                "LR"):
        if (root / rel).is_dir():
            return root / rel
    return None


def load_benchmark(root: Path, scale: int, channels: int) -> list[tuple[str, Tensor, Tensor | None]]:
    """(name, HR uint8, LR uint8 or None) of a Set5-style folder; HR is cropped to a multiple of ``scale``."""
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    lr_dir = _find_lr_folder(root, scale) if scale > 1 else None
    hr_files = [p for p in scan_images(hr_dir) if lr_dir is None or lr_dir not in p.parents]
    if hr_dir == root:
        hr_files = [p for p in hr_files if p.parent == root]
    if not hr_files:
        raise DataError(f"no HR images in {hr_dir}")
    lr_files = {}
    if lr_dir is not None:
        for p in scan_images(lr_dir):
            stem = p.stem
            for suffix in (f"x{scale}", f"X{scale}", f"_x{scale}", f"_X{scale}"):
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
            lr_files[stem] = p
    out = []
    for name, hr in _load_uint8(hr_files, channels):
        lr = None
        if name in lr_files:
            lr = _load_uint8([lr_files[name]], channels)[0][1]
        hr = _mod_crop(hr, scale)
        if lr is not None and tuple(lr.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
            log.warning("%s: LR %s does not match HR %s / %d; generating LR from HR", name, tuple(lr.shape[-2:]),
                        tuple(hr.shape[-2:]), scale)
            lr = None
        out.append((name, hr, lr))
    return out


def _mod_crop(x: Tensor, scale: int) -> Tensor:
    H, W = x.shape[-2:]
    return x[..., : H - H % scale, : W - W % scale]


# --- datasets ------------------------------------------------------------------------------------------------------

class PatchDataset(torch.utils.data.Dataset):
    """``count`` HR crops of ``patch`` pixels from in-memory images, positions drawn once from ``seed``.

    Item: (uint8 (C, patch, patch), image index). Every image gets the same share of crops (weighting by area would
    let one large, mostly flat image - retina, the Hubble field - dominate the photos).
    """

    def __init__(self, images: Sequence[Tensor], patch: int, count: int, seed: int):
        self.images, self.patch = list(images), patch
        g = torch.Generator().manual_seed(seed)
        self.which = torch.randint(0, len(self.images), (count,), generator=g)
        u = torch.rand(count, 2, generator=g, dtype=torch.float64)
        sizes = torch.tensor([list(self.images[i].shape[-2:]) for i in self.which.tolist()], dtype=torch.float64)
        self.corners = (u * (sizes - patch + 1)).floor().long()            # (count, 2) top-left corners

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        k = int(self.which[i])
        y, x = self.corners[i].tolist()
        return self.images[k][:, y:y + self.patch, x:x + self.patch], k


class EvalImages(torch.utils.data.Dataset):
    """Evaluation images: (name, HR uint8, given LR uint8 or None) per item."""

    def __init__(self, items: Sequence[tuple[str, Tensor, Tensor | None]]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, Tensor, Tensor | None]:
        return self.items[i]


# --- the task ------------------------------------------------------------------------------------------------------

@dataclass
class RestorationData:
    train: list[tuple[str, Tensor]]
    val: list[tuple[str, Tensor, Tensor | None]]
    source: dict[str, Any]


def load_restoration_data(source: str, *, task: str, scale: int, channels: int, patch: int,
                          val_data: str | None = None, val_fraction: float = 0.1, split_seed: int = 0,
                          train_limit: int | None = None, val_limit: int | None = None) -> RestorationData:
    """Training images and evaluation items of a built-in name or a folder (see the module docstring)."""
    s = scale if task == "sr" else 1
    record: dict[str, Any] = {"source": source, "val_data": val_data, "val_fraction": val_fraction,
                              "split_seed": split_seed}
    path = Path(source)
    if source == "photos" and not path.exists():
        train = builtin_photos(TRAIN_PHOTOS, channels)
        val = builtin_eval_items(s, channels)
        record.update(builtin=True, train=list(TRAIN_PHOTOS), val=list(EVAL_PHOTOS))
    else:
        if not any(sep in source for sep in ("/", os.sep)) and not path.exists():
            raise DataError(f"data folder not found: {source} (built-in data: photos)")
        train_dir = path / "train" if (path / "train").is_dir() else path
        files = scan_images(train_dir)
        val = []
        val_dirs = [path / n for n in ("val", "validation", "test") if (path / n).is_dir()]
        if train_dir != path and val_dirs:
            files = [p for p in files if not any(v in p.parents for v in val_dirs)]
            val = load_benchmark(val_dirs[0], s, channels)
        elif val_data is None:
            order = torch.randperm(len(files), generator=torch.Generator().manual_seed(split_seed)).tolist()
            k = max(1, round(val_fraction * len(files))) if len(files) > 1 else 0
            held = sorted(order[:k])
            val = [(n, _mod_crop(x, s), None) for n, x in _load_uint8([files[i] for i in held], channels)]
            files = [f for i, f in enumerate(files) if i not in set(held)]
        train = _load_uint8(files, channels)
    if val_data is not None:
        val = load_benchmark(Path(val_data), s, channels)
    small = [n for n, x in train if min(x.shape[-2:]) < patch]
    if small:
        log.warning("skipping %d training image(s) smaller than the %d px HR patch: %s", len(small), patch,
                    ", ".join(small[:5]))
        train = [(n, x) for n, x in train if min(x.shape[-2:]) >= patch]
    if train_limit is not None:
        train = train[:train_limit]
    if val_limit is not None:
        val = val[:val_limit]
    if not train:
        raise DataError(f"{source}: no training image of at least {patch}x{patch} pixels")
    if not val:
        raise DataError(f"{source}: no evaluation images (add a val/ folder or pass --val-data)")
    return RestorationData(train=train, val=val, source=record)


class RestorationTask:
    """Super-resolution or denoising for the shared training loop (``visattn.train``).

    Args:
        data: from :func:`load_restoration_data`.
        task: "sr" or "denoise".
        scale: SR factor (ignored for denoising).
        sigma: Gaussian noise level on the 0-255 scale (denoising).
        patch: HR training patch side (a multiple of ``scale``).
        channels: image channels (the model's ``in_chans``).
        seed: seed of the crop positions.
        eval_tile: LR tile side of the evaluation's tiled inference (0: whole images).
    """

    main_metric = "val_psnr"

    def __init__(self, data: RestorationData, *, task: str, scale: int = 4, sigma: float = 25.0, patch: int = 128,
                 channels: int = 3, seed: int = 0, eval_tile: int = 0):
        if task not in RESTORATION_TASKS:
            raise ValueError(f"unknown restoration task {task!r}; use one of {RESTORATION_TASKS}")
        self.name = task
        self.scale = scale if task == "sr" else 1
        if patch % self.scale:
            raise ValueError(f"the HR patch {patch} must be a multiple of the scale {self.scale}")
        self.sigma, self.patch, self.channels, self.eval_tile = float(sigma), patch, channels, eval_tile
        self.data = data
        count = max(_PATCHES_PER_IMAGE * len(data.train), 1)
        # no training images: an evaluation-only task (``visattn eval``)
        self.train_set = PatchDataset([x for _, x in data.train], patch, count, seed) if data.train else None
        self.val_set = EvalImages(data.val)
        self.img_size = patch // self.scale                                 # model input size in training
        self._baseline: dict[str, float] | None = None

    # the hooks the training loop calls
    def model_overrides(self) -> dict[str, Any]:
        return {"upscale": self.scale, "in_chans": self.channels}

    def model_meta(self) -> dict[str, Any]:
        return {"task": self.name, "scale": self.scale, "noise_sigma": self.sigma if self.name == "denoise" else None,
                "patch_size": self.patch, "in_chans": self.channels, "data": self.data.source}

    def degrade(self, hr: Tensor, noise: Tensor | None = None) -> Tensor:
        """HR [0, 1] -> model input: antialiased bicubic downscale + 8-bit rounding, or added noise."""
        if self.name == "sr":
            return quantize(imresize(hr, 1 / self.scale))
        if noise is None:
            raise ValueError("denoising needs the noise sample")
        return hr + noise * (self.sigma / 255)

    def augment(self, images: Tensor, generator: torch.Generator, global_batch: int,
                offset: int) -> tuple[Tensor, Tensor]:
        """(input, target) of this process's slice of a global batch of uint8 HR patches: a random flip / rotation
        (drawn for the whole global batch), then the degradation."""
        n = images.shape[0]
        k = torch.randint(0, 8, (global_batch,), generator=generator)[offset:offset + n]
        noise = None
        if self.name == "denoise":
            noise = torch.randn(global_batch, *images.shape[1:], generator=generator)[offset:offset + n]
        hr = images.float() / 255
        hr = torch.stack([_dihedral(im, int(t)) for im, t in zip(hr, k)])
        return self.degrade(hr, noise), hr

    def prepare_eval(self, hr: Tensor, lr: Tensor | None, index: int) -> Tensor:
        """The deterministic model input of evaluation image ``index``."""
        if lr is not None:
            return lr.float() / 255
        noise = None
        if self.name == "denoise":
            noise = torch.randn(hr.shape, generator=torch.Generator().manual_seed(1000 + index))
        return self.degrade(hr.float() / 255, noise)

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(out.float(), target)

    def train_stats(self, out: Tensor, target: Tensor) -> dict[str, float]:
        return {}

    def baseline(self, x: Tensor, hr_size: tuple[int, int]) -> Tensor:
        """The no-model reference: MATLAB bicubic upscaling (SR) or the noisy input itself (denoising)."""
        return quantize(imresize(x, size=hr_size)) if self.name == "sr" else quantize(x)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batch_size: int = 1, device: torch.device | str = "cpu",
                 dist_info: DistInfo | None = None, autocast: Callable[[], Any] | None = None, workers: int = 0,
                 dataset: EvalImages | None = None) -> dict[str, Any]:
        """L1, PSNR and SSIM of 8-bit outputs over whole images (SR: Y channel, ``scale`` border pixels cropped;
        denoising: all channels), and the same for the bicubic / noisy-input baseline; each process takes every
        world_size-th image and the sums are reduced."""
        ds = self.val_set if dataset is None else dataset
        dist_info = dist_info or DistInfo()
        was_training = model.training
        model.eval()
        sums = torch.zeros(6, dtype=torch.float64)                      # l1, psnr, ssim, base psnr, base ssim, n
        border = self.scale if self.name == "sr" else 0
        y = self.name == "sr"                 # SR benchmarks report Y; colour denoising reports all channels
        for i in range(dist_info.rank, len(ds), dist_info.world_size):
            _, hr_u8, lr_u8 = ds[i]
            x = self.prepare_eval(hr_u8, lr_u8, i)[None]
            hr = hr_u8.float()[None] / 255

            def run(t: Tensor) -> Tensor:
                with autocast() if autocast else contextlib.nullcontext():
                    return model(t.to(device)).float().cpu()

            out = tiled_forward(run, x, scale=self.scale, tile=self.eval_tile, overlap=16)
            out = out[..., :hr.shape[-2], :hr.shape[-1]]
            base = self.baseline(x, tuple(hr.shape[-2:]))
            q = quantize(out)
            metrics = [f(a, hr, border=border, y_channel=y)[0] for a in (q, base) for f in (psnr, ssim)]
            sums += torch.tensor([float(F.l1_loss(out, hr)), *map(float, metrics), 1.0], dtype=torch.float64)
        model.train(was_training)
        sums = all_reduce_sum(sums, dist_info)
        n = max(float(sums[5]), 1.0)
        base = "bicubic" if self.name == "sr" else "noisy"
        return {"val_loss": float(sums[0]) / n, "val_psnr": float(sums[1]) / n, "val_ssim": float(sums[2]) / n,
                f"val_{base}_psnr": float(sums[3]) / n, f"val_{base}_ssim": float(sums[4]) / n,
                "val_count": len(ds)}

    def epoch_summary(self, row: dict[str, Any]) -> str:
        """One line per epoch for the training log."""
        base = "bicubic" if self.name == "sr" else "noisy"
        ema = f" (ema {row['ema_val_psnr']:.2f})" if "ema_val_psnr" in row else ""
        return (f"train_l1 {row['train_loss']:.4f}  val PSNR {row['val_psnr']:.2f} dB{ema}  SSIM "
                f"{row['val_ssim']:.4f}  ({base}: {row[f'val_{base}_psnr']:.2f} dB / {row[f'val_{base}_ssim']:.4f})")

    def plot_curves(self, rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
        """Training L1 and validation PSNR (with the baseline) against steps."""
        from ..plots import have_matplotlib

        if not have_matplotlib():
            return None
        import matplotlib.pyplot as plt

        from ..plots import _save

        steps = [r for r in rows if r.get("kind") == "step"]
        epochs = [r for r in rows if r.get("kind") == "epoch"]
        fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
        if steps:
            ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, label="train L1 (step)")
        if epochs:
            x = [r["step"] for r in epochs]
            ax_loss.plot(x, [r["val_loss"] for r in epochs], "s-", label="validation L1")
            ax_psnr.plot(x, [r["val_psnr"] for r in epochs], "s-", label="model")
            base = "bicubic" if self.name == "sr" else "noisy"
            ax_psnr.plot(x, [r[f"val_{base}_psnr"] for r in epochs], "--", label=base)
        ax_loss.set_xlabel("step")
        ax_loss.legend()
        ax_psnr.set_xlabel("step")
        ax_psnr.set_ylabel("PSNR (dB, Y)")
        ax_psnr.legend()
        fig.suptitle(title)
        return _save(fig, path)


def _dihedral(x: Tensor, k: int) -> Tensor:
    # one of the 8 flips / 90-degree rotations of a (C, H, W) square patch
    if k & 4:
        x = x.flip(-1)
    return torch.rot90(x, k & 3, dims=(-2, -1))


def build_restoration_task(cfg: Any) -> RestorationTask:
    """The task of a ``TrainConfig`` whose ``task`` is "sr" or "denoise" (``img_size`` = HR patch side)."""
    scale = int(getattr(cfg, "scale", 4) or 4) if cfg.task == "sr" else 1
    channels = int(cfg.model_overrides.get("in_chans", 3))
    patch = cfg.img_size or (32 * scale if cfg.task == "sr" else 64)
    if patch % scale:
        raise DataError(f"--img-size {patch} (the HR patch) must be a multiple of --scale {scale}")
    data = load_restoration_data(cfg.data, task=cfg.task, scale=scale, channels=channels, patch=patch,
                                 val_data=getattr(cfg, "val_data", None), val_fraction=cfg.val_fraction,
                                 train_limit=cfg.train_limit, val_limit=cfg.val_limit)
    return RestorationTask(data, task=cfg.task, scale=scale, sigma=float(getattr(cfg, "noise_sigma", 25.0)),
                           patch=patch, channels=channels, seed=cfg.seed, eval_tile=0)
