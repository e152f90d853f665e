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
from visattn.layers.model import TASKS, VisionModel, example_size
from visattn.registry import config_from_dict, config_to_dict, get_model_class, list_families, reference_params

ALL = visattn.list_models()


FAMILIES = list_families()                   # one representative variant per model class
# Backbone/head tests apply to classifiers (the contract's ``task``).
CLASSIFIERS = [n for n in FAMILIES if get_model_class(n).task == "classification"]


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


def _output_shape(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    if hasattr(model, "output_shape"):
        return tuple(model.output_shape(tuple(x.shape)))
    return (x.shape[0], model.config.num_classes)


@pytest.mark.parametrize("name", ALL)
def test_param_count_matches_reference(name: str) -> None:
    expected = reference_params(name)
    assert expected is not None, f"{name}: no REFERENCE_PARAMS entry in its model file"
    with torch.device("meta"):
        model = visattn.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_families_are_the_first_name_of_every_model_class() -> None:
    classes = [get_model_class(n) for n in FAMILIES]
    assert len(set(classes)) == len(classes) == len({get_model_class(n) for n in ALL}) > 1
    assert FAMILIES == sorted(FAMILIES)
    assert all(ALL.index(n) == min(i for i, m in enumerate(ALL) if get_model_class(m) is c)
               for n, c in zip(FAMILIES, classes))


@pytest.mark.parametrize("name", ALL)
def test_config_json_round_trip(name: str) -> None:
    with torch.device("meta"):
        model = visattn.create_model(name)
    text = json.dumps(config_to_dict(model.config))
    assert config_from_dict(type(model), text) == model.config


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward_every_param_gets_grad(name: str) -> None:
    model = _small(name).train()
    inputs = model.example_inputs()
    out = model(*inputs)
    assert tuple(out.shape) == _output_shape(model, inputs[0])
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not no_grad, f"parameters without gradient: {no_grad[:10]}"


@pytest.mark.parametrize("name", FAMILIES)
def test_batch_independence(name: str) -> None:
    # A partition or padding bug that mixes samples shows up as one sample's output depending on another's input.
    model = _small(name).eval()
    inputs = model.example_inputs(3)
    with torch.no_grad():
        full = model(*inputs)
        alone = model(*(t[1:2] for t in inputs))
        x2 = inputs[0].clone()
        x2[0] = torch.randn_like(x2[0])
        changed = model(x2, *inputs[1:])
    torch.testing.assert_close(full[1:2], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full[1:], changed[1:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", FAMILIES)
def test_fused_and_reference_attention_agree(name: str) -> None:
    model = _small(name, random_bias=True).eval()
    inputs = model.example_inputs()
    with torch.no_grad():
        with use_fused(True):
            fused = model(*inputs)
        with use_fused(False):
            reference = model(*inputs)
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
    (x,) = full.example_inputs()
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
    (x,) = model.example_inputs()
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
    inputs = model.example_inputs()
    model(*inputs).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(*inputs).sum().backward()
    for n, p in model.named_parameters():
        # float32 summation noise grows with a gradient's magnitude (the stem of the 101-layer ResNet reaches ~60,
        # off by 2.7e-5 = 5e-7 of it): the absolute tolerance scales with the tensor
        scale = max(1.0, float(grads[n].abs().max()))
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5 * scale, rtol=1e-4, msg=n)


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_input_raises_clear_value_error(name: str) -> None:
    model = _small(name).eval()
    x, *rest = model.example_inputs(1)
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
            model(bad, *rest)
        with pytest.raises(ValueError, match=expected_text):
            model.check_input(bad)
    model.check_input(x)


@pytest.mark.parametrize("name", FAMILIES)
def test_load_pretrained_round_trip_and_mismatch(name: str, tmp_path) -> None:
    from safetensors.torch import save_file

    src = _small(name).eval()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = _small(name).eval()
    assert visattn.load_pretrained(dst, path) == ([], [])
    inputs = src.example_inputs()
    with torch.no_grad():
        torch.testing.assert_close(dst(*inputs), src(*inputs))
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


@pytest.mark.parametrize("name", FAMILIES)
def test_compile_fullgraph_matches_eager(name: str) -> None:
    # fullgraph=True fails on any graph break. Backend "eager" runs the traced graph with no code generation (fast,
    # no C++ compiler); inductor itself is covered by a slow test. Eager inference takes the oneDNN fast paths of
    # layers/fused.py, the traced graph the plain ops: random biases make a difference between the two visible.
    torch._dynamo.reset()  # a fresh cache: shared forward code (ClassifierBackbone) would hit the recompile limit
    model = _small(name, random_bias=True).eval()
    inputs = model.example_inputs()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = model(*inputs)
        got = compiled(*inputs)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # tracing forward + backward: 11-27 s a family, measured on 2 cores shared at load ~3
@pytest.mark.parametrize("name", FAMILIES)
def test_compile_fullgraph_training_matches_eager(name: str) -> None:
    # Training mode through AOTAutograd ("aot_eager": the joint forward/backward graph, run op by op): same outputs
    # and parameter gradients as eager. Seeded alike, so drop path draws the same masks in both runs.
    torch._dynamo.reset()
    model = _small(name).train()
    inputs = model.example_inputs()
    torch.manual_seed(0)
    expected = model(*inputs)
    expected.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)
    got = compiled(*inputs)
    got.square().mean().backward()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    for n, p in model.named_parameters():
        # float32 summation noise grows with a gradient's magnitude (the stem of the 101-layer ResNet reaches ~60,
        # off by 2.7e-5 = 5e-7 of it): the absolute tolerance scales with the tensor
        scale = max(1.0, float(grads[n].abs().max()))
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5 * scale, rtol=1e-4, msg=n)


