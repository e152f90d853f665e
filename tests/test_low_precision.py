"""bfloat16 / float16 weights (``model.to(dtype)``, not autocast): every registered model and attention module.

The low-precision output must have the weights' dtype, the fp32 output's shape, be finite and be close to the fp32
output: relative error ||out - ref|| / ||ref|| below 5e-2 for bfloat16 (8 mantissa bits: ~4e-3 per rounding, a few
dozen roundings deep) and 1e-2 for float16 (11 bits). Measured on these configs: at most 0.019 (bf16) / 0.0016 (fp16).
Both dtypes run on the CPU: every op these models use has a CPU float16 kernel in torch 2.13.
"""

from __future__ import annotations

import pytest
import torch

import visattn

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
