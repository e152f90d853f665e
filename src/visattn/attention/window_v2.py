"""Window attention V2 (Swin V2, Liu et al. 2022, arXiv 2111.09883; the window half of GRL's mixed attention).

Self-attention inside non-overlapping P0 x P1 windows, with three changes from Swin V1: the logits are cosine
similarities times a learnable per-head temperature (clamped at 100), the relative position bias comes from a small
MLP over log-spaced relative coordinates (so it transfers across window sizes), and - optionally - the windows are
shifted by half a window (cyclic roll + a mask that keeps pixels from opposite borders apart). Cost O(H*W * P0*P1).

Sizes that do not divide by the window are zero-padded at the bottom/right, padded keys are masked out, and the
output is cropped back; with a shift, the padding happens before the roll (as in Swin). Sizes that divide are
unaffected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.checks import check_image
from ..layers.cpb import (
    CosineAttnTransform,
    attend_window_classes,
    attend_windows,
    cosine_qk,
    cpb_coords,
    cpb_index,
    dense_window_bias,
    window_classes,
)
from ..layers.partition import (
    crop_padding,
    is_symbolic,
    needs_padding,
    pad_to_multiple,
    to_2tuple,
    window_partition,
    window_reverse,
)
from ..registry import register_attention

__all__ = ["ShiftedWindowCosineAttention", "WindowAttentionV2"]


class ShiftedWindowCosineAttention(nn.Module):
    """The attention of :class:`WindowAttentionV2` on precomputed q, k, v (no projections).

    GRL's mixed attention computes one qkv projection for its window and stripe halves and calls this on its half.

    Args:
        num_heads: heads; the channels of q (and k, v) must divide by it.
        window_size: P, or (P0, P1).
        shift: shift the windows by half a window (P0 // 2, P1 // 2).
        cpb_hidden: width of the position-bias MLP.
    """

    def __init__(self, num_heads: int, window_size: int | tuple[int, int], *, shift: bool = False,
                 cpb_hidden: int = 512):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = to_2tuple(window_size)
        self.shift_size = (self.window_size[0] // 2, self.window_size[1] // 2) if shift else (0, 0)
        self.attn_transform = CosineAttnTransform(num_heads, cpb_hidden)

    def forward(self, qkv: Tensor) -> Tensor:
        """Shape: (B, H, W, 3*C) holding [q | k | v] channels -> (B, H, W, C), any H, W >= 1."""
        B, H, W, C3 = qkv.shape
        C, nh = C3 // 3, self.num_heads
        p0, p1 = self.window_size
        N = p0 * p1
        qkv, pad = pad_to_multiple(qkv, self.window_size)
        Hp, Wp = H + pad[0], W + pad[1]
        s0, s1 = self.shift_size
        shifted = s0 > 0 or s1 > 0
        if shifted:
            qkv = torch.roll(qkv, shifts=(-s0, -s1), dims=(1, 2))
        windows = window_partition(qkv, self.window_size)                  # (B*nWin, p0, p1, 3C)
        n_win = windows.shape[0] // B
        q, k, v = windows.reshape(B, n_win, N, 3, nh, C // nh).permute(3, 0, 1, 4, 2, 5).unbind(0)  # 3x(B, nWin, nh, N, hd)

        device = qkv.device
        bias = self.attn_transform.bias(cpb_coords(self.window_size).to(device),
                                        cpb_index(self.window_size).to(device))  # (nh, N, N)
        q, k = cosine_qk(q, k, self.attn_transform.scale())
        grid = ((Hp, Wp), self.window_size, self.shift_size)               # queries and keys: the same windows
        if is_symbolic(Hp, Wp):  # traced with dynamic sizes: one dense mask over all windows
            out = attend_windows(q, k, v, dense_window_bias(bias, *grid, *grid, (H, W), shifted))
        else:
            out = attend_window_classes(q, k, v, bias, window_classes(*grid, *grid, (H, W)))
        # out: (B, nWin, nh, N, hd)
        out = out.permute(0, 1, 3, 2, 4).reshape(B * n_win, p0, p1, C)     # (B*nWin, p0, p1, C)
        out = window_reverse(out, self.window_size, (Hp, Wp))               # (B, Hp, Wp, C)
        if shifted:
            out = torch.roll(out, shifts=(s0, s1), dims=(1, 2))
        if needs_padding(pad):
            out = crop_padding(out, (H, W))
        return out


@register_attention("window_v2")
class WindowAttentionV2(nn.Module):
    """Shifted-window cosine attention with a continuous position bias, as a (B, C, H, W) layer.

    Args:
        dim: channels.
        num_heads: heads (dim must divide by it).
        window_size: P, or (P0, P1).
        shift: shift the windows by half a window.
        qkv_bias: bias on the q, k, v projection.
        cpb_hidden: width of the position-bias MLP.
    """

    def __init__(self, dim: int, *, num_heads: int = 2, window_size: int | tuple[int, int] = 8, shift: bool = False,
                 qkv_bias: bool = True, cpb_hidden: int = 512):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.window_attn = ShiftedWindowCosineAttention(num_heads, window_size, shift=shift, cpb_hidden=cpb_hidden)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C, H, W) -> (B, C, H, W), any H, W >= 1."""
        check_image(x, self.dim, who="WindowAttentionV2")
        x = x.permute(0, 2, 3, 1)                                          # (B, H, W, C)
        x = self.proj(self.window_attn(self.qkv(x)))
        return x.permute(0, 3, 1, 2)                                       # (B, C, H, W)

    @staticmethod
    def example_kwargs() -> dict[str, object]:
        """Small constructor arguments for the generic tests (shifted, so the mask path runs)."""
        return {"dim": 16, "num_heads": 2, "window_size": 4, "shift": True, "cpb_hidden": 32}
