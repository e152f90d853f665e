"""bfloat16 / float16 weights (``model.to(dtype)``, not autocast): every registered model and attention module.

The low-precision output must have the weights' dtype, the fp32 output's shape, be finite and be close to the fp32
output: relative error ||out - ref|| / ||ref|| below 5e-2 for bfloat16 (8 mantissa bits: ~4e-3 per rounding, a few
dozen roundings deep) and 1e-2 for float16 (11 bits). Measured on these configs: at most 0.019 (bf16) / 0.0016 (fp16).
Both dtypes run on the CPU: every op these models use has a CPU float16 kernel in torch 2.13.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import visattn
from visattn.layers.amp import amp_conv2d, amp_linear, use_fp32_gemms
from visattn.layers.attend import attend
from visattn.registry import get_attention_class, get_model_class, list_families

TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2}
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm().clamp_min(1e-12))


def _check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert out.dtype == dtype, f"{what}: output {out.dtype}, weights {dtype}"
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)}, fp32 gives {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite output"
    err = _relative_error(out, ref)
    assert err < TOLERANCE[dtype], f"{what}: relative error {err:.3g} >= {TOLERANCE[dtype]}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list_families())
def test_model_low_precision_weights(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = visattn.create_model(name, **get_model_class(name).test_overrides).eval()
    inputs = dict(zip(model.input_names, model.example_inputs(batch=2)))
    with torch.no_grad():
        ref = model(**inputs)
        model.to(dtype)
        out = model(**{k: v.to(dtype) for k, v in inputs.items()})
    _check(out, ref, dtype, name)


@pytest.mark.parametrize("name", list_families())
def test_model_bf16_weights_backward(name: str) -> None:
    torch.manual_seed(0)
    model = visattn.create_model(name, **get_model_class(name).test_overrides).to(torch.bfloat16).train()
    inputs = {k: v.to(torch.bfloat16) for k, v in dict(zip(model.input_names, model.example_inputs(batch=2))).items()}
    model(**inputs).float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", visattn.list_attention())
def test_attention_low_precision_weights(name: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cls = get_attention_class(name)
    kwargs = cls.example_kwargs()
    module = visattn.create_attention(name, **kwargs).eval()
    shape_fn = getattr(cls, "example_input_shape", None)
    x = torch.randn(*(shape_fn() if shape_fn is not None else (2, kwargs["dim"], 13, 21)))  # 13 x 21: padded
    with torch.no_grad():
        ref = module(x)
        out = module.to(dtype)(x.to(dtype))
    _check(out, ref, dtype, name)


# --- bf16 autocast where bf16 is emulated: matmuls and convolutions in fp32 (visattn.layers.amp) --------------------

def _autocast_step(fn, forced: bool | None, *tensors: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output of ``fn(*tensors)`` under CPU bf16 autocast (None: no autocast) and the gradients of its squared mean."""
    leaves = [t.detach().requires_grad_() for t in tensors]
    with use_fp32_gemms(bool(forced)), torch.autocast("cpu", dtype=torch.bfloat16, enabled=forced is not None):
        out = fn(*leaves)
    out.float().square().mean().backward()
    return out.detach(), [t.grad for t in leaves]


def _conv_cases() -> list:
    dw = torch.randn(16, 1, 3, 3)
    return [
        pytest.param(lambda x, w, b: amp_linear(x, w, b), (torch.randn(2, 5, 7, 24), torch.randn(40, 24),
                                                              torch.randn(40)), id="linear-4d"),
        pytest.param(lambda x, w: amp_linear(x, w), (torch.randn(30, 24), torch.randn(40, 24)), id="linear-nobias"),
        pytest.param(lambda x, w: amp_conv2d(x, w, None, 2, 1, 1, 16),
                     (torch.randn(2, 16, 13, 11).contiguous(memory_format=torch.channels_last), dw), id="depthwise-s2"),
        pytest.param(lambda x, w, b: amp_conv2d(x, w, b, 1, (1, 0)), (torch.randn(2, 8, 9, 10), torch.randn(12, 8, 3, 3),
                                                                      torch.randn(12)), id="conv3x3-bias"),
        pytest.param(lambda q, k, v, bias: attend(q, k, v, bias=bias), (torch.randn(3, 2, 16, 8), torch.randn(3, 2, 16, 8),
                                                                        torch.randn(3, 2, 16, 8), torch.randn(2, 16, 16)),
                     id="attend-trainable-bias"),
    ]


