"""Tiled inference: an image-to-image function applied to overlapping tiles blended by a cross-fade, so that memory
is bounded by the tile whatever the image size."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["count_tiles", "tiled_forward"]

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


def _tile_grid(H: int, W: int, tile: int, overlap: int) -> tuple[list[int], list[int]] | None:
    # top-left corners (rows, columns) of the tiles; None: one call on the whole image
    if tile <= 0 or (H <= tile and W <= tile):
        return None
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    step = tile - overlap
    return _tile_starts(H, tile, step), _tile_starts(W, tile, step)


def count_tiles(height: int, width: int, *, tile: int, overlap: int) -> int:
    """How many calls :func:`tiled_forward` makes on a ``height`` x ``width`` image (the progress total)."""
    grid = _tile_grid(height, width, tile, overlap)
    return 1 if grid is None else len(grid[0]) * len(grid[1])


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
        progress: called with 1 after each tile (e.g. a tqdm's ``update``; :func:`count_tiles` gives the total).
    """
    B, _, H, W = x.shape
    grid = _tile_grid(H, W, tile, overlap)
    if grid is None:
        if progress is not None:
            progress(1)
        return fn(x)
    ys, xs = grid
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

