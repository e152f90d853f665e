"""Inference fast paths: oneDNN matmuls and convolutions with the activation or the residual add fused in.

On CPU a separate activation pass costs as much as the matmul before it: MaxViT's tanh GELU alone took ~19% of a
forward pass, and every fresh full-size activation tensor is another round of page faults. oneDNN (the kernels behind
PyTorch's CPU convolutions, exposed as ``torch.ops.mkldnn._linear_pointwise`` / ``_convolution_pointwise``, the ops
``torch.compile`` itself emits on CPU) applies GELU, SiLU or a residual add in the matmul's epilogue while the tile is
still in cache. Measured at 1 thread: (4, 56, 56, 64) -> 256 linear + tanh GELU 23.3 ms -> 6.9 ms; depthwise 3x3 +
tanh GELU on (4, 256, 56, 56) 21.4 ms -> 11.2 ms.

Every helper here computes exactly ``act(layer(x))`` / ``residual + layer(x)`` (to float rounding). The fused kernels
are used only where they cannot change semantics: fp32 CPU tensors, no autograd (``torch.no_grad`` /
``inference_mode``), the module in eval mode, no autocast, not while exporting (``torch.export`` and ONNX see the
plain ops: an exported graph must not depend on this build's oneDNN), and only while
:func:`visattn.layers.attend.use_fused` is on, so the generic fused-vs-reference test compares the two paths.

``torch.compile`` keeps them (as the custom ops ``visattn::linear_pointwise`` / ``visattn::linear_add``): without them
inductor's CPU code ran maxvit_tiny slower than this eager path (0.65-0.75x measured; its own matmuls are plain
``addmm`` plus separate epilogue kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from .amp import amp_linear, fp32_gemms
from .attend import fused_enabled

__all__ = ["fast_inference", "linear", "linear_act", "linear_add", "conv_act", "act_inplace"]

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _tracing() -> bool:
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or is_fx_symbolic_tracing())


def _exporting() -> bool:
    # torch.fx graphs run later under any grad mode and on any device: they record the plain ops
    return (torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or is_fx_symbolic_tracing())


# The oneDNN ops wrapped as custom ops for torch.compile: opaque calls to inductor (whose own lowering of the mkldnn
# linear op rejects these arguments: "LoweringException: NotImplementedError: Pointwise ... tanh") with the fake
# kernels the tracer needs (oneDNN's binary linear has none). Eager calls the oneDNN ops directly (no wrapper cost).
@torch.library.custom_op("visattn::linear_pointwise", mutates_args=())
def _linear_pointwise(x: Tensor, weight: Tensor, bias: Tensor | None, attr: str, algorithm: str) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, attr, [], algorithm)


@_linear_pointwise.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None, attr: str, algorithm: str) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("visattn::linear_add", mutates_args=())
def _linear_add(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")


@_linear_add.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def fast_inference(x: Tensor, module: nn.Module | None = None) -> bool:
    """True where the fused oneDNN kernels may replace the plain ops for ``x`` (see the module docstring)."""
    return (
        _ONEDNN
        and fused_enabled()
        and not torch.is_grad_enabled()
        and (module is None or not module.training)
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not _exporting()
    )


def _onednn_act(act: nn.Module | None) -> tuple[str, str] | None:
    """(attr, algorithm) of oneDNN's eltwise post-op computing ``act``, or None if it has none."""
    if act is None or isinstance(act, nn.Identity):
        return "none", ""
    if isinstance(act, nn.GELU):
        return "gelu", act.approximate  # "none" (erf) or "tanh"
    if isinstance(act, nn.ReLU):
        return "relu", ""
    if isinstance(act, nn.SiLU):
        return "swish", ""
    return None


def linear(x: Tensor, fc: nn.Linear) -> Tensor:
    """``fc(x)``; oneDNN in inference (its bias epilogue beats addmm's bias copy: 85 vs 72 GFLOP/s at 1 thread), fp32
    under bf16 autocast where bf16 is emulated (:mod:`visattn.layers.amp`)."""
    if fast_inference(x, fc):
        if torch.compiler.is_compiling():
            return _linear_pointwise(x, fc.weight, fc.bias, "none", "")
        return torch.ops.mkldnn._linear_pointwise(x, fc.weight, fc.bias, "none", [], "")
    if fp32_gemms(x):  # bf16 autocast where bf16 is emulated (layers/amp.py)
        return amp_linear(x, fc.weight, fc.bias)
    return fc(x)


def linear_act(x: Tensor, fc: nn.Module, act: nn.Module, *, weight: Tensor | None = None,
               bias: Tensor | None = None) -> Tensor:
    """``act(fc(x))`` over the last dimension, optionally with replacement (e.g. BatchNorm-folded) parameters."""
    if weight is None:  # the layer's own parameters (a 1x1 conv's weight flattened: a new tensor, same bias)
        weight, bias = fc.weight.flatten(1), fc.bias
    post = _onednn_act(act)
    if post is not None and fast_inference(x, fc):
        if torch.compiler.is_compiling():
            return _linear_pointwise(x, weight, bias, post[0], post[1])
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post[0], [], post[1])
    return act_inplace(F.linear(x, weight, bias), act)


def linear_add(x: Tensor, fc: nn.Module, residual: Tensor, *, weight: Tensor | None = None,
               bias: Tensor | None = None) -> Tensor:
    """``residual + fc(x)`` (residual shaped like the output), with the add in the matmul epilogue in inference."""
    if weight is None:  # the layer's own parameters (a 1x1 conv's weight flattened: a new tensor, same bias)
        weight, bias = fc.weight.flatten(1), fc.bias
    if fast_inference(x, fc) and residual.shape[:-1] == x.shape[:-1] and residual.dtype == x.dtype:
        if torch.compiler.is_compiling():
            return _linear_add(x, residual, weight, bias)
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual.contiguous(), weight, bias, "add")
    return residual + F.linear(x, weight, bias)


def conv_act(x: Tensor, conv: nn.Conv2d, act: nn.Module, *, weight: Tensor, bias: Tensor | None,
             padding: tuple[int, int]) -> Tensor:
    """``act(conv2d(x, weight, bias))`` with ``conv``'s stride and groups and explicit symmetric ``padding``."""
    post = _onednn_act(act)
    if post is not None and fast_inference(x, conv):
        return torch.ops.mkldnn._convolution_pointwise(
            x, weight, bias, list(padding), list(conv.stride), list(conv.dilation), conv.groups, post[0], [], post[1]
        )
    return act_inplace(F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups), act)


def act_inplace(x: Tensor, act: nn.Module) -> Tensor:
    """``act(x)``, overwriting ``x`` when autograd is off (one fresh full-size tensor fewer)."""
    if not torch.is_grad_enabled() and not _tracing():
        if isinstance(act, nn.GELU):
            return torch.ops.aten.gelu_(x, approximate=act.approximate)
        if isinstance(act, nn.SiLU):
            return F.silu(x, inplace=True)
        if isinstance(act, nn.ReLU):
            return F.relu_(x)
    return act(x)
