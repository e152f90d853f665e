"""Generic tests over every registered attention mechanism (the (B, C, H, W) drop-in contract of STYLE.md)."""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.layers.attend import use_fused
from visattn.registry import get_attention_class

ALL = visattn.list_attention()


def _build(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    cls = get_attention_class(name)
    kwargs = cls.example_kwargs()
    module = visattn.create_attention(name, **kwargs)
    shape_fn = getattr(cls, "example_input_shape", None)
    shape = shape_fn() if shape_fn is not None else (2, kwargs["dim"], 13, 21)
    return module, torch.randn(*shape)


def _expected_shape(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    if hasattr(module, "output_shape"):
        return tuple(module.output_shape(tuple(x.shape)))
    return (x.shape[0], getattr(module, "dim_out", None) or module.dim, *x.shape[2:])


def test_registry_is_not_empty() -> None:
    assert "multi_axis" in ALL


@pytest.mark.parametrize("name", ALL)
def test_shape_and_gradients(name: str) -> None:
    module, x = _build(name)
    module.train()
    x.requires_grad_(True)
    out = module(x)
    assert tuple(out.shape) == _expected_shape(module, x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    no_grad = [n for n, p in module.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad}"


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("size", [(1, 1), (7, 7), (16, 9), (30, 17)])
def test_any_spatial_size(name: str, size: tuple[int, int]) -> None:
    module, x = _build(name)
    x = torch.randn(*x.shape[:-2], *size)
    with torch.no_grad():
        out = module.eval()(x)
    assert tuple(out.shape) == _expected_shape(module, x)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_batch_independence(name: str) -> None:
    module, x = _build(name)
    module.eval()
    x = torch.randn(3, *x.shape[1:])
    with torch.no_grad():
        full = module(x)
        x2 = x.clone()
        x2[0] = torch.randn_like(x2[0])
        changed = module(x2)
    torch.testing.assert_close(full[1:], changed[1:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_fused_matches_reference(name: str) -> None:
    module, x = _build(name)
    module.eval()
    with torch.no_grad():
        with use_fused(True):
            fused = module(x)
        with use_fused(False):
            reference = module(x)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ALL)
def test_bad_input(name: str) -> None:
    module, x = _build(name)
    with pytest.raises(ValueError, match=str(x.shape[1])):
        module(torch.randn(x.shape[0], x.shape[1] + 1, *x.shape[2:]))
    with pytest.raises(ValueError, match="-D"):
        module(x[0])
    with pytest.raises(ValueError, match="float"):
        module(x.to(torch.int64))


def test_unknown_attention_suggests() -> None:
    with pytest.raises(ValueError, match="multi_axis"):
        visattn.create_attention("multi_axes", dim=8)