@pytest.mark.parametrize("fn,tensors", _conv_cases())
def test_fp32_gemms_single_op_matches_bf16_autocast(fn, tensors: tuple[torch.Tensor, ...]) -> None:
    # One op: the two paths multiply the same bf16 values and both accumulate in fp32, so they differ by summation
    # order and by the rounding of intermediate results (the attention's logits and probabilities) only.
    out_bf16, grads_bf16 = _autocast_step(fn, False, *tensors)
    out_fp32, grads_fp32 = _autocast_step(fn, True, *tensors)
    assert out_fp32.dtype == out_bf16.dtype == torch.bfloat16
    assert _relative_error(out_fp32, out_bf16.float()) < 1e-2
    for g_fp32, g_bf16, t in zip(grads_fp32, grads_bf16, tensors):
        assert g_fp32.dtype == g_bf16.dtype == t.dtype and g_fp32.shape == t.shape
        assert _relative_error(g_fp32, g_bf16.float()) < 2e-2


def test_fp32_gemms_maxvit_matches_fp32_as_bf16_does() -> None:
    # Whole model, forward and backward: the fp32 path keeps autocast's dtypes and stays as close to the fp32 model as
    # the bf16 path does. Relative errors against fp32 over six seeds: output 0.015-0.033 (bf16 path 0.017-0.034),
    # gradients 0.037-0.067 (bf16 path 0.038-0.073); a wrong gradient formula gives errors near 1. MaxViT is the family
    # whose every matmul and convolution takes the path (below).
    model = visattn.create_model("maxvit_tiny", **get_model_class("maxvit_tiny").test_overrides).train()
    x = model.example_inputs(batch=2)[0]
    results = {}
    for forced in (None, True):
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        out, _ = _autocast_step(model, forced, x)
        results[forced] = out, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    (out_ref, grad_ref), (out, grad) = results[None], results[True]
    assert out.dtype == torch.bfloat16
    assert _relative_error(out, out_ref) < TOLERANCE[torch.bfloat16]
    assert _relative_error(grad, grad_ref) < 0.15


class _Bf16Gemms(TorchDispatchMode):
    """Records the matmul / convolution ops that receive a bf16 operand."""

    OPS = ("mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward")

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if (name in self.OPS or "scaled_dot_product" in name) and any(
                isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args):
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_fp32_gemms_cover_maxvit_features() -> None:
    # Every matmul and convolution of MaxViT's body (MBConv, SE, both attentions, the FFNs), forward and backward,
    # takes the fp32 path; only the classifier head (a few thousand MACs per image) is left to autocast.
    model = visattn.create_model("maxvit_tiny", **get_model_class("maxvit_tiny").test_overrides).train()
    x = model.example_inputs(batch=2)[0]
    mode = _Bf16Gemms()
    with mode:
        out, _ = _autocast_step(model.forward_features, True, x)
    assert out.dtype == torch.bfloat16
    assert not mode.seen, f"bf16 matmuls / convolutions left: {sorted(set(mode.seen))}"
    with mode:
        _autocast_step(model.forward_features, False, x)
    assert mode.seen  # the recorder sees the bf16 path's ops


def test_video_pooling_weight_gradients_under_bf16_autocast_follow_fp32() -> None:
    """The pooling convs' weight gradients of a 3-D pooling attention on small maps, bf16 autocast vs fp32 (oneDNN's
    native bf16 depthwise Conv3d backward got them wrong for channels-last inputs: relative error ~1.1)."""
    cls = get_attention_class("pooling")
    for T, S in ((2, 2), (2, 4)):
        torch.manual_seed(0)
        attn = cls(32, 32, num_heads=2, spatial_dims=3, stride_q=(1, 2, 2), stride_kv=(1, 2, 2), rel_pos_size=(T, S, S))
        x = torch.randn(2, 32, T, S, S)
        grads = []
        for bf16 in (False, True):
            attn.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                y = attn(x)
            y.float().square().mean().backward()
            grads.append({n: p.grad.double() for n, p in attn.named_parameters() if n.startswith("pool_")})
        for name, ref in grads[0].items():
            rel = float((grads[1][name] - ref).norm() / ref.norm())
            assert rel < 0.1, (T, S, name, rel)
