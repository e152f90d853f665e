"""The one attention kernel every mechanism calls: a fused path and a readable reference path.

``attend(q, k, v)`` computes softmax(q k^T * scale + bias + mask) v over (B, heads, N, head_dim) tensors. The fused
path is :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels where the backend
has them); the reference path spells the same formula out in three lines and exists so tests can check the fused
one. :func:`use_fused` switches between them globally (tests, debugging).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx import Proxy

from .amp import amp_matmul, fp32_gemms
from .partition import is_symbolic, symbolic_reshape

__all__ = ["attend", "use_fused", "fused_enabled", "key_padding_bias"]

_FUSED = True


def fused_enabled() -> bool:
    return _FUSED


@contextlib.contextmanager
def use_fused(enabled: bool) -> Iterator[None]:
    """Context manager selecting the fused (SDPA) or the reference attention path inside its block."""
    global _FUSED
    previous, _FUSED = _FUSED, enabled
    try:
        yield
    finally:
        _FUSED = previous


def key_padding_bias(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, N) bool, True on real keys -> (B, 1, 1, N) additive bias: 0 on real keys, a huge negative on padding.

    The most negative finite value rather than -inf keeps a row finite even if every key in it were padding.
    """
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    bias = bias.masked_fill(~valid, torch.finfo(dtype).min)
    return bias[:, None, None, :]                                      # (B, 1, 1, N)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    bias: Tensor | None = None,
    scale: float | None = None,
    fused: bool | None = None,
) -> Tensor:
    """Scaled dot-product attention.

    Args:
        q: queries (B, heads, Nq, head_dim).
        k: keys (B, heads, Nk, head_dim).
        v: values (B, heads, Nk, head_dim_v).
        bias: additive logits bias broadcastable to (B, heads, Nq, Nk) (relative position bias, padding mask).
        scale: logit scale; default head_dim ** -0.5.
        fused: force a path; default follows :func:`use_fused`, except that a bias needing a gradient on CPU
            (a trainable position bias in training) takes the reference path: PyTorch's CPU SDPA has no fused kernel
            returning a mask gradient, and its math fallback upcasts bf16 / fp16 q, k, v, logits and probabilities
            to fp32 and keeps them for backward. Measured on one mvitv2_tiny stage-0 attention, fwd + bwd, batch
            8, 3136 x 196 tokens, 1 thread: bf16 autocast peak 115 -> 64 MiB, 132 -> 58 ms; fp32 153 -> 115 ms.
            Under CPU bf16 autocast without oneDNN bf16 (:mod:`visattn.layers.amp`) the fused path runs SDPA in
            fp32 and the reference path its two matmuls.

    Shape:
        returns (B, heads, Nq, head_dim_v).
    """
    if isinstance(q, Proxy):
        return _attend_fx(q, k, v, bias, scale, _FUSED if fused is None else fused)
    emulated_bf16 = fp32_gemms(q)
    if emulated_bf16:  # bf16 autocast where bf16 is emulated (layers/amp.py): operands rounded as autocast rounds them
        q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    if fused is None:
        fused = _FUSED and not (bias is not None and bias.requires_grad and q.device.type == "cpu")
    if fused:
        if emulated_bf16:  # CPU SDPA's bf16 kernels multiply through the portable bf16 GEMM: fp32 SDPA instead
            with torch.autocast("cpu", enabled=False):
                out = attend(q.float(), k.float(), v.float(), bias=None if bias is None else bias.float(),
                             scale=scale, fused=True)
            return out.to(torch.bfloat16)
        if bias is not None and bias.ndim < 4:
            # A broadcast view of the full (B, heads, Nq, Nk) shape, no copy: with a lower-rank mask PyTorch's CPU
            # SDPA falls back to its unfused math path (measured 3.2x slower for MaxViT windows, torch 2.13).
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if is_symbolic(*q.shape[:-1], *k.shape[:-1]):
        return _attend_traced(q, k, v, bias, scale)
    # amp_matmul is ``@``, or under emulated bf16 an fp32 matmul keeping the same bf16 tensors for backward
    if k.shape[-2] < q.shape[-2]:
        # fewer keys than queries (pooled keys): scaling them is the cheaper multiply, and under autograd it keeps
        # a small scaled copy alive for backward instead of a query-sized one
        logits = amp_matmul(q, (k * scale).transpose(-2, -1))          # (B, heads, Nq, Nk)
    else:
        logits = amp_matmul(q * scale, k.transpose(-2, -1))            # (B, heads, Nq, Nk)
    if bias is not None:
        logits = logits + bias
    return amp_matmul(logits.softmax(dim=-1), v)


def _attend_fx(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float | None, fused: bool) -> Tensor:
    """:func:`attend` under ``torch.fx.symbolic_trace``: dtypes, ranks and sizes are proxies, so no branch may read
    them; the graph takes the fused or the plain reference formula whatever the sizes (a bias needing a gradient is
    left to the fused kernel's math fallback)."""
    if bias is not None:
        bias = bias.to(q.dtype)                                        # a no-op where the dtypes already match
    if fused:
        if bias is not None:  # a broadcast view of the full shape, as in the eager path (any rank broadcasts)
            bias = bias.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    logits = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)  # (B, heads, Nq, Nk)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1) @ v


def _attend_traced(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scale: float) -> Tensor:
    """The reference formula as ``bmm`` over flattened copies, for torch.export / ONNX with symbolic sizes: batched
    matmul's folding reshapes guard on the batch sizes (e.g. that one is not 1), which would freeze them."""
    *batch, Nq, d = q.shape
    Nk, dv = k.shape[-2], v.shape[-1]
    n = 1
    for size in batch:
        n = n * size
    q = symbolic_reshape(q * scale, (n, Nq, d))                           # (B*heads, Nq, d)
    logits = torch.bmm(q, symbolic_reshape(k.transpose(-2, -1), (n, d, Nk))).view(*batch, Nq, Nk)
    if bias is not None:
        logits = logits + bias
    attn = symbolic_reshape(logits.softmax(dim=-1), (n, Nq, Nk))         # (B*heads, Nq, Nk)
    return torch.bmm(attn, symbolic_reshape(v, (n, Nk, dv))).view(*batch, Nq, dv)