# --- the model contract (visattn.layers.model.VisionModel) -------------------------------------------------------

@pytest.mark.parametrize("name", FAMILIES)
def test_model_contract_and_example_inputs(name: str) -> None:
    cls = get_model_class(name)
    assert issubclass(cls, VisionModel) and cls.task in TASKS and cls.input_ndim in (4, 5)
    assert (cls.min_input_frames is not None) == (cls.input_ndim == 5)
    with torch.device("meta"):
        meta = visattn.create_model(name)
    inputs = meta.example_inputs(3)                                    # follows the parameters: meta tensors
    assert len(inputs) == len(cls.input_names) and all(t.device.type == "meta" for t in inputs)
    x = inputs[0]
    assert x.dtype == torch.float32 and all(t.shape[0] == 3 for t in inputs)
    size = example_size(cls.min_input_size)
    frames = (meta.num_frames,) if cls.input_ndim == 5 else ()         # video: the config's frame count
    assert tuple(x.shape) == (3, meta.config.in_chans, *frames, *size)
    assert size[0] != size[1] and all(s % 2 for s in size)

    model = _small(name).eval()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first = model.example_inputs(1, 40, dtype=torch.float64, generator=g1)
    second = model.example_inputs(1, (40, 40), dtype=torch.float64, generator=g2)
    assert all(torch.equal(a, b) and a.dtype == torch.float64 for a, b in zip(first, second))
    assert first[0].shape[-2:] == (40, 40)
    with pytest.raises(ValueError, match=str(cls.min_input_size)):
        model.example_inputs(1, cls.min_input_size - 1)
    with pytest.raises(ValueError, match="batch"):
        model.example_inputs(0)
    if cls.input_ndim == 5:
        assert model.example_inputs(1, frames=cls.min_input_frames)[0].shape[2] == cls.min_input_frames
        with pytest.raises(ValueError, match="frames"):
            model.example_inputs(1, frames=cls.min_input_frames - 1)
    else:
        with pytest.raises(ValueError, match="frames"):
            model.example_inputs(1, frames=4)
    if cls.task == "fewshot":                                          # query, support (B, K, ...), binary masks
        _, support, mask = model.example_inputs(2, shots=3, support_size=(33, 41))
        assert support.shape == (2, 3, model.config.in_chans, 33, 41) and mask.shape == (2, 3, 33, 41)
        assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.flatten(2).amax(-1).min() == 1
    with torch.no_grad():
        model(*model.example_inputs(1))


def test_register_models_refuses_a_class_without_the_contract() -> None:
    from visattn.registry import register_models

    @dataclasses.dataclass(frozen=True)
    class Config:
        in_chans: int = 3

    class NotAModel(torch.nn.Module):
        pass

    class NoTask(VisionModel):
        config_class = Config
        min_input_size = 8

    class BadTask(NoTask):
        task = "detection"

    class VideoWithoutFrames(NoTask):
        task = "classification"
        input_ndim = 5

    with pytest.raises(TypeError, match="VisionModel"):
        register_models(NotAModel, {"contract_test_a": Config()})
    with pytest.raises(TypeError, match="task"):
        register_models(NoTask, {"contract_test_b": Config()})
    with pytest.raises(ValueError, match="classification"):
        register_models(BadTask, {"contract_test_c": Config()})
    with pytest.raises(ValueError, match="min_input_frames"):
        register_models(VideoWithoutFrames, {"contract_test_d": Config()})
    assert not visattn.list_models("contract_test_*")


def test_library_code_reads_no_test_attributes() -> None:
    # The generic tests' hooks on model classes (test_overrides, ...) are for tests: library code asks the contract
    # instead. A read is an attribute access ``.test_x`` or the string "test_x" (getattr / hasattr) of such a name.
    import io
    import tokenize
    from pathlib import Path

    hooks = {a for n in FAMILIES for c in get_model_class(n).__mro__ for a in vars(c) if a.startswith("test_")}
    assert "test_overrides" in hooks
    src = Path(visattn.__file__).parent
    reads = []
    for path in sorted(src.rglob("*.py")):
        tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
        for prev, tok in zip(tokens, tokens[1:]):
            attribute = tok.type == tokenize.NAME and tok.string in hooks and prev.string == "."
            by_name = tok.type == tokenize.STRING and tok.string.strip("\"'") in hooks
            if attribute or by_name:
                reads.append(f"{path.relative_to(src)}:{tok.start[0]}: {tok.string}")
    assert not reads, reads
