"""Spatial window attention (DaViT, Ding et al. 2022, arXiv 2204.03645): multi-head attention inside P x P windows.

The map is cut into non-overlapping P x P windows and every window runs ordinary multi-head self-attention over its
P*P tokens (scale head_dim^-0.5). Unlike Swin there is no shift and no relative position bias: DaViT gets positions
from its depthwise-conv position encodings and global context from the channel group attention that follows. Cost
O(H*W * P^2 * C): linear in the pixels, local in reach.

Sizes that do not divide by P are zero-padded at the bottom/right to the next multiple and cropped back afterwards.
By default the padded tokens are masked out as keys, so a real pixel's output never depends on the padding. timm
and the official code pad the same way but let the zero tokens take part as keys; ``mask_padding=False`` reproduces
that (used for weight-for-weight parity at sizes that need padding). For sizes that divide, both are identical.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.attend import attend, key_padding_bias
from ..layers.checks import check_image
from ..layers.fused import linear
from ..layers.partition import (
    crop_padding,
    is_symbolic,
    needs_padding,
    pad_to_multiple,
    symbolic_reshape,
    to_2tuple,
    valid_token_mask,
    window_partition,
    window_reverse,
)
from ..registry import register_attention

# a leaf under torch.fx symbolic tracing: it reads the dtype to pick the mask value
torch.fx.wrap("key_padding_bias")

__all__ = ["SpatialWindowAttention"]


@register_attention("spatial_window")
class SpatialWindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping windows, no relative position bias.

    Args:
        dim: channels.
        num_heads: attention heads; head_dim = dim // num_heads.
        window_size: P, the window side.
        qkv_bias: bias on the q, k, v projections (True in DaViT).
        mask_padding: exclude zero-padded tokens from the keys (False: timm/official behaviour).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, *, num_heads: int, window_size: int = 7, qkv_bias: bool = True,
                 mask_padding: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = to_2tuple(window_size)
        self.mask_padding = mask_padding
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward_cl(self, x: Tensor) -> Tensor:
        """Channels-last attention. Shape: (B, H, W, C) -> (B, H, W, C), any H, W >= 1."""
        B, H, W, C = x.shape
        x, pad = pad_to_multiple(x, self.window_size)
        Hp, Wp = H + pad[0], W + pad[1]
        p0, p1 = self.window_size
        nH, nW, N = Hp // p0, Wp // p1, p0 * p1
        windows = window_partition(x, self.window_size).reshape(-1, N, C)     # (B*nWin, N, C)
        qkv = linear(windows, self.qkv).reshape(-1, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                        # 3 x (B*nWin, heads, N, hd)
        bias = None
        if self.mask_padding and needs_padding(pad):
            valid = window_partition(valid_token_mask(H, W, pad, x.device), self.window_size).reshape(-1, N)
            bias = key_padding_bias(valid, q.dtype)                           # (nWin, 1, 1, N)
            bias = bias.repeat(B, 1, 1, 1)                                    # (B*nWin, 1, 1, N)
        out = attend(q, k, v, bias=bias)                                      # (B*nWin, heads, N, hd)
        if torch.is_grad_enabled() and not is_symbolic(H, W):
            # Training: project per window, as timm does. SDPA's output is laid out (B*nWin, N, heads, hd) in memory,
            # so merging the heads is a view and the projection saves no extra copy for backward (the one-permute
            # path below saved one (B, H, W, C) map per block: +21 MiB, 2%, on davit_tiny at batch 8).
            out = linear(out.transpose(1, 2).reshape(-1, N, C), self.proj)  # (B*nWin, N, C)
            out = window_reverse(out.view(-1, p0, p1, C), self.window_size, (Hp, Wp))  # (B, Hp, Wp, C)
            if needs_padding(pad):
                out = out[:, :H, :W]
            return self.proj_drop(out)
        # Merging the heads and undoing the partition is one permute, so one copy instead of two.
        out = out.view(B, nH, nW, self.num_heads, p0, p1, self.head_dim)     # (B, nH, nW, heads, p0, p1, hd)
        out = symbolic_reshape(out.permute(0, 1, 4, 2, 5, 3, 6), (B, Hp, Wp, C))  # (B, Hp, Wp, C)
        if needs_padding(pad):                                                # the projection skips the padding
            out = crop_padding(out, (H, W)) if is_symbolic(H, W) else out[:, :H, :W]
        return self.proj_drop(linear(out, self.proj))

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C, H, W) -> (B, C, H, W), any H, W."""
        check_image(x, self.dim, who="SpatialWindowAttention")
        return self.forward_cl(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    @staticmethod
    def example_kwargs() -> dict[str, int]:
        """Small constructor arguments for the generic tests (dim must be given)."""
        return {"dim": 32, "num_heads": 2, "window_size": 4}
