"""CloFormer's attention (Fan et al. 2023, arXiv 2303.17803): AttnConv local heads plus one pooled global group.

The heads are split into groups. Each local group is an **AttnConv**: a 1x1 conv gives q, k, v; one depthwise k x k
conv (shared weights) aggregates each of them over its neighbourhood; the context-aware weights are
``tanh(d^-0.5 * AttnMap(q * k))`` with AttnMap = 1x1 conv -> Swish -> 1x1 conv, and the output is ``weights * v``.
Everything in it is a convolution or pointwise, so it is translation equivariant and reaches k // 2 pixels: its cost
is O(H*W * C * k^2). The **global** group is softmax attention from every pixel to keys and values computed from the
map average-pooled by ``window_size``: O((H*W)^2 / window_size^2 * C), global reach. The groups' outputs are
concatenated along channels and mixed by a 1x1 conv.

Sizes that do not divide ``window_size``: the global pooling uses **ceil pooling** (``ceil_mode=True``, no padding),
so the last, partial window at the bottom / right averages only the real pixels inside it. No padded token ever
becomes a key, so no mask is needed; for sizes that divide this is exactly the official ``nn.AvgPool2d``, which
cannot handle the others (its ``view`` fails). The local branch needs nothing: its convs are zero-padded "same".

**Linear cost (opt-in, not in the paper):** ``max_kv_grid=G`` caps the global keys at a G x G grid. While
``ceil(H / window_size) <= G`` (and likewise for W) nothing changes; beyond it, that side is pooled adaptively into G
bins (PyTorch's adaptive-pooling bins: bin i covers pixels ``floor(i * H / G)`` to ``ceil((i + 1) * H / G)``), so the
global branch costs O(H*W * G^2 * C) and the whole layer grows linearly with the pixels. Choosing G as the grid that
the training resolution produces keeps the outputs at that resolution identical to the default.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.attend import attend
from ..layers.checks import check_image
from ..layers.partition import is_symbolic, symbolic_reshape
from ..layers.pool import averaging_matrix, ceil_avg_pool2d
from ..registry import register_attention

__all__ = ["AttnConv", "AttnMap", "CloAttention", "PooledGlobalAttention", "capped_pool_matrix"]


class AttnMap(nn.Module):
    """1x1 conv -> Swish -> 1x1 conv: the gate generator of AttnConv (official ``AttnMap``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, dim, 1)
        self.act = nn.SiLU()  # Swish; the official MemoryEfficientSwish is the same function
        self.fc2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AttnConv(nn.Module):
    """One local group of heads: convolutional attention with shared and context-aware weights.

    Args:
        dim: input channels.
        inner_dim: channels of this group's output (heads * head_dim).
        head_dim: channels per head; sets the gate scale head_dim ** -0.5.
        kernel_size: side of the shared depthwise conv over q, k and v (odd).
        qkv_bias: bias on the q, k, v projection.
        attn_drop: dropout on the gate values.
    """

    def __init__(self, dim: int, inner_dim: int, *, head_dim: int, kernel_size: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"AttnConv kernel_size must be odd (same-size output), got {kernel_size}")
        self.inner_dim = inner_dim
        self.kernel_size = kernel_size
        self.scale = head_dim ** -0.5
        self.qkv = nn.Conv2d(dim, 3 * inner_dim, 1, bias=qkv_bias)
        self.dwconv = nn.Conv2d(3 * inner_dim, 3 * inner_dim, kernel_size, padding=kernel_size // 2,
                                groups=3 * inner_dim)
        self.attn_map = AttnMap(inner_dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, dim, H, W) -> (B, inner_dim, H, W)."""
        q, k, v = self.dwconv(self.qkv(x)).chunk(3, dim=1)            # 3 x (B, inner_dim, H, W)
        # The scale multiplies the gate logits after AttnMap (official high_fre_attntion), not q before it.
        gate = torch.tanh(self.attn_map(q * k) * self.scale)
        return self.attn_drop(gate) * v


def capped_pool_matrix(size: int, window: int, max_grid: int, *, dtype: torch.dtype,
                       device: torch.device) -> Tensor:
    """Averaging weights of one side's pooling: (n, size), row i = 1 / count over the pixels of key bin i.

    The bins have stride ``s = max(window, size / max_grid)``: bin i covers pixels ``floor(i * s)`` up to
    ``min(ceil((i + 1) * s), size)``, and there are ``n = min(ceil(size / window), max_grid)`` of them. For
    ``ceil(size / window) <= max_grid`` these are the ceil-pooling windows (a partial last window averages its real
    pixels); beyond, PyTorch's adaptive-average-pooling bins. All in integers (``span = s * max_grid``) so a traced
    size stays symbolic and nothing branches on it.
    """
    span = torch.sym_max(window * max_grid, size)                      # s * max_grid, an integer
    n = torch.sym_min((size + window - 1) // window, max_grid)         # = ceil(size / s)
    i = torch.arange(n, device=device)
    start = i * span // max_grid                                       # (n,)
    end = torch.clamp(((i + 1) * span + max_grid - 1) // max_grid, max=size)  # (n,)
    return averaging_matrix(start, end, size, dtype)                   # (n, size)


class PooledGlobalAttention(nn.Module):
    """The global group: queries at every pixel, keys and values from the map average-pooled by ``window_size``.

    Args:
        dim: input channels.
        num_heads: heads of this group.
        head_dim: channels per head.
        window_size: pooling window and stride of the key / value map (1: no pooling).
        qkv_bias: bias on the q and kv projections.
        max_kv_grid: largest side of the key / value grid; a side that window pooling would make longer is pooled
            adaptively to this many bins instead (linear cost in H*W). None (default): the official behaviour,
            ``ceil(H / window_size) x ceil(W / window_size)`` keys.
    """

    def __init__(self, dim: int, *, num_heads: int, head_dim: int, window_size: int, qkv_bias: bool = True,
                 max_kv_grid: int | None = None):
        super().__init__()
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if max_kv_grid is not None and max_kv_grid < 1:
            raise ValueError(f"max_kv_grid must be >= 1 or None, got {max_kv_grid}")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.window_size = window_size
        self.max_kv_grid = max_kv_grid
        self.q = nn.Conv2d(dim, num_heads * head_dim, 1, bias=qkv_bias)
        self.kv = nn.Conv2d(dim, 2 * num_heads * head_dim, 1, bias=qkv_bias)

    def pool(self, x: Tensor) -> Tensor:
        """Ceil average pooling: (B, C, H, W) -> (B, C, ceil(H / w), ceil(W / w)); partial windows average their
        real pixels only. With ``max_kv_grid`` G each side has at most G keys (see :func:`capped_pool_matrix`)."""
        w, G = self.window_size, self.max_kv_grid
        H, W = x.shape[-2:]
        if G is not None and (is_symbolic(H, W) or (H + w - 1) // w > G or (W + w - 1) // w > G):
            # Deviation (opt-in, not in the official code): adaptive bins once a side outgrows G keys. Traced, this
            # path runs for every size (it covers the plain windows too), so no branch depends on H or W.
            B, C = x.shape[:2]
            rows = capped_pool_matrix(H, w, G, dtype=x.dtype, device=x.device)   # (gh, H)
            cols = capped_pool_matrix(W, w, G, dtype=x.dtype, device=x.device)   # (gw, W)
            gh, gw = rows.shape[0], cols.shape[0]
            x = x @ cols.transpose(0, 1)                               # (B, C, H, gw)
            # Rows as a 2-D matmul over a contiguous copy: ``rows @ x`` broadcasts a batch, and the traced
            # decomposition of that guards on the key grid not being 1 x 1.
            x = symbolic_reshape(x.transpose(-1, -2), (-1, H)) @ rows.transpose(0, 1)  # (B*C*gw, gh)
            return x.reshape(B, C, gw, gh).transpose(-1, -2)           # (B, C, gh, gw)
        if w == 1:
            return x
        return ceil_avg_pool2d(x, w)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, dim, H, W) -> (B, num_heads * head_dim, H, W)."""
        B, _, H, W = x.shape
        nh, hd = self.num_heads, self.head_dim
        q = symbolic_reshape(self.q(x), (B, nh, hd, H * W)).transpose(-1, -2)  # (B, nh, H*W, hd)
        kv = self.kv(self.pool(x))                                     # (B, 2*nh*hd, h, w)
        k, v = symbolic_reshape(kv, (B, 2, nh, hd, -1)).transpose(-1, -2).unbind(1)  # 2 x (B, nh, h*w, hd)
        # Traced, fused SDPA's decomposition guards on the key count not being 1 (it is 1 at the last stage of a 32 x 32
        # input, or with a 1 x 1 capped grid); the reference path's flattened ``bmm`` needs no such guard.
        fused = False if is_symbolic(H, W) else None
        out = attend(q, k, v, scale=hd ** -0.5, fused=fused)           # (B, nh, H*W, hd)
        return symbolic_reshape(out.transpose(-1, -2), (B, nh * hd, H, W))  # (B, nh*hd, H, W)


