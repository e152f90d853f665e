"""timm's model API on every image classifier (reduced configs), with timm's meanings."""

from __future__ import annotations

import re

import pytest
import torch
import torch.fx

import visattn
from visattn.layers.checks import check_image
from visattn.registry import get_model_class

CLASSIFIERS = []
for _name in visattn.list_models():
    _cls = get_model_class(_name)
    if getattr(_cls, "task", "classification") == "classification" and _cls not in [get_model_class(n)
                                                                                    for n in CLASSIFIERS]:
        CLASSIFIERS.append(_name)


def _small(name: str) -> torch.nn.Module:
    return visattn.create_model(name, **get_model_class(name).test_overrides).eval()


def _input(model: torch.nn.Module) -> torch.Tensor:
    return model.example_inputs(2, 64)[0]                              # video: the config's frame count


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_timm_attributes(name: str) -> None:
    model = _small(name)
    cfg = model.pretrained_cfg
    assert model.default_cfg == cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "num_classes", "pool_size", "first_conv",
                "classifier"):
        assert key in cfg, key
    modules = dict(model.named_modules())
    assert isinstance(modules[cfg["first_conv"]], (torch.nn.Conv2d, torch.nn.Conv3d))
    assert modules[cfg["classifier"]] is model.get_classifier()
    assert model.num_classes == cfg["num_classes"] == model.config.num_classes
    assert model.get_classifier().in_features == model.head_hidden_size
    x = _input(model)
    with torch.no_grad():
        assert tuple(model.forward_features(x).shape[-2:]) == tuple(
            -(-s // model.feature_info[-1]["reduction"]) for s in x.shape[-2:])
    # no_weight_decay names real parameters; group_matcher covers every parameter, stem before blocks
    params = dict(model.named_parameters())
    assert model.no_weight_decay() <= set(params)
    for coarse in (True, False):
        matcher = model.group_matcher(coarse=coarse)
        blocks = [re.compile(p) for p, _ in matcher["blocks"]]
        for n in params:
            if n.startswith("head."):
                continue
            assert re.match(matcher["stem"], n) or any(b.match(n) for b in blocks), (coarse, n)
    # reset_classifier(0, '') gives unpooled features, as timm
    model.reset_classifier(0, "")
    assert model.global_pool == ""
    with torch.no_grad():
        out = model(x)
    assert out.ndim >= 3
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(0, "max")


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_intermediates_output_fmt(name: str) -> None:
    model = _small(name)
    x = _input(model)
    with torch.no_grad():
        nchw = model.forward_intermediates(x, norm=True, intermediates_only=True)
        if model.input_ndim == 4:
            nhwc = model.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
            assert all(torch.equal(a.permute(0, 2, 3, 1), b) for a, b in zip(nchw, nhwc))
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


def test_set_input_size_resizes_tables_and_cfg() -> None:
    model = _small("maxvit_tiny")
    model.set_input_size(img_size=96, window_size=6)
    assert model.config.partition_size == 6 and model.pretrained_cfg["input_size"] == (3, 96, 96)
    assert model.pretrained_cfg["pool_size"] == (3, 3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, model.num_classes)
    mvit = _small("mvitv2_tiny")
    mvit.set_input_size(img_size=(96, 96))
    assert mvit.config.img_size == (96, 96)
    with pytest.raises(ValueError, match="window size"):
        _small("cloformer_xxs").set_input_size(window_size=4)


def test_pretrained_cfg_follows_the_tag() -> None:
    with torch.device("meta"):
        cfg = visattn.create_model("maxvit_tiny_tf_384.in1k").pretrained_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["pool_size"] == (12, 12) and cfg["crop_mode"] == "squash"
    assert cfg["hf_hub_id"] == "timm/maxvit_tiny_tf_384.in1k" and cfg["first_conv"] == "stem.conv1"
    features = visattn.create_model("davit_tiny", features_only=True, **get_model_class("davit_tiny").test_overrides)
    assert features.pretrained_cfg["tag"] == "msft_in1k" and features.default_cfg["crop_pct"] == 0.95


def test_input_check_is_skipped_while_fx_tracing() -> None:
    class Checked(torch.nn.Module):
        def forward(self, x):
            check_image(x, 3, who="Checked")
            return x * 2

    graph = torch.fx.symbolic_trace(Checked())
    assert torch.equal(graph(torch.ones(1, 3, 4, 4)), torch.full((1, 3, 4, 4), 2.0))
    with pytest.raises(ValueError, match="3 input channels"):
        Checked()(torch.ones(1, 2, 4, 4))


def _odd_input(model: torch.nn.Module) -> torch.Tensor:
    # another size than _input's: odd, non-square, not a multiple of any window, patch or stride
    m = type(model).min_input_size
    if type(model).input_ndim == 5:
        return torch.randn(1, model.config.in_chans, 3, m + 3, 2 * m - 5)
    return torch.randn(1, model.config.in_chans, m + 3, 2 * m - 5)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fx_symbolic_trace_matches_eager_at_any_size(name: str) -> None:
    # torch.fx symbolic tracing (torchvision's create_feature_extractor, FX quantization) sees sizes as proxies: every
    # size-dependent branch takes its general path (pad / mask / crop by amounts that may be zero), so one graph
    # serves every input size, including sizes that need padding when the graph was traced without any input.
    model = _small(name)
    graph = torch.fx.symbolic_trace(model)
    assert isinstance(graph, torch.fx.GraphModule)
    for x in (_input(model), _odd_input(model)):
        with torch.no_grad():
            expected = model(x)
            got = graph(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the graph recorded no inference-only fast path: it trains
    graph.train()
    graph(_input(model)).sum().backward()
    assert all(p.grad is not None for p in graph.parameters() if p.requires_grad)
