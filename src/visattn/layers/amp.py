"""bf16 autocast on CPUs without native bf16: matmuls and convolutions run in fp32 on the bf16 values.

CPU autocast casts the operands of matmuls and convolutions to bf16. Where oneDNN has no bf16 kernels (a CPU without
AVX-512 or AMX, e.g. an AVX2-only AMD EPYC; ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is False), ATen runs
them in its portable bf16 kernels, which convert element by element; grouped (depthwise) convolutions become one
im2col GEMM per channel. Measured at 1 thread under the AVX2 caps (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2``): a 512^3 bf16 matmul at 1.9 GFLOP/s against 86 in fp32, a
(196, 256) x (256, 1024) product in 4.6-50 ms by operand layout against 1.1 ms in fp32, and a maxvit_tiny
bf16-autocast training step (batch 2) in 25.7 s against 2.8 s in fp32.

Where that is so, :func:`amp_linear`, :func:`amp_conv2d`, :func:`amp_matmul` and
:func:`visattn.layers.attend.attend` compute in fp32 on the operands rounded to bf16 exactly as autocast rounds
them, and round the result to bf16: every later op sees autocast's dtypes, and the values are autocast's too, since
the portable kernels also accumulate bf16 products in fp32 (the two agree bit for bit on 99.97% of the elements of a
196 x 1024 x 256 product; the rest differ by summation order). Backward does the same from the bf16 operands that
autocast would keep (the fused attention path excepted: it keeps fp32 copies, as PyTorch's math fallback does).
The maxvit_tiny step above: 3.7 s. Nothing changes in fp32, where oneDNN has bf16 kernels (AVX-512 or AMX), on
other devices, or while tracing / compiling / exporting.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx._symbolic_trace import is_fx_symbolic_tracing
from torch.nn.modules.utils import _pair

__all__ = ["amp_conv2d", "amp_linear", "amp_matmul", "fp32_gemms", "use_fp32_gemms"]

_FORCED: bool | None = None


@functools.cache
def _onednn_bf16() -> bool:
    # the check ATen itself makes before sending a bf16 matmul or convolution to oneDNN (it honours
    # ONEDNN_MAX_CPU_ISA, so the AVX2 caps reproduce an AVX2-only CPU)
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def use_fp32_gemms(enabled: bool | None) -> Iterator[None]:
    """Force (True) or forbid (False) the fp32 path under CPU bf16 autocast inside the block; None: where oneDNN has
    no bf16 (the default). For tests and benchmarks on CPUs that have it."""
    global _FORCED
    previous, _FORCED = _FORCED, enabled
    try:
        yield
    finally:
        _FORCED = previous


def fp32_gemms(x: Tensor) -> bool:
    """True where a matmul or convolution on ``x`` should take the fp32 path: CPU bf16 autocast on a CPU (or a torch
    configuration) without oneDNN bf16, eager mode."""
    if not torch.is_autocast_enabled("cpu"):  # first: the common case costs one call
        return False
    if torch.get_autocast_dtype("cpu") != torch.bfloat16 or isinstance(x, torch.fx.Proxy) or x.device.type != "cpu":
        return False
    if (torch.compiler.is_compiling() or torch.compiler.is_exporting() or torch.jit.is_tracing()
            or torch.jit.is_scripting() or is_fx_symbolic_tracing()):
        return False
    if _FORCED is not None:
        return _FORCED
    return not (torch.backends.mkldnn.enabled and _onednn_bf16())


def _bf16(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to(torch.bfloat16)


class _Linear(torch.autograd.Function):
    """``F.linear`` of bf16 operands computed in fp32, result and gradients rounded to bf16."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        with torch.autocast("cpu", enabled=False):
            out = F.linear(x.float(), weight.float(), None if bias is None else bias.float())
        return out.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        gx = gw = gb = None
        with torch.autocast("cpu", enabled=False):
            g = grad.float()
            if need_x:
                gx = (g @ weight.float()).to(torch.bfloat16)            # (..., in)
            g2 = g.reshape(-1, g.shape[-1])                             # (M, out)
            if need_w:
                gw = (g2.t() @ x.reshape(-1, x.shape[-1]).float()).to(torch.bfloat16)  # (out, in)
            if need_b:
                gb = g2.sum(0).to(torch.bfloat16)                       # (out,)
        return gx, gw, gb


class _Matmul(torch.autograd.Function):
    """``a @ b`` of bf16 operands (at least 2-D) computed in fp32, result and gradients rounded to bf16."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        with torch.autocast("cpu", enabled=False):
            return torch.matmul(a.float(), b.float()).to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        a, b = ctx.saved_tensors
        ga = gb = None
        with torch.autocast("cpu", enabled=False):
            g = grad.float()
            if ctx.needs_input_grad[0]:  # summed over any batch dimensions a was broadcast along
                ga = (g @ b.float().transpose(-2, -1)).sum_to_size(a.shape).to(torch.bfloat16)
            if ctx.needs_input_grad[1]:
                gb = (a.float().transpose(-2, -1) @ g).sum_to_size(b.shape).to(torch.bfloat16)
        return ga, gb


class _Conv2d(torch.autograd.Function):
    """``F.conv2d`` of bf16 operands computed in fp32, result and gradients rounded to bf16."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
                padding: tuple[int, int], dilation: tuple[int, int], groups: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.args = (stride, padding, dilation, groups)
        with torch.autocast("cpu", enabled=False):
            out = F.conv2d(x.float(), weight.float(), None if bias is None else bias.float(), stride, padding,
                           dilation, groups)
        return out.to(torch.bfloat16)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.args
        mask = list(ctx.needs_input_grad[:3])
        with torch.autocast("cpu", enabled=False):
            grads = torch.ops.aten.convolution_backward(
                grad.float(), x.float(), weight.float(), [weight.shape[0]] if mask[2] else None, list(stride),
                list(padding), list(dilation), False, [0, 0], groups, mask)
        gx, gw, gb = (None if g is None else g.to(torch.bfloat16) for g in grads)
        return gx, gw, gb, None, None, None, None


def amp_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``; in fp32 on bf16-rounded operands where :func:`fp32_gemms` says so."""
    if not fp32_gemms(x):
        return F.linear(x, weight, bias)
    return _Linear.apply(_bf16(x), _bf16(weight), _bf16(bias))


def amp_matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for operands of at least 2 dimensions; in fp32 on bf16-rounded operands where :func:`fp32_gemms`
    says so."""
    if not fp32_gemms(a):
        return a @ b
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"amp_matmul expects operands of at least 2 dimensions, got shapes {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return _Matmul.apply(_bf16(a), _bf16(b))


def amp_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: int | tuple[int, int] = 1,
               padding: int | tuple[int, int] = 0, dilation: int | tuple[int, int] = 1, groups: int = 1) -> Tensor:
    """``F.conv2d`` with numeric padding; in fp32 on bf16-rounded operands where :func:`fp32_gemms` says so."""
    if not fp32_gemms(x):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    return _Conv2d.apply(_bf16(x), _bf16(weight), _bf16(bias), _pair(stride), _pair(padding), _pair(dilation),
                         groups)
