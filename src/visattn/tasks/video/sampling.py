"""Which frames and which pixels make a clip: temporal indices for training and K-clip evaluation, spatial crops.

Temporal (PySlowFast ``decoder.get_start_end_idx`` / ``temporal_sampling``): a clip of T frames at stride tau covers
``span = (T - 1) * tau + 1`` frames. Training takes one clip whose start is uniform in ``[0, N - span]``;
evaluation takes K clips whose starts are evenly spaced over the same range (the first at frame 0, the last ending
on the last frame; one clip is centred).

**Short videos** (N < span): the start is 0 and indices past the last frame repeat the last frame (``clamp``). A
3-frame video read as 4 x 2 gives frames 0, 2, 2, 2.

Spatial: training scales the short side to a random length in the jitter range (uniform in pixels), takes a random
square crop and flips with probability ``hflip``. Evaluation scales the short side to a given length and takes S
crops: the centre (S = 1), or both ends and the centre of the long side (S = 3, PySlowFast's ``uniform_crop``).

Two resize arithmetics (``RESIZE_MODES``): ``"antialias"``, visattn's own (bilinear with antialiasing, the long side
rounded, the centre crop's offset rounded down), used for training and for models trained here; ``"torchvision"``,
that of torchvision 0.28's ``VideoClassification`` preset, the evaluation transform published with torchvision's
Kinetics weights: bilinear *without* antialiasing (hard-coded there, ``antialias=False``), the long side truncated
(``int(short * long / short_in)``), the frames rounded back to uint8, then ``center_crop``'s offset
``int(round((size - crop) / 2))`` (round half to even).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RESIZE_MODES", "clip_span", "eval_clip_starts", "frame_indices", "parse_views", "random_spatial",
           "shuffle_clip_frames", "spatial_views", "train_clip_start"]

RESIZE_MODES = ("antialias", "torchvision")


def parse_views(text: str) -> tuple[int, int]:
    """``"5x3"`` -> (5 temporal clips, 3 spatial crops)."""
    k, sep, s = str(text).lower().partition("x")
    try:
        clips, crops = int(k), int(s)
    except ValueError:
        raise ValueError(f"--views must be KxS (temporal clips x spatial crops), e.g. 5x1 or 5x3; got {text!r}") \
            from None
    if not sep or clips < 1 or crops not in (1, 3):
        raise ValueError(f"--views must be KxS with K >= 1 and S 1 or 3 (e.g. 5x1, 5x3); got {text!r}")
    return clips, crops


def clip_span(frames: int, stride: int) -> int:
    """Number of video frames a clip of ``frames`` frames at ``stride`` covers."""
    if frames < 1 or stride < 1:
        raise ValueError(f"clip frames and stride must be >= 1, got {frames} x {stride}")
    return (frames - 1) * stride + 1


def frame_indices(start: int, frames: int, stride: int, num_frames: int) -> list[int]:
    """The clip's frame indices; those past the video's end repeat its last frame (the short-video rule)."""
    return [min(start + k * stride, num_frames - 1) for k in range(frames)]


def train_clip_start(num_frames: int, frames: int, stride: int, generator: torch.Generator) -> int:
    """A uniform random start in ``[0, num_frames - span]`` (0 for a video shorter than the clip)."""
    room = max(0, num_frames - clip_span(frames, stride))
    return int(torch.randint(room + 1, (1,), generator=generator))


def eval_clip_starts(num_frames: int, frames: int, stride: int, clips: int) -> list[int]:
    """Starts of ``clips`` evenly spaced clips: first at 0, last ending on the last frame; one clip is centred."""
    room = max(0, num_frames - clip_span(frames, stride))
    if clips == 1:
        return [room // 2]
    return [round(k * room / (clips - 1)) for k in range(clips)]


def _resize_short_side(video: Tensor, short: int, mode: str = "antialias") -> Tensor:
    """(T, 3, H, W) uint8 -> float, the short side ``short`` pixels, in one of ``RESIZE_MODES`` (module docstring)."""
    h, w = video.shape[-2:]
    x = video.float()
    if mode == "torchvision":
        # torchvision transforms.functional._compute_resized_output_size: the long side truncated
        size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        if size == (h, w):                                             # F.resize returns such an input unchanged
            return x
        # VideoClassification.forward: F.resize(..., antialias=False); _cast_squeeze_out rounds to uint8
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False).round()
    if mode != "antialias":
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    if size == (h, w):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def random_spatial(video: Tensor, crop: int, jitter: Sequence[int], hflip: float,
                   generator: torch.Generator) -> Tensor:
    """Random short-side scale, random ``crop`` x ``crop`` crop and flip of one clip.

    Args:
        video: (T, 3, H, W) uint8.
        crop: output side.
        jitter: (lo, hi) range of the scaled short side, lo >= crop.
        hflip: flip probability.
        generator: the clip's random numbers.

    Returns:
        (3, T, crop, crop) uint8.
    """
    lo, hi = int(jitter[0]), int(jitter[1])
    short = lo + int(torch.randint(hi - lo + 1, (1,), generator=generator))
    x = _resize_short_side(video, short)
    h, w = x.shape[-2:]
    top = int(torch.randint(h - crop + 1, (1,), generator=generator))
    left = int(torch.randint(w - crop + 1, (1,), generator=generator))
    x = x[..., top:top + crop, left:left + crop]
    if float(torch.rand(1, generator=generator)) < hflip:
        x = x.flip(-1)
    return x.round().clamp(0, 255).to(torch.uint8).permute(1, 0, 2, 3)  # (3, T, crop, crop)


def spatial_views(video: Tensor, crop: int, crops: int, short: int | None = None, *,
                  resize: str = "antialias") -> Tensor:
    """The evaluation crops of one clip: short side scaled to ``short``, then 1 (centre) or 3 crops along the long
    side (start, centre, end).

    Args:
        video: (T, 3, H, W) uint8.
        crop: output side.
        crops: 1 or 3.
        short: the scaled short side (>= crop; default ``crop``).
        resize: the resize and centre-offset arithmetic, one of ``RESIZE_MODES`` (see the module docstring).

    Returns:
        (crops, 3, T, crop, crop) uint8.
    """
    x = _resize_short_side(video, short or crop, resize)
    h, w = x.shape[-2:]
    if resize == "torchvision":                                        # center_crop: int(round(...)), half to even
        top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    else:
        top, left = (h - crop) // 2, (w - crop) // 2
    if crops == 1:
        offsets = [(top, left)]
    elif h >= w:
        offsets = [(0, left), (top, left), (h - crop, left)]
    else:
        offsets = [(top, 0), (top, left), (top, w - crop)]
    views = torch.stack([x[..., t:t + crop, l:l + crop] for t, l in offsets])  # (crops, T, 3, crop, crop)
    return views.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 1, 3, 4)  # (crops, 3, T, crop, crop)


def shuffle_clip_frames(clips: Tensor, seed: int, keys: Sequence[int]) -> Tensor:
    """Each clip's frames in a random order: clip ``i`` uses a permutation seeded by (seed, keys[i]).

    Args:
        clips: (N, C, T, H, W).
        seed: the experiment's seed.
        keys: one integer per clip (e.g. video index * views + view), so that an order does not depend on batching.

    Returns:
        (N, C, T, H, W), the same frames, permuted along T.
    """
    if len(keys) != clips.shape[0]:
        raise ValueError(f"{len(keys)} shuffle keys for {clips.shape[0]} clips")
    T = clips.shape[2]
    perms = []
    for key in keys:
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(key)) & 0x7FFFFFFFFFFFFFFF)
        perm = torch.randperm(T, generator=g)
        if T > 1 and bool((perm == torch.arange(T)).all()):              # never the identity: reverse instead
            perm = perm.flip(0)
        perms.append(perm)
    index = torch.stack(perms).to(clips.device)                          # (N, T)
    index = index[:, None, :, None, None].expand_as(clips)               # (N, C, T, H, W)
    return clips.gather(2, index)
