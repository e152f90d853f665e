"""Average pooling that stays exact and guard-free under symbolic sizes (torch.export): ceil pooling over real pixels,
and bin-averaging matrices for pooling written as matmuls."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .partition import is_symbolic

__all__ = ["averaging_matrix", "ceil_avg_pool2d"]


def ceil_avg_pool2d(x: Tensor, window: int) -> Tensor:
    """``window`` x ``window`` average pooling with stride ``window``, ceil mode, real pixels only.

    A cell cut by the bottom / right border is the mean of its real pixels. Shape: (B, C, H, W) ->
    (B, C, ceil(H / window), ceil(W / window)). Traced with symbolic sizes, ceil_mode's output-size rule would guard
    on the size, so the same means are computed as zero-padded sums over real-pixel counts, the padded size a product
    ``ceil(H / window) * window``.
    """
    H, W = x.shape[-2:]
    if not is_symbolic(H, W):
        return F.avg_pool2d(x, window, window, ceil_mode=True, count_include_pad=False)
    pad = (0, (W + window - 1) // window * window - W, 0, (H + window - 1) // window * window - H)
    real = F.pad(x.new_ones(1, 1, H, W), pad)                          # (1, 1, Hp, Wp): 1 on real pixels
    return F.avg_pool2d(F.pad(x, pad), window, window) / F.avg_pool2d(real, window, window)


def averaging_matrix(start: Tensor, end: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """(n, size) weights whose row i averages positions ``start[i] <= j < end[i]`` of an axis of length ``size``.

    Pooling written as a matmul with it traces for symbolic sizes where adaptive pooling's decomposition guards.
    """
    pos = torch.arange(size, device=start.device)
    inside = (pos >= start[:, None]) & (pos < end[:, None])            # (n, size)
    return inside.to(dtype) / (end - start)[:, None].to(dtype)
