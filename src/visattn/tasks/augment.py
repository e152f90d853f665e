"""Image augmentation on batched torch tensors: random resized crop + flip, centre crop, normalisation.

A random resized crop followed by a resize is one affine map from output to input coordinates, so a whole batch
is cropped, flipped and resized by a single :func:`torch.nn.functional.grid_sample` call with one 2x3 matrix per
image (bilinear, like torchvision's ``RandomResizedCrop`` without antialiasing). The random numbers come from an
explicit generator, so a batch's augmentation depends only on (seed, epoch, step): a resumed run and a
multi-process run draw exactly what a single uninterrupted process draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["apply_crops", "center_crops", "normalize", "sample_crops"]


def sample_crops(n: int, generator: torch.Generator, *, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), hflip: float = 0.5) -> Tensor:
    """Random crop boxes for ``n`` images as (n, 2, 3) affine matrices (output -> input, normalised coords).

    Args:
        n: number of images.
        generator: the source of randomness (seeded per batch by the caller).
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height), sampled log-uniformly.
        hflip: probability of a horizontal flip.
    """
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = log_r.exp()
    w = (area * aspect).sqrt().clamp(max=1.0)                          # crop width / image width
    h = (area / aspect).sqrt().clamp(max=1.0)                          # crop height / image height
    cx = (1 - w) * (2 * u[:, 2] - 1)                                   # crop centre in [-1, 1] coordinates
    cy = (1 - h) * (2 * u[:, 3] - 1)
    flip = torch.where(u[:, 4] < hflip, -1.0, 1.0).to(torch.float64)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta.float()


def center_crops(n: int, crop_pct: float = 1.0) -> Tensor:
    """(n, 2, 3) matrices of a centred square crop keeping ``crop_pct`` of each side (timm's ``crop_pct``)."""
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = crop_pct
    theta[:, 1, 1] = crop_pct
    return theta


def apply_crops(images: Tensor, theta: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Crop, flip and resize a batch in one bilinear resampling.

    Args:
        images: (B, C, H, W), uint8 in [0, 255] or float.
        theta: (B, 2, 3) from :func:`sample_crops` or :func:`center_crops`.
        size: output (height, width) or one int for a square.

    Returns:
        (B, C, size_h, size_w) float32 in the input's value range.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    x = images.float()
    if theta.shape[0] != x.shape[0]:
        raise ValueError(f"{theta.shape[0]} crop matrices for a batch of {x.shape[0]} images")
    identity = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    if (x.shape[-2], x.shape[-1]) == (out_h, out_w) and bool((theta == identity).all()):
        return x
    grid = F.affine_grid(theta.to(x.device, x.dtype), [x.shape[0], x.shape[1], out_h, out_w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(B, C, H, W) in [0, 255] -> ((x / 255) - mean) / std per channel."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images / 255.0 - m) / s
