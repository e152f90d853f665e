"""Learned 2-D relative position bias (MaxViT, Swin-style tables) and its resizing between partition sizes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .partition import to_2tuple

__all__ = ["RelPosBias2d", "resize_rel_pos_table"]


def _relative_index(size: tuple[int, int]) -> Tensor:
    """(N, N) index into a flattened (2P0-1, 2P1-1) table for every (query, key) pair of a P0 x P1 window.

    The offset is key minus query (the convention of google-research/maxvit's ``reindex_2d_einsum_lookup`` and of
    timm's ``RelPosBiasTf``), shifted to be non-negative.
    """
    p0, p1 = size
    rows, cols = torch.meshgrid(torch.arange(p0), torch.arange(p1), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()                         # (N,), (N,)
    d_row = rows[None, :] - rows[:, None] + p0 - 1                      # (N query, N key)
    d_col = cols[None, :] - cols[:, None] + p1 - 1                      # (N query, N key)
    return d_row * (2 * p1 - 1) + d_col


class RelPosBias2d(nn.Module):
    """A learned table of shape (heads, 2P0-1, 2P1-1); ``forward()`` returns the (heads, N, N) logits bias."""

    def __init__(self, num_heads: int, size: int | tuple[int, int]):
        super().__init__()
        self.size = to_2tuple(size)
        p0, p1 = self.size
        self.relative_position_bias_table = nn.Parameter(torch.zeros(num_heads, 2 * p0 - 1, 2 * p1 - 1))
        nn.init.normal_(self.relative_position_bias_table, std=0.02)  # google-research/maxvit Attention.build
        self.register_buffer("index", _relative_index(self.size), persistent=False)

    def forward(self) -> Tensor:
        table = self.relative_position_bias_table.flatten(1)           # (heads, (2P0-1)*(2P1-1))
        return table[:, self.index]                                    # (heads, N, N)


def resize_rel_pos_table(table: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bilinearly resize a (heads, 2Q0-1, 2Q1-1) table to (heads, 2P0-1, 2P1-1) for partition size P.

    This is what the official fine-tuning at 384/512 does (google-research/maxvit ``attention_utils``: bilinear
    ``tf.image.resize``, half-pixel centres, which is ``align_corners=False`` here).
    """
    p0, p1 = to_2tuple(size)
    target = (2 * p0 - 1, 2 * p1 - 1)
    if tuple(table.shape[-2:]) == target:
        return table
    resized = F.interpolate(table[None].float(), size=target, mode="bilinear", align_corners=False)
    return resized[0].to(table.dtype)
