"""Multi-head pooling attention (MViT, Fan et al. 2021, arXiv 2104.11227; MViTv2, Li et al. 2022, arXiv 2112.01526).

Queries, keys and values are each pooled over the token map before attention, with their own kernel, stride and
padding per axis (2-D maps (H, W) or 3-D video maps (T, H, W)): a depthwise conv + LayerNorm (``conv``), average or
max pooling. Pooling keys and values by s_kv cuts the cost from O((H*W)^2 * C) to O((H*W)^2 * C / prod(s_kv)) while
every query still sees the whole map; a query stride s_q shrinks the output map, which is how MViT downsamples.
MViTv2 adds a decomposed relative position term (one table per axis, ``q . R_h + q . R_w [+ q . R_t]``) and a
residual connection from the pooled queries to the attention output.

Sizes: every pooled axis has ``floor((n + 2p - k) / s) + 1`` tokens (``output_shape`` gives the output map), so any
map with ``n + 2p >= k`` works; there is no partition to pad. The relative position tables are sized for one input
map (``rel_pos_size``, the pretraining resolution, which fixes the parameter shapes of timm and torchvision
checkpoints) and are linearly interpolated to ``2 * max(q, k) - 1`` entries for any other size, as torchvision's
video MViT does; timm builds them for one size and fails on any other.

An optional class token (one extra token before the map) is carried through: it is never pooled, but goes through
the pooling norm, takes part in attention, and is skipped by the relative position term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Proxy

from ..layers.attend import attend
from ..layers.checks import check_image
from ..layers.fused import linear
from ..layers.partition import is_symbolic, spatial_size, symbolic_reshape
from ..registry import register_attention

__all__ = ["PoolingAttention", "pooled_size", "rel_pos_index"]

PoolMode = Literal["conv", "avg", "max"]
_AXES = "thw"  # einsum letters of the (T, H, W) axes; 2-D maps use the last two


def _tuple(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{what} must be an int or {n} values (one per axis), got {value}")
    return value


def pooled_size(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
                padding: Sequence[int]) -> tuple[int, ...]:
    """Tokens per axis after pooling: floor((n + 2p - k) / s) + 1 (PyTorch conv/pool arithmetic, no ceil mode)."""
    return tuple((n + 2 * p - k) // s + 1 for n, k, s, p in zip(size, kernel, stride, padding))


def rel_pos_index(q: int, k: int, device: torch.device | None = None) -> Tensor:
    """(q, k) indices into a table of 2 * max(q, k) - 1 relative positions along one axis.

    The coarser of the two grids is stretched onto the finer one (MViTv2 §3.2: offsets are measured in units of the
    finer grid), so entry [i, j] is floor(i * q_ratio - j * k_ratio + (k - 1) * k_ratio) with q_ratio = max(k / q, 1)
    and k_ratio = max(q / k, 1). Computed in exact integer arithmetic; the reference code evaluates the same formula
    in float32, which can only differ at non-integer size ratios, where its floor may land one entry lower.
    """
    i = torch.arange(q, device=device)
    j = torch.arange(k, device=device)
    if is_symbolic(q, k):
        # Traced for any size (torch.export): both cases as one integer formula, floor(max(q, k) * (i k + (k - 1 - j)
        # q) / (q k)), instead of a branch on q >= k that the shape solver cannot decide.
        num = (i[:, None] * k + (k - 1 - j)[None, :] * q) * torch.sym_max(q, k)
        return num.div(q * k, rounding_mode="floor")
    if q >= k:
        return i[:, None] + ((k - 1 - j) * q).div(k, rounding_mode="floor")[None, :]
    return (i * k).div(q, rounding_mode="floor")[:, None] + (k - 1 - j)[None, :]


def _axis_term_traced(r_q: Tensor, rel: Tensor, axis: int, n: int) -> Tensor:
    """``einsum("bn...c,akc->bn...k")`` along one query axis as one batched matmul over that axis, with explicit
    (contiguous) reshapes: einsum's batch folding and permuted views guard on sizes (that one is not 1) under
    torch.export. A broadcast product and sum gives the same numbers but builds a (.., ka, c) tensor that onnxruntime
    runs about 4x slower than timm's Einsum (mvitv2_tiny's graph 0.7-1.0x timm's). (B, heads, *q_size, c),
    (qa, ka, c) -> (B, heads, *q_size, ka), with ``n`` = len(q_size)."""
    if isinstance(r_q, Proxy):  # torch.fx symbolic tracing: sizes are proxies that cannot be unpacked
        shape = [rel.shape[0] if i == axis else 1 for i in range(n)]
        return (r_q[..., None, :] * rel.view(*shape, rel.shape[1], rel.shape[2])).sum(-1)
    x = r_q.movedim(2 + axis, 0)                                       # (qa, B, heads, *other axes, c)
    rest = x.shape[1:-1]
    c = x.shape[-1]
    out = torch.bmm(symbolic_reshape(x, (x.shape[0], -1, c)), rel.transpose(1, 2))  # (qa, B*heads*others, ka)
    out = symbolic_reshape(out, (x.shape[0], *rest, rel.shape[1]))    # (qa, B, heads, *other axes, ka)
    return out.movedim(0, 2 + axis)                                    # (B, heads, *q_size, ka)


def _resize_table(table: Tensor, length: int) -> Tensor:
    """(L, C) -> (length, C) by linear interpolation (align_corners=False, as torchvision's video MViT)."""
    if not is_symbolic(length) and table.shape[0] == length:  # traced: always (linear resizing L -> L is exact)
        return table
    resized = F.interpolate(table.t()[None].float(), size=length, mode="linear", align_corners=False)
    return resized[0].t().to(table.dtype)


def _pool_map(x: Tensor, pool: nn.Module, heads: int, size: Sequence[object]) -> Tensor:
    """Pool a channels-last (B, heads * c, *size) map whose channels are ``heads`` groups of c: one call for all heads.

    ``size`` is the map size as the caller knows it (ints, or SymInts / proxies while tracing).

    The reference code pools each head's (c, *size) map as a batch item (B * heads, c, *size); a depthwise conv over
    heads * c channels with the per-head kernel repeated ``heads`` times computes the same numbers, and the map keeps
    the token-major layout the q / k / v projection wrote, so it is never transposed to channels-first (on CPU that
    transpose and the channels-first depthwise conv cost more than the pooling itself). Average and max pooling are
    per channel anyway. Under export with symbolic sizes a 3-D conv is computed one output column wider and cropped:
    the fake (tracing) convolution converts its 5-D output's memory format with a check that guards on the output map
    not being a single token (T' * H' * W' != 1), which froze the last stage's map of video models; padding the input
    by one stride on the right adds exactly one output column (the others see the same windows), so the output
    provably has at least two tokens, and the negative pad crops it without a slice's bound guard.
    """
    if not isinstance(pool, (nn.Conv2d, nn.Conv3d)):
        return pool(x)
    channels = heads * pool.out_channels  # module attributes, not tensor sizes: plain ints under torch.fx as well
    ones = [1] * len(pool.kernel_size)
    weight = pool.weight if heads == 1 else pool.weight.repeat(heads, 1, *ones)  # (heads*c, 1, *k)
    conv = F.conv3d if isinstance(pool, nn.Conv3d) else F.conv2d
    traced = isinstance(pool, nn.Conv3d) and is_symbolic(*size)
    if traced:
        x = F.pad(x, (0, pool.stride[-1]))                             # (B, heads*c, T, H, W + stride)
    if (isinstance(pool, nn.Conv3d) and not isinstance(x, Proxy) and x.device.type == "cpu" and torch.is_grad_enabled()
            and (torch.is_autocast_enabled("cpu") or x.dtype in (torch.bfloat16, torch.float16))):
        # oneDNN's bf16 depthwise Conv3d backward (native bf16 / AMX kernels, torch 2.13) returns wrong weight
        # gradients for channels-last inputs of small maps (relative error ~1 against fp32 on a 2x4x4 map);
        # channels-first inputs are correct, so low-precision training pools channels-first
        x = x.contiguous()                                             # (B, heads*c, *size), channels-first
    y = conv(x, weight, None, pool.stride, pool.padding, pool.dilation, channels)  # (B, heads*c, *size')
    return F.pad(y, (0, -1)) if traced else y


@register_attention("pooling")
class PoolingAttention(nn.Module):
    """Multi-head pooling attention over a 2-D or 3-D token map.

    Args:
        dim: input channels.
        dim_out: output channels (default ``dim``). MViTv2's ``dim_mul_in_att`` expands channels here: q, k, v and
            the output projection have ``dim_out`` channels.
        num_heads: attention heads; ``dim_out`` (``dim`` with ``pool_first``) must divide by it.
        spatial_dims: 2 for (H, W) maps, 3 for (T, H, W) video maps.
        kernel_q, stride_q, padding_q: query pooling per axis; padding defaults to kernel // 2. Kernel 1 and stride
            1 on every axis means no query pooling (MViT v1 blocks without a stride).
        kernel_kv, stride_kv, padding_kv: key and value pooling, likewise.
        mode: ``conv`` (depthwise conv shared by the heads, then LayerNorm), ``avg`` or ``max``.
        pool_first: pool the input before the q, k, v projections (separate ``q``, ``k``, ``v`` linears) instead of
            pooling the projected q, k, v.
        qkv_bias: bias on the q, k, v projections.
        rel_pos: add MViTv2's decomposed relative position term.
        rel_pos_size: the input map size ((T,) H, W) the tables are sized for; other sizes interpolate them.
        residual_pooling: add the pooled queries to the attention output (MViTv2).
        residual_pool_cls: whether that residual also reaches the class token. The official code (facebookresearch
            mvit and SlowFast, torchvision) skips it; timm's ``mvitv2_*_cls`` adds it.
        norm_eps: epsilon of the pooling LayerNorms (1e-6 in all reference code).
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int | None = None,
        *,
        num_heads: int = 1,
        spatial_dims: int = 2,
        kernel_q: int | Sequence[int] = 3,
        kernel_kv: int | Sequence[int] = 3,
        stride_q: int | Sequence[int] = 1,
        stride_kv: int | Sequence[int] = 1,
        padding_q: int | Sequence[int] | None = None,
        padding_kv: int | Sequence[int] | None = None,
        mode: PoolMode = "conv",
        pool_first: bool = False,
        qkv_bias: bool = True,
        rel_pos: bool = True,
        rel_pos_size: int | Sequence[int] = 14,
        residual_pooling: bool = True,
        residual_pool_cls: bool = False,
        norm_eps: float = 1e-6,
        proj_drop: float = 0.0,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 (H, W) or 3 (T, H, W), got {spatial_dims}")
        if mode not in ("conv", "avg", "max"):
            raise ValueError(f"mode must be 'conv', 'avg' or 'max', got {mode!r}")
        dim_out = dim_out or dim
        if dim_out % num_heads or (pool_first and dim % num_heads):
            raise ValueError(f"dim_out {dim_out}{f' and dim {dim}' if pool_first else ''} must divide by "
                             f"num_heads {num_heads}")
        n = spatial_dims
        self.dim, self.dim_out, self.num_heads, self.spatial_dims = dim, dim_out, num_heads, n
        self.head_dim = dim_out // num_heads
        self.mode, self.pool_first = mode, pool_first
        self.residual_pooling, self.residual_pool_cls = residual_pooling, residual_pool_cls
        self.kernel_q, self.kernel_kv = _tuple(kernel_q, n, "kernel_q"), _tuple(kernel_kv, n, "kernel_kv")
        self.stride_q, self.stride_kv = _tuple(stride_q, n, "stride_q"), _tuple(stride_kv, n, "stride_kv")
        self.padding_q = (tuple(k // 2 for k in self.kernel_q) if padding_q is None
                          else _tuple(padding_q, n, "padding_q"))
        self.padding_kv = (tuple(k // 2 for k in self.kernel_kv) if padding_kv is None
                           else _tuple(padding_kv, n, "padding_kv"))
        if mode != "conv":
            for what, k, p in (("q", self.kernel_q, self.padding_q), ("kv", self.kernel_kv, self.padding_kv)):
                if any(2 * pi > ki for ki, pi in zip(k, p)):
                    raise ValueError(f"{mode} pooling needs padding_{what} <= kernel_{what} // 2, got "
                                     f"padding {p} for kernel {k}")

        if pool_first:
            self.q = nn.Linear(dim, dim_out, bias=qkv_bias)
            self.k = nn.Linear(dim, dim_out, bias=qkv_bias)
            self.v = nn.Linear(dim, dim_out, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop)

        # Kernel 1 and stride 1 everywhere is the identity: no pooling module (as in the reference code).
        pools_q = math.prod(self.kernel_q) > 1 or math.prod(self.stride_q) > 1
        pools_kv = math.prod(self.kernel_kv) > 1 or math.prod(self.stride_kv) > 1
        channels = (dim if pool_first else dim_out) // num_heads
        self.pool_q = self._make_pool(channels, self.kernel_q, self.stride_q, self.padding_q) if pools_q else None
        self.pool_k = self._make_pool(channels, self.kernel_kv, self.stride_kv, self.padding_kv) if pools_kv else None
        self.pool_v = self._make_pool(channels, self.kernel_kv, self.stride_kv, self.padding_kv) if pools_kv else None
        with_norm = mode == "conv"
        self.norm_q = nn.LayerNorm(channels, eps=norm_eps) if pools_q and with_norm else None
        self.norm_k = nn.LayerNorm(channels, eps=norm_eps) if pools_kv and with_norm else None
        self.norm_v = nn.LayerNorm(channels, eps=norm_eps) if pools_kv and with_norm else None

        self.rel_pos = rel_pos
        if rel_pos:
            ref = _tuple(rel_pos_size, n, "rel_pos_size")
            self.rel_pos_size = ref
            # One table per axis, sized like the reference code: 2 * max(q, kv) - 1 at the reference size.
            lengths = [2 * max(s // sq, s // skv) - 1 for s, sq, skv in zip(ref, self.stride_q, self.stride_kv)]
            names = ["rel_pos_h", "rel_pos_w"] if n == 2 else ["rel_pos_t", "rel_pos_h", "rel_pos_w"]
            for name, length in zip(names, lengths):
                table = nn.Parameter(torch.zeros(length, self.head_dim))
                nn.init.trunc_normal_(table, std=0.02)  # facebookresearch/mvit rel_pos_zero_init=False
                self.register_parameter(name, table)
            self.rel_pos_names = names

    def _make_pool(self, channels: int, kernel: tuple[int, ...], stride: tuple[int, ...],
                   padding: tuple[int, ...]) -> nn.Module:
        if self.mode == "conv":
            conv = nn.Conv2d if self.spatial_dims == 2 else nn.Conv3d
            return conv(channels, channels, kernel, stride=stride, padding=padding, groups=channels, bias=False)
        if self.mode == "avg":
            # count_include_pad=True: PyTorch's default, used by the reference code
            return (nn.AvgPool2d if self.spatial_dims == 2 else nn.AvgPool3d)(kernel, stride, padding)
        return (nn.MaxPool2d if self.spatial_dims == 2 else nn.MaxPool3d)(kernel, stride, padding)

    # --- sizes ----------------------------------------------------------------------------------------------

    def min_size(self) -> tuple[int, ...]:
        """The smallest input map (per axis) every pooling accepts: k - 2p, at least 1."""
        sizes = [1] * self.spatial_dims
        for pool, k, p in ((self.pool_q, self.kernel_q, self.padding_q), (self.pool_k, self.kernel_kv,
                                                                          self.padding_kv)):
            if pool is not None:
                sizes = [max(s, ki - 2 * pi) for s, ki, pi in zip(sizes, k, p)]
        return tuple(sizes)

    def query_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The output map size for an input map ``size`` (the query pooling's)."""
        if self.pool_q is None:
            return tuple(size)
        return pooled_size(size, self.kernel_q, self.stride_q, self.padding_q)

    def key_size(self, size: Sequence[int]) -> tuple[int, ...]:
        """The key (and value) map size for an input map ``size`` (the key-value pooling's)."""
        if self.pool_k is None:
            return tuple(size)
        return pooled_size(size, self.kernel_kv, self.stride_kv, self.padding_kv)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """(B, dim, *size) -> (B, dim_out, *query_size(size))."""
        return (input_shape[0], self.dim_out, *self.query_size(input_shape[2:]))

    # --- forward --------------------------------------------------------------------------------------------

    def _pool(self, t: Tensor, pool: nn.Module | None, norm: nn.Module | None, size: tuple[int, ...],
              prefix: int) -> tuple[Tensor, tuple[int, ...]]:
        """Pool the map tokens of a token-major (B, prefix + N, heads, c) tensor; the class token passes through.

        Returns the token-major (B, prefix + N', heads, c) tensor and the pooled map size.
        """
        if pool is None:
            return t, size
        B, _, nh, c = t.shape
        cls, t = t[:, :prefix], t[:, prefix:]
        t = symbolic_reshape(t, (B, *size, nh * c)).movedim(-1, 1)    # (B, heads*c, *size), channels-last
        t = _pool_map(t, pool, self.num_heads, size)                   # (B, heads*c, *size')
        size = spatial_size(t, len(size))
        t = symbolic_reshape(t.movedim(1, -1), (B, -1, nh, c))        # (B, N', heads, c)
        if prefix:
            t = torch.cat((cls, t), dim=1)                             # (B, prefix + N', heads, c)
        if norm is not None:
            t = norm(t)
        return t, size

    def _rel_pos_bias(self, q: Tensor, q_size: tuple[int, ...], k_size: tuple[int, ...], prefix: int) -> Tensor:
        """The decomposed relative position logits (B, heads, Nq, Nk): sum over axes of q . R_axis[q_pos, k_pos].

        Per axis, ``q . R`` gives a (B, heads, Nq, k_axis) term; the terms are concatenated and spread over the key
        map by one matmul with the keys' one-hot axis coordinates (Nk, sum of k_axis). Adding broadcast terms
        instead, as the reference code does, is several times slower on CPU for the same (exact) sums.
        """
        B, nh, _, c = q.shape
        n = self.spatial_dims
        r_q = symbolic_reshape(q[:, :, prefix:], (B, nh, *q_size, c))  # (B, heads, *q_size, c)
        letters = _AXES[-n:]
        terms = []
        for axis, name in enumerate(self.rel_pos_names):
            qa, ka = q_size[axis], k_size[axis]
            longest = torch.sym_max(qa, ka) if is_symbolic(qa, ka) else max(qa, ka)
            table = _resize_table(getattr(self, name), 2 * longest - 1)
            # index_select, not table[index]: advanced indexing of this small table cost 1.2-2.4 ms per call
            # (torch 2.13 CPU, 2 threads; index_select 5-6 us), ~50-100 ms per video clip
            index = rel_pos_index(qa, ka, table.device)                # (qa, ka)
            rel = symbolic_reshape(table.index_select(0, index.flatten()), (qa, ka, c))  # (qa, ka, c)
            a = letters[axis]
            if is_symbolic(B, *q_size):
                terms.append(_axis_term_traced(r_q, rel, axis, n))
            else:
                terms.append(torch.einsum(f"bn{letters}c,{a}kc->bn{letters}k", r_q, rel))  # (B, heads, *q_size, ka)
        terms = torch.cat(terms, dim=-1).reshape(B, nh, math.prod(q_size), sum(k_size))  # (B, heads, Nq, sum k)
        if is_symbolic(*k_size):
            # one_hot needs a concrete class count: the same 0/1 matrix by comparison, with each key's axis
            # coordinate computed from its flat index (flattening a meshgrid view guarded on a side not being 1;
            # the ONNX converter has no remainder by a symbolic size, hence d - floor(d / k) * k)
            flat = torch.arange(math.prod(k_size), device=q.device)    # (Nk,)
            coords, stride = [], 1
            for k in reversed(k_size):
                d = flat.div(stride, rounding_mode="floor")
                coords.insert(0, d - d.div(k, rounding_mode="floor") * k)
                stride = stride * k
            onehot = torch.cat([c[:, None] == torch.arange(k, device=q.device)[None, :]
                                for c, k in zip(coords, k_size)], dim=1)  # (Nk, sum k)
        else:
            grids = torch.meshgrid(*[torch.arange(k, device=q.device) for k in k_size], indexing="ij")
            onehot = torch.cat([F.one_hot(g.flatten(), k) for g, k in zip(grids, k_size)], dim=1)  # (Nk, sum k)
        onehot = onehot.to(terms.dtype)
        if prefix:
            # no position term for the class token: a zero row of terms and a zero one-hot row give the padded
            # (prefix + Nq, prefix + Nk) bias in the one matmul, instead of padding (a copy of) the large bias
            terms = F.pad(terms, (0, 0, prefix, 0))                    # (B, heads, prefix + Nq, sum k)
            onehot = F.pad(onehot, (0, 0, prefix, 0))                  # (prefix + Nk, sum k)
        return terms @ onehot.t()                                     # (B, heads, prefix + Nq, prefix + Nk)

    def forward_tokens(self, x: Tensor, size: Sequence[int], *, prefix: int | None = None
                       ) -> tuple[Tensor, tuple[int, ...]]:
        """Attention on a token sequence.

        Args:
            x: (B, prefix + N, dim) tokens; N = prod(size) map tokens in row-major order, after ``prefix`` (0 or
                1) class tokens.
            size: the map size ((T,) H, W).
            prefix: the number of class tokens; default: inferred from the token count (not under torch.fx symbolic
                tracing, where the count is a proxy: pass it).

        Shape:
            returns ((B, prefix + N', dim_out), size') with size' = ``query_size(size)``.
        """
        size = tuple(s if is_symbolic(s) else int(s) for s in size)  # int() would freeze a traced size
        B, N, C = x.shape
        if not isinstance(x, Proxy):
            found = N - math.prod(size)
            prefix = found if prefix is None else prefix
            if prefix not in (0, 1) or found != prefix or len(size) != self.spatial_dims:
                raise ValueError(f"PoolingAttention: {N} tokens do not match a {size} map (plus {prefix} class "
                                 f"token(s); at most one)")
        elif prefix is None:  # torch.fx symbolic tracing: the token count is a proxy, nothing to infer or check
            raise ValueError("PoolingAttention.forward_tokens under torch.fx symbolic tracing needs prefix=")
        small = self.min_size()
        if not isinstance(x, Proxy) and any(s < m for s, m in zip(size, small)):
            raise ValueError(f"PoolingAttention needs a map of at least {small} for its pooling kernels and "
                             f"paddings, got {size}")
        nh = self.num_heads
        if self.pool_first:
            x = x.reshape(B, N, nh, C // nh)                           # (B, N, heads, C/heads)
            q, q_size = self._pool(x, self.pool_q, self.norm_q, size, prefix)
            k, k_size = self._pool(x, self.pool_k, self.norm_k, size, prefix)
            v, _ = self._pool(x, self.pool_v, self.norm_v, size, prefix)
            q, k, v = (proj(t.reshape(B, t.shape[1], C)).reshape(B, -1, nh, self.head_dim)
                       for proj, t in ((self.q, q), (self.k, k), (self.v, v)))  # (B, N', heads, hd)
        else:
            qkv = linear(x, self.qkv).reshape(B, N, 3, nh, self.head_dim)  # (B, N, 3, heads, hd)
            q, k, v = qkv.unbind(2)                                    # (B, N, heads, hd) each
            q, q_size = self._pool(q, self.pool_q, self.norm_q, size, prefix)
            k, k_size = self._pool(k, self.pool_k, self.norm_k, size, prefix)
            v, _ = self._pool(v, self.pool_v, self.norm_v, size, prefix)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, N', hd)
        bias = self._rel_pos_bias(q, q_size, k_size, prefix) if self.rel_pos else None
        out = attend(q, k, v, bias=bias, scale=self.head_dim ** -0.5)  # (B, heads, Nq, hd)
        if self.residual_pooling:
            if prefix and not self.residual_pool_cls:
                out = torch.cat((out[:, :, :prefix], out[:, :, prefix:] + q[:, :, prefix:]), dim=2)
            else:
                out = out + q
        out = symbolic_reshape(out.transpose(1, 2), (B, -1, self.dim_out))  # (B, Nq, dim_out); traced: no Nq == 1 guard
        return self.proj_drop(linear(out, self.proj)), q_size

    def forward(self, x: Tensor, *, cls_token: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Attention on a map, optionally with a class token.

        Args:
            x: (B, dim, H, W) or (B, dim, T, H, W) map.
            cls_token: optional (B, dim) class token that joins the attention.

        Shape:
            returns the (B, dim_out, *size') map (``output_shape``), or (map, (B, dim_out) class token) when
            ``cls_token`` is given.
        """
        check_image(x, self.dim, who="PoolingAttention", ndim=2 + self.spatial_dims)
        B, C = x.shape[:2]
        size = spatial_size(x, self.spatial_dims)
        tokens = x.flatten(2).transpose(1, 2)                          # (B, N, C)
        if cls_token is not None:
            tokens = torch.cat((cls_token.reshape(B, 1, C).to(tokens.dtype), tokens), dim=1)  # (B, 1 + N, C)
        prefix = 0 if cls_token is None else 1
        out, q_size = self.forward_tokens(tokens, size, prefix=prefix)
        out_map = out[:, prefix:].transpose(1, 2).reshape(B, self.dim_out, *q_size)  # (B, dim_out, *size')
        return out_map if cls_token is None else (out_map, out[:, 0])

    @staticmethod
    def example_kwargs() -> dict[str, object]:
        """Small constructor arguments for the generic tests: channel expansion, Q and KV strides, rel-pos
        tables sized for another map than the test's (so interpolation runs)."""
        return {"dim": 32, "dim_out": 48, "num_heads": 2, "stride_q": 2, "stride_kv": 2, "rel_pos_size": 8}

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, dim_out={self.dim_out}, heads={self.num_heads}, mode={self.mode}, "
                f"stride_q={self.stride_q}, stride_kv={self.stride_kv}, pool_first={self.pool_first}")
