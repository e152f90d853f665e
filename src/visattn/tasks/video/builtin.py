"""The built-in video data, ``moving_digits``: scikit-learn digits moving over a textured background, written to
disk as real H.264 mp4 files and read back through the same decoder as any user's videos.

The class is a motion, and the classes come in pairs that are the same videos played backwards:

    right / left (translation along x), down / up (translation along y), clockwise / anticlockwise (rotation),
    grow / shrink (scale)

Every video is rendered as the first class of its pair from random parameters; a video of the second class is a
rendered video reversed in time. So the two classes of a pair have exactly the same distribution of *single frames*
(and of any unordered set of frames): a model that ignores frame order can at best name the pair, not the class,
and scores at most 50% (chance: 12.5%). Telling a class from its partner needs the order of the frames.

Each video: 32 frames of 40 x 40 at 16 fps (2 s); a random digit (one of scikit-learn's 1,797 8x8 images, scaled to
16 px) in a random bright colour over a random smooth colour texture with fine grain. Translation moves 12-20 px
(the digit starts left of centre for "right"), rotation turns 120-200 degrees, scale goes from 0.6-0.8x to
1.2-1.5x; each digit also gets a random static tilt and offset. The default set is 64 training and 16 validation
videos per class (512 / 128), generated with seed 0 into ``~/.cache/visattn/moving_digits_v1/`` (``$VISATTN_CACHE``
or ``$XDG_CACHE_HOME/visattn`` when set) as ``train/<class>/*.mp4`` and ``val/<class>/*.mp4``; the same files
on every machine with the same libraries (about 6 MB, under a minute on one core).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .io import write_video

__all__ = ["BUILTIN_VIDEO_DATASETS", "CLASSES", "builtin_video_root", "make_moving_digits", "moving_digits_sample"]

CLASSES = ("right", "left", "down", "up", "clockwise", "anticlockwise", "grow", "shrink")
_VERSION = "moving_digits_v1"
_DEFAULT = dict(train_per_class=64, val_per_class=16, frames=32, size=40, fps=16, seed=0)
BUILTIN_VIDEO_DATASETS = ("moving_digits",)


def _cache_root() -> Path:
    if os.environ.get("VISATTN_CACHE"):
        return Path(os.environ["VISATTN_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "visattn"
    return Path.home() / ".cache" / "visattn"


def _digit_sprites() -> torch.Tensor:
    """scikit-learn's digits as (1797, 1, 16, 16) alpha maps in [0, 1]."""
    from ..classification.data import _sklearn_data_file

    table = np.loadtxt(_sklearn_data_file("digits.csv.gz"), delimiter=",", dtype=np.float32)  # (1797, 65)
    pixels = torch.from_numpy(table[:, :-1]).view(-1, 1, 8, 8) / 16   # (N, 1, 8, 8) in [0, 1]
    return F.interpolate(pixels, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)


def _background(size: int, g: torch.Generator) -> torch.Tensor:
    """A smooth random colour texture with fine grain, (3, size, size) in [0, 1], darker than the digits."""
    coarse = torch.rand(1, 3, 5, 5, generator=g)
    smooth = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0]  # (3, S, S)
    grain = torch.rand(1, size, size, generator=g)
    return (0.1 + 0.35 * smooth + 0.12 * grain).clamp(0, 1)


def _render(pair: int, sprite: torch.Tensor, frames: int, size: int, g: torch.Generator) -> np.ndarray:
    """One video of the first class of ``pair`` as (T, size, size, 3) uint8."""
    u = torch.rand(8, generator=g, dtype=torch.float64).tolist()
    t = torch.linspace(0, 1, frames, dtype=torch.float64)
    px = 2 / size                                                       # one pixel in normalised coordinates
    cx = torch.full_like(t, (u[0] - 0.5) * 8 * px)                     # static offset of up to +-4 px
    cy = torch.full_like(t, (u[1] - 0.5) * 8 * px)
    angle = torch.full_like(t, (u[2] - 0.5) * math.radians(40))        # static tilt of up to +-20 degrees
    scale = torch.ones_like(t)
    if pair in (0, 1):                                                  # right / down: a 12-20 px sweep
        sweep = (12 + 8 * u[3]) * px * (t - 0.5)
        if pair == 0:
            cx = cx + sweep
        else:
            cy = cy + sweep
    elif pair == 2:                                                     # clockwise: 120-200 degrees
        angle = angle + math.radians(120 + 80 * u[3]) * (t - 0.5)
    else:                                                               # grow: 0.6-0.8x to 1.2-1.5x
        lo, hi = 0.6 + 0.2 * u[3], 1.2 + 0.3 * u[4]
        scale = lo + (hi - lo) * t
    half = 8 * px * scale                                               # half the sprite side, normalised
    cos, sin = angle.cos(), angle.sin()
    # output (frame) -> input (sprite) coordinates: u = R(-angle) (p - c) / half
    theta = torch.stack([torch.stack([cos / half, sin / half, -(cos * cx + sin * cy) / half], -1),
                         torch.stack([-sin / half, cos / half, (sin * cx - cos * cy) / half], -1)], 1)  # (T, 2, 3)
    grid = F.affine_grid(theta.float(), [frames, 1, size, size], align_corners=False)
    sprites = sprite.expand(frames, -1, -1, -1)                        # (T, 1, 16, 16): the same digit per frame
    alpha = F.grid_sample(sprites, grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)                          # (T, 1, S, S)
    colour = 0.6 + 0.4 * torch.rand(3, 1, 1, generator=g)
    video = _background(size, g) * (1 - alpha) + colour * alpha         # (T, 3, S, S)
    return (video * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, S, S, 3)


