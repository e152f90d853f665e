"""Generic tests over every registered model: adding a model adds no code here.

Compute tests run one reduced config per family (the class's ``test_overrides``); size-only tests (parameter counts,
config round trip) run every variant on the meta device.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import visattn
from visattn.layers.attend import use_fused
from visattn.registry import config_from_dict, config_to_dict, get_model_class, reference_params

ALL = visattn.list_models()


def _families() -> list[str]:
    # One representative variant per model class (the first name in sorted order).
    seen, out = set(), []
    for name in ALL:
        cls = get_model_class(name)
        if cls not in seen:
            seen.add(cls)
            out.append(name)
    return out


FAMILIES = _families()
# Backbone/head tests apply to classifiers; restoration and few-shot models set ``task`` on their class.
CLASSIFIERS = [n for n in FAMILIES if getattr(get_model_class(n), "task", "classification") == "classification"]


def _small(name: str, *, random_bias: bool = False, **extra) -> torch.nn.Module:
    cls = get_model_class(name)
    model = visattn.create_model(name, **{**cls.test_overrides, **extra})
    if not random_bias:
        return model
    # Most inits zero the biases; random ones make a dropped or misplaced bias visible (fused vs reference). Not used
    # for the gradient test: a one-unit ReLU bottleneck (GRL's channel attention) can be dead with a random bias.
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # Models needing more than the image (few-shot support sets) derive the extra inputs per sample from x.
    extra = getattr(type(model), "test_forward_kwargs", None)
    return model(x, **extra(x)) if extra is not None else model(x)


def _output_shape(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    if hasattr(model, "output_shape"):
        return tuple(model.output_shape(tuple(x.shape)))
    return (x.shape[0], model.config.num_classes)


def _input(model: torch.nn.Module, batch: int = 2) -> torch.Tensor:
    cls = type(model)
    shape = getattr(cls, "test_input_shape", None)
    if shape is None:
        m = cls.min_input_size
        shape = (batch, model.config.in_chans, m + 3, 2 * m - 5)  # odd, non-square, not divisible by anything
    return torch.randn(batch, *shape[1:])


@pytest.mark.parametrize("name", ALL)
def test_param_count_matches_reference(name: str) -> None:
    expected = reference_params(name)
    assert expected is not None, f"{name}: no REFERENCE_PARAMS entry in its model file"
    with torch.device("meta"):
        model = visattn.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize("name", ALL)
def test_config_json_round_trip(name: str) -> None:
    with torch.device("meta"):
        model = visattn.create_model(name)
    text = json.dumps(config_to_dict(model.config))
    assert config_from_dict(type(model), text) == model.config


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward_every_param_gets_grad(name: str) -> None:
    model = _small(name).train()
    x = _input(model)
    out = _run(model, x)
    assert tuple(out.shape) == _output_shape(model, x)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_independence(name: str) -> None:
    # A partition or padding bug that mixes samples shows up as one sample's output depending on another's input.
    model = _small(name).eval()
    x = _input(model, batch=3)
    with torch.no_grad():
        full = _run(model, x)
        alone = _run(model, x[1:2])
        x2 = x.clone()
        x2[0] = torch.randn_like(x2[0])
        changed = _run(model, x2)
    torch.testing.assert_close(full[1:2], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full[1:], changed[1:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_and_reference_attention_agree(name: str) -> None:
    model = _small(name, random_bias=True).eval()
    x = _input(model)
    with torch.no_grad():
        with use_fused(True):
            fused = _run(model, x)
        with use_fused(False):
            reference = _run(model, x)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_features_only_returns_the_stage_maps(name: str) -> None:
    # timm's features_only: the stage maps at out_indices (negative from the end), feature_info describing them, the
    # classifier gone; same weights as the classifier it came from.
    cls = get_model_class(name)
    torch.manual_seed(0)
    full = visattn.create_model(name, **cls.test_overrides).eval()
    torch.manual_seed(0)
    feats_net = visattn.create_model(name, features_only=True, out_indices=(0, -1), **cls.test_overrides).eval()
    x = _input(full)
    with torch.no_grad():
        expected = full.forward_intermediates(x, intermediates_only=True)
        out = feats_net(x)
    n = len(full.feature_info)
    assert feats_net.feature_info.channels() == [full.feature_info[0]["num_chs"], full.feature_info[-1]["num_chs"]]
    assert feats_net.feature_info.reduction() == [full.feature_info[0]["reduction"],
                                                  full.feature_info[-1]["reduction"]]
    assert len(out) == 2
    torch.testing.assert_close(out[0], expected[0])
    torch.testing.assert_close(out[1], expected[n - 1])
    for f, channels, reduction in zip(out, feats_net.feature_info.channels(), feats_net.feature_info.reduction()):
        assert f.shape[1] == channels
        assert f.shape[-1] == -(-x.shape[-1] // reduction)
    assert not any(k.startswith("model.head.") for k in feats_net.state_dict())
    with pytest.raises(ValueError, match="out_indices"):
        visattn.create_model(name, features_only=True, out_indices=(n,), **cls.test_overrides)


def test_features_only_refuses_models_without_stage_features() -> None:
    with pytest.raises(ValueError, match="features_only"):
        visattn.create_model("grl_tiny", features_only=True, **get_model_class("grl_tiny").test_overrides)
    with pytest.raises(ValueError, match="features_only"):
        visattn.create_model("maxvit_tiny", out_indices=(0,))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_backbone_api(name: str) -> None:
    model = _small(name).eval()
    x = _input(model)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        assert len(feats) == len(model.feature_info)
        for f, info in zip(feats, model.feature_info):
            assert f.shape[0] == x.shape[0] and f.shape[1] == info["num_chs"]
            assert f.ndim == x.ndim
        final = model.forward_features(x)
        torch.testing.assert_close(final, feats[-1])
        # timm's return value and selection: (final, list); a count takes the last stages, indices may be negative;
        # stop_early ends at the last selected stage
        last, maps = model.forward_intermediates(x)
        torch.testing.assert_close(last, final)
        n = len(feats)
        _, last_two = model.forward_intermediates(x, 2)
        torch.testing.assert_close(last_two[0], feats[n - 2])
        early, (first,) = model.forward_intermediates(x, [-n], stop_early=True)
        torch.testing.assert_close(early, feats[0])
        torch.testing.assert_close(first, feats[0])
        with pytest.raises(ValueError, match="indices"):
            model.forward_intermediates(x, [n])
        pre = model.forward_head(final, pre_logits=True)
        assert pre.shape == (x.shape[0], model.num_features)
        torch.testing.assert_close(model.forward_head(final), model(x))
    model.reset_classifier(3)
    assert model.config.num_classes == 3
    with torch.no_grad():
        assert model(x).shape == (x.shape[0], 3)
    model.reset_classifier(4, "avg")                                   # timm's (num_classes, global_pool)
    with torch.no_grad():
        assert model(x).shape == (x.shape[0], 4)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(4, "max")


@pytest.mark.parametrize("name", FAMILIES)
def test_grad_checkpointing_matches(name: str) -> None:
    torch.manual_seed(1)
    model = _small(name).eval()  # eval: no dropout / BN updates, so both passes see the same function
    x = _input(model)
    _run(model, x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    _run(model, x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_input_raises_clear_value_error(name: str) -> None:
    model = _small(name).eval()
    x = _input(model, batch=1)
    channels = x.shape[1]
    wrong_channels = torch.randn(1, channels + 1, *x.shape[2:])
    too_small = torch.randn(1, channels, *[2] * (x.ndim - 2))
    cases = {
        "channels": (wrong_channels, str(channels)),
        "ndim": (x[0], "-D"),
        "dtype": (x.to(torch.int64), "float"),
        "too small": (too_small, str(type(model).min_input_size)),
    }
    for what, (bad, expected_text) in cases.items():
        with pytest.raises(ValueError, match=expected_text):
            _run(model, bad) if bad.ndim == x.ndim and bad.is_floating_point() else model(bad)


@pytest.mark.parametrize("name", FAMILIES)
def test_load_pretrained_round_trip_and_mismatch(name: str, tmp_path) -> None:
    from safetensors.torch import save_file

    src = _small(name).eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = _small(name).eval()
    assert visattn.load_pretrained(dst, path) == ([], [])
    x = _input(src)
    with torch.no_grad():
        torch.testing.assert_close(_run(dst, x), _run(src, x))
    state = src.state_dict()
    dropped = next(iter(state))
    del state[dropped]
    with pytest.raises(ValueError, match="missing"):
        visattn.load_pretrained(dst, state)
    other = dict(getattr(type(src), "test_mismatch_overrides", {"num_classes": 5}))
    with pytest.raises(ValueError, match="shape mismatch"):
        visattn.load_pretrained(_small(name, **other), path)


def test_create_model_errors_are_helpful() -> None:
    name = ALL[0]
    with pytest.raises(ValueError, match="Did you mean"):
        visattn.create_model(name + "x")
    config = visattn.registry.get_model_config(name)
    first_field = dataclasses.fields(config)[0].name
    with pytest.raises(ValueError, match=first_field):
        visattn.create_model(name, not_a_field=1)
    with pytest.raises(ValueError, match="checkpoint=PATH"):  # timm's pretrained=True
        visattn.create_model(name, pretrained=True)


def _run_compiled(compiled, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # The compiled wrapper hides the model class, which supplies the extra inputs of few-shot models.
    extra = getattr(type(model), "test_forward_kwargs", None)
    return compiled(x, **extra(x)) if extra is not None else compiled(x)


@pytest.mark.parametrize("name", FAMILIES)
def test_compile_fullgraph_matches_eager(name: str) -> None:
    # fullgraph=True fails on any graph break. Backend "eager" runs the traced graph with no code generation (fast,
    # no C++ compiler); inductor itself is covered by a slow test. Eager inference takes the oneDNN fast paths of
    # layers/fused.py, the traced graph the plain ops: random biases make a difference between the two visible.
    torch._dynamo.reset()  # a fresh cache: shared forward code (ClassifierBackbone) would hit the recompile limit
    model = _small(name, random_bias=True).eval()
    x = _input(model)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = _run(model, x)
        got = _run_compiled(compiled, model, x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # tracing forward + backward: 11-27 s a family, measured on 2 cores shared at load ~3
@pytest.mark.parametrize("name", FAMILIES)
def test_compile_fullgraph_training_matches_eager(name: str) -> None:
    # Training mode through AOTAutograd ("aot_eager": the joint forward/backward graph, run op by op): same outputs
    # and parameter gradients as eager. Seeded alike, so drop path draws the same masks in both runs.
    torch._dynamo.reset()
    model = _small(name).train()
    x = _input(model)
    torch.manual_seed(0)
    expected = _run(model, x)
    expected.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    got = _run_compiled(compiled, model, x)
    got.square().mean().backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4, msg=n)
