"""Window and grid partitions of channels-last maps, and the padding that lets them take any size.

Both partitions cut a (B, H, W, C) map into groups of P x P tokens that attend to each other:

* window (block): each group is a contiguous P x P tile; groups are ordered row-major over the tiles.
* grid (dilated): the map is cut into a G x G grid of cells of size (H/G) x (W/G); each group gathers the G x G
  pixels that sit at the same position inside every cell, so a group spans the whole map with stride H/G.

They are views and permutes only (no unfold, no gather), the semantics of MaxViT's reference code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "to_2tuple",
    "window_partition",
    "window_reverse",
    "grid_partition",
    "grid_reverse",
    "pad_to_multiple",
    "valid_token_mask",
]


def to_2tuple(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _check_divisible(x: Tensor, size: tuple[int, int], what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what} expects a channels-last (B, H, W, C) tensor, got shape {tuple(x.shape)}")
    H, W = x.shape[1:3]
    if H % size[0] or W % size[1]:
        raise ValueError(
            f"{what}: map {H}x{W} is not divisible by {size[0]}x{size[1]}; pad it first (pad_to_multiple)"
        )


def window_partition(x: Tensor, window_size: int | tuple[int, int]) -> Tensor:
    """(B, H, W, C) -> (B * H/p0 * W/p1, p0, p1, C): contiguous tiles, row-major over the tiles."""
    p0, p1 = to_2tuple(window_size)
    _check_divisible(x, (p0, p1), "window_partition")
    B, H, W, C = x.shape
    x = x.view(B, H // p0, p0, W // p1, p1, C)                          # (B, nH, p0, nW, p1, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, p0, p1, C)          # (B*nH*nW, p0, p1, C)


def window_reverse(windows: Tensor, window_size: int | tuple[int, int], img_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, p0, p1, C) -> (B, H, W, C)."""
    p0, p1 = to_2tuple(window_size)
    H, W = to_2tuple(img_size)
    C = windows.shape[-1]
    x = windows.view(-1, H // p0, W // p1, p0, p1, C)                   # (B, nH, nW, p0, p1, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)            # (B, H, W, C)


def grid_partition(x: Tensor, grid_size: int | tuple[int, int]) -> Tensor:
    """(B, H, W, C) -> (B * H/g0 * W/g1, g0, g1, C): group (i, j) holds pixel (i, j) of every grid cell."""
    g0, g1 = to_2tuple(grid_size)
    _check_divisible(x, (g0, g1), "grid_partition")
    B, H, W, C = x.shape
    x = x.view(B, g0, H // g0, g1, W // g1, C)                          # (B, g0, cH, g1, cW, C)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(-1, g0, g1, C)          # (B*cH*cW, g0, g1, C)


def grid_reverse(windows: Tensor, grid_size: int | tuple[int, int], img_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`grid_partition`: (B * cH * cW, g0, g1, C) -> (B, H, W, C)."""
    g0, g1 = to_2tuple(grid_size)
    H, W = to_2tuple(img_size)
    C = windows.shape[-1]
    x = windows.view(-1, H // g0, W // g1, g0, g1, C)                   # (B, cH, cW, g0, g1, C)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(-1, H, W, C)            # (B, H, W, C)


def pad_to_multiple(x: Tensor, multiple: int | tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad a (B, H, W, C) map at the bottom and right so H and W divide by ``multiple``.

    Returns the padded map and the (pad_h, pad_w) amounts; crop with ``x[:, :H, :W]``.
    """
    m0, m1 = to_2tuple(multiple)
    H, W = x.shape[1:3]
    pad_h, pad_w = (-H) % m0, (-W) % m1
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x, (pad_h, pad_w)


def valid_token_mask(height: int, width: int, pad: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """(1, H + pad_h, W + pad_w, 1) bool map, True on real pixels and False on padding."""
    mask = torch.zeros(1, height + pad[0], width + pad[1], 1, dtype=torch.bool, device=device)
    mask[:, :height, :width] = True
    return mask