def make_moving_digits(root: str | Path, *, train_per_class: int = 64, val_per_class: int = 16, frames: int = 32,
                       size: int = 40, fps: int = 16, seed: int = 0) -> Path:
    """Write a moving-digits set as ``root/{train,val}/<class>/NNNN.mp4`` (see the module docstring).

    Args:
        root: the output folder (created; files in it are overwritten).
        train_per_class: training videos per class.
        val_per_class: validation videos per class.
        frames: frames per video.
        size: frame side in pixels (even).
        fps: frame rate written into the files.
        seed: the generator's seed; the same seed gives the same videos.
    """
    if train_per_class < 1 or val_per_class < 1 or frames < 2 or size < 16 or size % 2:
        raise ValueError("make_moving_digits needs >= 1 video per class and split, >= 2 frames and an even size "
                         f">= 16; got {train_per_class}, {val_per_class}, {frames}, {size}")
    root = Path(root)
    for split in ("train", "val"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
    for split, i, name, video in _videos(train_per_class, val_per_class, frames, size, seed):
        write_video(root / split / name / f"{i:04d}.mp4", video, fps=fps, quality=12, gop=8)
    return root


def _videos(train_per_class: int, val_per_class: int, frames: int, size: int,
            seed: int) -> Iterator[tuple[str, int, str, np.ndarray]]:
    """(split, index in its class, class name, (T, S, S, 3) uint8 frames) of every video, in generation order: the
    training split, then the validation split; per index, one video of each class in ``CLASSES`` order."""
    sprites = _digit_sprites()
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for i in range(count):
            for c, name in enumerate(CLASSES):
                digit = int(torch.randint(len(sprites), (1,), generator=g))
                video = _render(c // 2, sprites[digit:digit + 1], frames, size, g)
                if c % 2:
                    video = video[::-1].copy()                          # the partner class: played backwards
                yield split, i, name, video


def moving_digits_sample(index: int = 0) -> tuple[np.ndarray, str]:
    """The ``index``-th training video of the built-in set (generation order: ``train/right/0000.mp4`` is 0,
    ``train/left/0000.mp4`` 1, ... ``train/right/0001.mp4`` 8), rendered in memory without writing the set: its
    frames before H.264 encoding, (32, 40, 40, 3) uint8, and its class name."""
    per_class = _DEFAULT["train_per_class"]
    if not 0 <= index < per_class * len(CLASSES):
        raise ValueError(f"moving_digits:N takes N in 0..{per_class * len(CLASSES) - 1} (the training videos), "
                         f"got {index}")
    for k, (_, _, name, video) in enumerate(_videos(per_class, 0, _DEFAULT["frames"], _DEFAULT["size"],
                                                    _DEFAULT["seed"])):
        if k == index:
            return video, name
    raise AssertionError("unreachable: index checked above")


def builtin_video_root(name: str) -> Path:
    """The folder of a built-in video set, generated into the cache on first use (atomically: a finished set is
    renamed into place, so an interrupted or concurrent generation never leaves a partial folder)."""
    if name not in BUILTIN_VIDEO_DATASETS:
        raise ValueError(f"unknown built-in video data {name!r}; built-in: {', '.join(BUILTIN_VIDEO_DATASETS)}")
    cache = _cache_root()
    root = cache / _VERSION
    if (root / "manifest.json").exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_VERSION}-", dir=cache))
    try:
        make_moving_digits(tmp, **_DEFAULT)
        (tmp / "manifest.json").write_text(json.dumps({"name": name, "classes": list(CLASSES), **_DEFAULT}))
        try:
            os.replace(tmp, root)
        except OSError:                                                 # another process finished first
            if not (root / "manifest.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
