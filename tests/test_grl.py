"""GRL model: parity with the official code (golden files), official checkpoint keys, counts of task settings."""

from __future__ import annotations

import json

import pytest
import torch

import visattn
from visattn.models.grl import GRL, remap_state_dict

from .conftest import GOLDEN
from .test_golden import golden_model_cases

GOLDEN_CASES = ["grl_sr2_cab", "grl_sr3_direct_groups", "grl_denoise_gray"]
MANIFESTS = ["grl_tiny", "grl_small_x2", "grl_base", "grl_base_denoise"]


def test_golden_cases_are_checked_by_the_generic_parity_test() -> None:
    # tests/test_golden.py loads the official keys (through remap_state_dict) and compares the outputs.
    assert set(GOLDEN_CASES) <= set(golden_model_cases())


@pytest.mark.parametrize("name", MANIFESTS)
@pytest.mark.parametrize("lightning", [False, True])
def test_official_checkpoint_keys_load(name: str, lightning: bool) -> None:
    # The official network's state dict (buffers included), bare or as its Lightning engine saves it ("model."
    # prefix next to bookkeeping entries), maps onto the full-size visattn model exactly: same keys, same shapes.
    manifest = json.loads((GOLDEN / f"grl_manifest_{name}.json").read_text())
    shapes = manifest["shapes"]
    with torch.device("meta"):
        model = visattn.create_model(name)
        state = {k: torch.empty(v) for k, v in shapes.items()}
    if lightning:
        state = {f"model.{k}": v for k, v in state.items()}
        state.update(current_val_metric=torch.empty(()), best_val_metric=torch.empty(()), best_iter=torch.empty(()))
    mapped = remap_state_dict(state, model)
    own = model.state_dict()
    assert sorted(mapped) == sorted(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    assert sum(p.numel() for p in model.parameters()) == manifest["meta"]["params"]


def test_remap_is_identity_on_visattn_keys() -> None:
    model = visattn.create_model("grl_tiny", **GRL.test_overrides)
    state = model.state_dict()
    assert remap_state_dict(state, model).keys() == state.keys()


# Official parameter counts of task settings that are not registered variants (counted in the reference
# environment with the official GRL class): x3 super-resolution and grayscale denoising.
EXTRA_COUNTS = {
    ("grl_tiny", (("upscale", 3),)): 894_075,
    ("grl_small", (("upscale", 3),)): 3_524_643,
    ("grl_base", (("upscale", 3),)): 20_238_227,
    ("grl_tiny_denoise", (("in_chans", 1),)): 877_921,
    ("grl_small_denoise", (("in_chans", 1),)): 3_115_617,
    ("grl_base_denoise", (("in_chans", 1),)): 19_798_781,
}


@pytest.mark.parametrize("name,overrides", sorted(EXTRA_COUNTS))
def test_task_setting_param_counts(name: str, overrides: tuple) -> None:
    with torch.device("meta"):
        model = visattn.create_model(name, **dict(overrides))
    assert sum(p.numel() for p in model.parameters()) == EXTRA_COUNTS[(name, overrides)]


@pytest.mark.parametrize("overrides", [
    dict(upscale=3, upsampler="pixelshuffledirect"),
    dict(upscale=1, in_chans=1),
    dict(upscale=4, upsampler="pixelshuffle", local_connection=False),
])
def test_heads_and_any_size(overrides: dict) -> None:
    small = {**GRL.test_overrides, "local_connection": True, **overrides}
    model = visattn.create_model("grl_tiny", **small).eval()
    c, s = model.config.in_chans, model.config.upscale
    for size in [(8, 8), (9, 21), (17, 10)]:
        x = torch.rand(1, c, *size)
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, c, size[0] * s, size[1] * s)
        assert torch.isfinite(out).all()


def test_denoising_head_starts_near_identity() -> None:
    # The denoising head adds a conv of the features to the input: a fresh model's output stays close to its input.
    model = visattn.create_model("grl_tiny", **{**GRL.test_overrides, "upscale": 1}).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert (model(x) - x).abs().mean() < 0.5


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="upscale 5"):
        visattn.create_model("grl_small", upscale=5)
    with pytest.raises(ValueError, match="upsampler"):
        visattn.create_model("grl_tiny", upsampler="nearest")
    with pytest.raises(ValueError, match="embed_dim"):
        visattn.create_model("grl_tiny", **{**GRL.test_overrides, "embed_dim": 32})
