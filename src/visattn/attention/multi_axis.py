"""Multi-axis attention (MaxViT, Tu et al. 2022, arXiv 2204.01697): block attention, then grid attention.

Block attention is self-attention inside non-overlapping P x P windows (local). Grid attention cuts the map into a
fixed P x P grid and lets the P*P pixels that share a position inside every grid cell attend to each other: a
dilated, global mixing whose stride grows with the image. Each costs O(H*W * P^2 * C): linear in the pixels. Both
add a learned relative position bias over the P x P partition (key minus query offsets, one table per head).

Sizes that do not divide by P are zero-padded at the bottom/right to the next multiple, padded tokens are masked
out as keys (a large negative logit), and the output is cropped back. For sizes that divide, nothing changes.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from ..layers.attend import attend, key_padding_bias
from ..layers.checks import check_image
from ..layers.fused import linear
from ..layers.partition import (
    crop_padding,
    grid_partition,
    grid_reverse,
    needs_padding,
    pad_to_multiple,
    to_2tuple,
    valid_token_mask,
    window_partition,
    window_reverse,
)
from ..layers.rel_pos import RelPosBias2d
from ..registry import register_attention

# a leaf under torch.fx symbolic tracing: it reads the dtype to pick the mask value
torch.fx.wrap("key_padding_bias")

__all__ = ["PartitionAttention", "MultiAxisAttention"]


class PartitionAttention(nn.Module):
    """Multi-head self-attention inside block (window) or grid partitions of a channels-last map.

    Args:
        dim: channels.
        partition: ``"block"`` (local windows) or ``"grid"`` (dilated, global).
        partition_size: P, the window side (block) or the grid side (grid).
        head_dim: channels per head; heads = dim // head_dim.
        qkv_bias: bias on the q, k, v projections.
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, *, partition: Literal["block", "grid"] = "block", partition_size: int = 7,
                 head_dim: int = 32, qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if partition not in ("block", "grid"):
            raise ValueError(f"partition must be 'block' or 'grid', got {partition!r}")
        if dim % head_dim:
            raise ValueError(f"dim {dim} must be divisible by head_dim {head_dim}")
        self.dim = dim
        self.partition = partition
        self.partition_size = to_2tuple(partition_size)
        self.num_heads = dim // head_dim
        self.head_dim = head_dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rel_pos = RelPosBias2d(self.num_heads, self.partition_size)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split(self, x: Tensor) -> Tensor:
        return (window_partition if self.partition == "block" else grid_partition)(x, self.partition_size)

    def _merge(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return (window_reverse if self.partition == "block" else grid_reverse)(x, self.partition_size, size)

    def forward_cl(self, x: Tensor) -> Tensor:
        """Channels-last attention. Shape: (B, H, W, C) -> (B, H, W, C), any H, W >= 1."""
        B, H, W, C = x.shape
        x, pad = pad_to_multiple(x, self.partition_size)
        Hp, Wp = H + pad[0], W + pad[1]
        p0, p1 = self.partition_size
        N = p0 * p1
        windows = self._split(x).reshape(-1, N, C)                      # (B*nWin, N, C)
        qkv = linear(windows, self.qkv).reshape(-1, N, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                  # 3 x (B*nWin, heads, N, hd)
        bias = self.rel_pos()                                          # (heads, N, N)
        if needs_padding(pad):
            valid = self._split(valid_token_mask(H, W, pad, x.device)).reshape(-1, N)  # (nWin, N)
            key_bias = key_padding_bias(valid, bias.dtype)             # (nWin, 1, 1, N)
            bias = (bias[None] + key_bias).repeat(B, 1, 1, 1)          # (B*nWin, heads, N, N)
        out = attend(q, k, v, bias=bias)                               # (B*nWin, heads, N, hd)
        out = out.transpose(1, 2).reshape(-1, p0, p1, C)               # (B*nWin, p0, p1, C)
        out = self.proj_drop(linear(out, self.proj))
        out = self._merge(out, (Hp, Wp))                               # (B, Hp, Wp, C)
        if needs_padding(pad):
            out = crop_padding(out, (H, W))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C, H, W) -> (B, C, H, W)."""
        check_image(x, self.dim, who=f"PartitionAttention({self.partition})")
        return self.forward_cl(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@register_attention("multi_axis")
class MultiAxisAttention(nn.Module):
    """MaxViT's multi-axis self-attention (Max-SA) as a drop-in layer: block attention, then grid attention.

    Each branch is pre-norm and residual, x + Attn(LayerNorm(x)), as in the MaxViT block; the FFNs that the full
    MaxViT block places after each branch belong to the model, not to the attention.

    Args:
        dim: channels.
        partition_size: P for both the block windows and the grid.
        head_dim: channels per head.
        qkv_bias: bias on the q, k, v projections.
        norm_eps: LayerNorm epsilon (1e-5, google-research/maxvit ``ln_epsilon``).
    """

    def __init__(self, dim: int, *, partition_size: int = 7, head_dim: int = 32, qkv_bias: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.dim = dim
        self.norm_block = nn.LayerNorm(dim, eps=norm_eps)
        self.block = PartitionAttention(dim, partition="block", partition_size=partition_size, head_dim=head_dim,
                                        qkv_bias=qkv_bias)
        self.norm_grid = nn.LayerNorm(dim, eps=norm_eps)
        self.grid = PartitionAttention(dim, partition="grid", partition_size=partition_size, head_dim=head_dim,
                                       qkv_bias=qkv_bias)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C, H, W) -> (B, C, H, W), any H, W."""
        check_image(x, self.dim, who="MultiAxisAttention")
        x = x.permute(0, 2, 3, 1)                                      # (B, H, W, C)
        x = x + self.block.forward_cl(self.norm_block(x))
        x = x + self.grid.forward_cl(self.norm_grid(x))
        return x.permute(0, 3, 1, 2)                                   # (B, C, H, W)

    @staticmethod
    def example_kwargs() -> dict[str, int]:
        """Small constructor arguments for the generic tests (dim must be given)."""
        return {"dim": 64, "partition_size": 4, "head_dim": 16}