@register_attention("attn_conv")
class CloAttention(nn.Module):
    """CloFormer's attention as a drop-in layer: AttnConv groups of local heads + one pooled global group.

    Args:
        dim: input and output channels; divisible by ``num_heads``.
        num_heads: total heads (head_dim = dim // num_heads).
        group_split: heads per group, local groups first and the global group last; ``sum == num_heads``. A group
            of 0 heads is left out (no global branch when the last entry is 0).
        kernel_sizes: the depthwise kernel of each local group (``len == len(group_split) - 1``).
        window_size: pooling window of the global group's keys and values.
        max_kv_grid: cap on each side of the global group's key grid (opt-in linear cost, see the module docstring);
            None: the official, unbounded ``ceil(H / window_size) x ceil(W / window_size)`` keys.
        qkv_bias: bias on the q / k / v projections and on the output projection (official ``qkv_bias``).
        attn_drop: dropout on the local gates (the global branch's fused kernel has no probabilities to drop).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, *, num_heads: int, group_split: tuple[int, ...] | list[int],
                 kernel_sizes: tuple[int, ...] | list[int], window_size: int = 1, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, max_kv_grid: int | None = None):
        super().__init__()
        group_split, kernel_sizes = tuple(group_split), tuple(kernel_sizes)
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if sum(group_split) != num_heads or min(group_split, default=0) < 0:
            raise ValueError(f"group_split {group_split} must be non-negative and sum to num_heads {num_heads}")
        if len(kernel_sizes) + 1 != len(group_split):
            raise ValueError(f"need one kernel size per local group: group_split {group_split} has "
                             f"{len(group_split) - 1} local group(s), kernel_sizes {kernel_sizes}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.group_split = group_split
        # Groups of 0 heads get no module, so module indices count only the real groups (as in the official code).
        self.local_branches = nn.ModuleList([
            AttnConv(dim, heads * self.head_dim, head_dim=self.head_dim, kernel_size=k, qkv_bias=qkv_bias,
                     attn_drop=attn_drop)
            for heads, k in zip(group_split[:-1], kernel_sizes) if heads > 0
        ])
        self.global_branch = (
            PooledGlobalAttention(dim, num_heads=group_split[-1], head_dim=self.head_dim, window_size=window_size,
                                  qkv_bias=qkv_bias, max_kv_grid=max_kv_grid)
            if group_split[-1] > 0 else None
        )
        self.proj = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, dim, H, W) -> (B, dim, H, W), any H, W >= 1."""
        check_image(x, self.dim, who="CloAttention")
        outs = [branch(x) for branch in self.local_branches]
        if self.global_branch is not None:
            outs.append(self.global_branch(x))
        return self.proj_drop(self.proj(torch.cat(outs, dim=1)))      # (B, dim, H, W)

    @staticmethod
    def example_kwargs() -> dict:
        """Small constructor arguments for the generic tests: two local groups with different kernels + global."""
        return {"dim": 32, "num_heads": 4, "group_split": (1, 1, 2), "kernel_sizes": (3, 5), "window_size": 4}
