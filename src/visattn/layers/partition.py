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
from torch.fx import Proxy

__all__ = [
    "to_2tuple",
    "window_partition",
    "window_reverse",
    "grid_partition",
    "grid_reverse",
    "pad_to_multiple",
    "valid_token_mask",
    "is_symbolic",
    "needs_padding",
    "crop_padding",
    "symbolic_reshape",
    "spatial_size",
    "roll_maps",
]


def to_2tuple(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return (h, w) if is_symbolic(h, w) else (int(h), int(w))  # int() would freeze a traced size


def _check_divisible(x: Tensor, size: tuple[int, int], what: str) -> None:
    if isinstance(x, Proxy):  # torch.fx symbolic tracing: shapes are unknown until the graph runs
        return
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
    return symbolic_reshape(x.permute(0, 1, 3, 2, 4, 5), (-1, p0, p1, C))       # (B*nH*nW, p0, p1, C)


def window_reverse(windows: Tensor, window_size: int | tuple[int, int], img_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, p0, p1, C) -> (B, H, W, C)."""
    p0, p1 = to_2tuple(window_size)
    H, W = to_2tuple(img_size)
    C = windows.shape[-1]
    x = windows.view(-1, H // p0, W // p1, p0, p1, C)                   # (B, nH, nW, p0, p1, C)
    return symbolic_reshape(x.permute(0, 1, 3, 2, 4, 5), (-1, H, W, C))         # (B, H, W, C)


def grid_partition(x: Tensor, grid_size: int | tuple[int, int]) -> Tensor:
    """(B, H, W, C) -> (B * H/g0 * W/g1, g0, g1, C): group (i, j) holds pixel (i, j) of every grid cell."""
    g0, g1 = to_2tuple(grid_size)
    _check_divisible(x, (g0, g1), "grid_partition")
    B, H, W, C = x.shape
    x = x.view(B, g0, H // g0, g1, W // g1, C)                          # (B, g0, cH, g1, cW, C)
    return symbolic_reshape(x.permute(0, 2, 4, 1, 3, 5), (-1, g0, g1, C))       # (B*cH*cW, g0, g1, C)


def grid_reverse(windows: Tensor, grid_size: int | tuple[int, int], img_size: tuple[int, int]) -> Tensor:
    """Inverse of :func:`grid_partition`: (B * cH * cW, g0, g1, C) -> (B, H, W, C)."""
    g0, g1 = to_2tuple(grid_size)
    H, W = to_2tuple(img_size)
    C = windows.shape[-1]
    x = windows.view(-1, H // g0, W // g1, g0, g1, C)                   # (B, cH, cW, g0, g1, C)
    return symbolic_reshape(x.permute(0, 3, 1, 4, 2, 5), (-1, H, W, C))         # (B, H, W, C)


def symbolic_reshape(x: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``x.reshape(shape)``; with symbolic sizes a contiguous copy first, so reshape need not ask whether a view
    would do (a guard on the sizes, e.g. that a window count is not 1, which would freeze them)."""
    if not isinstance(x, Proxy) and is_symbolic(*x.shape):
        x = x.clone(memory_format=torch.contiguous_format)
    return x.reshape(shape)


def spatial_size(x: Tensor, n: int) -> tuple[int, ...]:
    """The ``n`` sizes after batch and channels, ``tuple(x.shape[2:2 + n])``, read one by one: under torch.fx
    symbolic tracing a shape is a proxy that can be indexed but not iterated."""
    return tuple(x.shape[2 + i] for i in range(n))


def pad_to_multiple(x: Tensor, multiple: int | tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """Zero-pad a (B, H, W, C) map at the bottom and right so H and W divide by ``multiple``.

    Returns the padded map and the (pad_h, pad_w) amounts; crop with ``x[:, :H, :W]``.
    """
    m0, m1 = to_2tuple(multiple)
    H, W = x.shape[1:3]
    # ceil(H / m) * m - H rather than (-H) % m: under torch.export the padded size is then a product n * m, so the
    # partitions' divisibility checks hold symbolically instead of becoming guards that freeze the size.
    pad_h, pad_w = (H + m0 - 1) // m0 * m0 - H, (W + m1 - 1) // m1 * m1 - W
    if needs_padding((pad_h, pad_w)):
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x, (pad_h, pad_w)


def crop_padding(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`: (B, Hp, Wp, C) -> contiguous (B, H, W, C) with (H, W) = ``size``.

    Traced with symbolic sizes it pads by the negative amounts instead of slicing: a slice's bounds clamp would guard
    on H <= Hp, which the shape solver cannot prove for Hp = ceil(H / P) * P, and would freeze the size.
    """
    H, W = size
    Hp, Wp = x.shape[1:3]
    if is_symbolic(H, W, Hp, Wp):
        return F.pad(x, (0, 0, 0, W - Wp, 0, H - Hp))
    return x[:, :H, :W].contiguous()


def is_symbolic(*sizes: object) -> bool:
    """True if any size is a ``torch.SymInt`` (a dynamic dimension while torch.export / ONNX export traces) or a
    ``torch.fx.Proxy`` (a size read while ``torch.fx.symbolic_trace`` traces).

    Size-dependent branches test this first so a traced graph takes the general path (pad, mask, crop, with amounts
    that may be zero) for every size, while eager code keeps its shortcuts for sizes that divide.
    """
    return any(isinstance(s, (torch.SymInt, Proxy)) for s in sizes)


def needs_padding(pad: tuple[int, int]) -> bool:
    """Whether the pad / mask / crop path must run: a nonzero amount, or a symbolic one (traced for any size)."""
    return is_symbolic(*pad) or bool(pad[0]) or bool(pad[1])


def valid_token_mask(height: int, width: int, pad: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """(1, H + pad_h, W + pad_w, 1) bool map, True on real pixels and False on padding."""
    rows = torch.arange(height + pad[0], device=device) < height   # comparisons, not slice writes: they trace
    cols = torch.arange(width + pad[1], device=device) < width     # with symbolic sizes
    return (rows[:, None] & cols[None, :])[None, :, :, None]       # (1, Hp, Wp, 1)


def roll_maps(x: Tensor, shifts: tuple[int, int], dims: tuple[int, int]) -> Tensor:
    """``torch.roll`` by less than a full turn (|shift| < size); by symbolic amounts (GRL's grouped stripes, traced) a
    gather, as the ONNX converter's roll (and remainder) take constant amounts only."""
    if not is_symbolic(*shifts):
        return torch.roll(x, shifts=shifts, dims=dims)
    for shift, dim in zip(shifts, dims):
        n = x.shape[dim]
        source = torch.arange(n, device=x.device) - shift                # out[i] = x[(i - shift) mod n]
        source = torch.where(source < 0, source + n, source)
        x = x.index_select(dim, torch.where(source >= n, source - n, source))
    return x
