"""CloFormer-specific tests: official key mapping, parity with the official code, and the two branches' reach."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import visattn
from visattn.attention.attn_conv import AttnConv, CloAttention, PooledGlobalAttention, capped_pool_matrix
from visattn.bench import count_flops
from visattn.layers.attend import use_fused
from visattn.models.cloformer import REFERENCE_PARAMS, official_to_visattn_key
from visattn.registry import config_from_dict, config_to_dict, get_model_class

from .conftest import GOLDEN, load_golden

VARIANTS = ["cloformer_xxs", "cloformer_xs", "cloformer_s"]


def _tuples(value):
    # JSON metadata holds lists; configs hold (nested) tuples.
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _manifest(name: str) -> dict:
    return json.loads((GOLDEN / f"cloformer_manifest_{name}.json").read_text())


@pytest.mark.parametrize("name", VARIANTS)
def test_official_keys_load_into_full_model_on_meta(name: str) -> None:
    manifest = _manifest(name)
    assert manifest["meta"]["params"] == REFERENCE_PARAMS[name]
    with torch.device("meta"):
        model = visattn.create_model(name)
        official = {k: torch.empty(shape) for k, shape in manifest["shapes"].items()}
    renamed = model.remap_state_dict(official, model)
    assert len(renamed) == len(official), "two official keys were mapped onto the same name"
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(renamed) == sorted(own)
    assert {k: tuple(v.shape) for k, v in renamed.items()} == own
    # the whole loading path (strict key comparison, shape check) accepts the official layout
    assert visattn.load_pretrained(model, official) == ([], [])


def test_official_key_names() -> None:
    cases = {
        "patch_embed.conv2.conv.1.running_var": "stem.conv2.norm.running_var",
        "patch_embed.conv5.weight": "stem.proj.weight",
        "patch_embed.layernorm.bias": "stem.norm.bias",
        "layers.2.blocks.5.attn.act_blocks.0.act_block.2.weight":
            "stages.2.blocks.5.attn.local_branches.0.attn_map.fc2.weight",
        "layers.0.blocks.1.attn.global_kv.bias": "stages.0.blocks.1.attn.global_branch.kv.bias",
        "layers.0.blocks.1.downsample.1.num_batches_tracked": "stages.0.blocks.1.shortcut.norm.num_batches_tracked",
        "layers.3.blocks.0.mlp.dwconv.weight": "stages.3.blocks.0.mlp.dwconv.weight",
        "norm.weight": "head.norm.weight",
        "head.bias": "head.fc.bias",
    }
    assert {k: official_to_visattn_key(k) for k in cases} == cases


@pytest.mark.parametrize("case", ["cloformer_reduced_128", "cloformer_reduced_96"])
def test_matches_official_outputs(case: str) -> None:
    meta, state, x, expected = load_golden(case)
    overrides = {k: _tuples(v) for k, v in meta["visattn_overrides"].items()}
    model = visattn.create_model(meta["visattn_model"], **overrides).eval()
    assert visattn.load_pretrained(model, state) == ([], [])
    with torch.no_grad():
        for fused in (True, False):
            with use_fused(fused):
                torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)


def test_feature_strides_and_plain_batchnorm() -> None:
    model = visattn.create_model("cloformer_xxs", **get_model_class("cloformer_xxs").test_overrides).eval()
    x = torch.randn(1, 3, 70, 45)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
    for f, info in zip(feats, model.feature_info):
        r = info["reduction"]
        assert f.shape[1:] == (info["num_chs"], -(-70 // r), -(-45 // r))
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_local_branch_is_translation_equivariant() -> None:
    k = 5
    branch = AttnConv(8, 8, head_dim=4, kernel_size=k).eval()
    x = torch.randn(1, 8, 20, 24)
    dy, dx, p = 3, 2, k // 2
    with torch.no_grad():
        full = branch(x)
        shifted = branch(x[:, :, dy:, dx:])  # the same content moved up-left by (dy, dx)
    # Away from the new top/left border (p pixels, where zero padding replaced real neighbours) the outputs agree.
    torch.testing.assert_close(shifted[:, :, p:, p:], full[:, :, dy + p:, dx + p:], atol=1e-6, rtol=1e-5)
    # ... and inside that border they do not: the comparison above is not vacuous.
    assert not torch.allclose(shifted[:, :, 0], full[:, :, dy, dx:], atol=1e-4)


def test_local_branch_reach_is_its_kernel() -> None:
    k = 5
    branch = AttnConv(8, 8, head_dim=4, kernel_size=k).eval()
    x = torch.randn(1, 8, 15, 16)
    x2 = x.clone()
    x2[0, :, 7, 9] += 1.0
    with torch.no_grad():
        changed = (branch(x2) - branch(x)).abs().sum(1)[0] > 0     # (H, W)
    expected = torch.zeros_like(changed)
    expected[7 - k // 2:7 + k // 2 + 1, 9 - k // 2:9 + k // 2 + 1] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("max_kv_grid", [None, 2])  # official, and capped below the 4 x 5 / 4 x 6 window grid
@pytest.mark.parametrize("size", [(16, 24), (13, 18)])  # divisible by the window, and not (ceil pooling)
def test_global_branch_reaches_every_pixel(size: tuple[int, int], max_kv_grid: int | None) -> None:
    H, W = size
    branch = PooledGlobalAttention(8, num_heads=2, head_dim=4, window_size=4, max_kv_grid=max_kv_grid).eval()
    attn = CloAttention(8, num_heads=2, group_split=(1, 1), kernel_sizes=(3,), window_size=4,
                        max_kv_grid=max_kv_grid).eval()
    x = torch.randn(1, 8, H, W)
    x2 = x.clone()
    x2[0, :, H - 1, W - 1] += 1.0  # bottom-right corner: inside a partial pooling window when H, W do not divide
    with torch.no_grad():
        for module in (branch, attn):
            diff = (module(x2) - module(x)).abs().amax(1)[0]          # (H, W)
            assert (diff > 1e-6).all(), f"{type(module).__name__}: {(diff <= 1e-6).sum()} pixels unaffected"


def test_ceil_pooling_averages_only_real_pixels() -> None:
    branch = PooledGlobalAttention(4, num_heads=1, head_dim=4, window_size=4)
    x = torch.randn(2, 4, 13, 18)
    pooled = branch.pool(x)
    assert pooled.shape == (2, 4, 4, 5)
    torch.testing.assert_close(pooled[:, :, -1, -1], x[:, :, 12:, 16:].mean((2, 3)))
    torch.testing.assert_close(pooled[:, :, 0, 0], x[:, :, :4, :4].mean((2, 3)))


def test_attention_argument_errors() -> None:
    with pytest.raises(ValueError, match="sum to num_heads"):
        CloAttention(16, num_heads=4, group_split=(1, 2), kernel_sizes=(3,))
    with pytest.raises(ValueError, match="one kernel size per local group"):
        CloAttention(16, num_heads=4, group_split=(1, 1, 2), kernel_sizes=(3,))
    with pytest.raises(ValueError, match="odd"):
        CloAttention(16, num_heads=4, group_split=(2, 2), kernel_sizes=(4,))


# --- opt-in linear cost: max_kv_grids ---------------------------------------------------------------------------

# Four stages at the official windows (8, 4, 2, 1), small widths: every stage's key grid is 7 x 7 at 224 x 224.
_FOUR_STAGES = {"dims": (16, 16, 24, 24), "depths": (1, 1, 1, 1), "num_heads": (2, 2, 3, 3),
                "group_splits": ((1, 1), (1, 1), (1, 2), (1, 2)), "kernel_sizes": ((3,), (3,), (5,), (5,)),
                "mlp_ratios": (2.0, 2.0, 2.0, 2.0), "num_classes": 5}
_GRID_224 = (7, 7, 7, 7)


@pytest.mark.parametrize("size, window, grid", [(56, 8, 7), (13, 4, 7), (30, 2, 7),   # under the cap: windows
                                                (64, 8, 7), (100, 8, 7), (9, 1, 7), (13, 4, 3)])  # over: adaptive
def test_capped_pool_matrix_is_ceil_pooling_then_adaptive(size: int, window: int, grid: int) -> None:
    x = torch.randn(2, 3, 5, size, dtype=torch.float64)
    pooled = x @ capped_pool_matrix(size, window, grid, dtype=x.dtype, device=x.device).T
    if -(-size // window) <= grid:
        expected = F.avg_pool2d(x, (1, window), (1, window), ceil_mode=True, count_include_pad=False)
    else:
        expected = F.adaptive_avg_pool2d(x, (5, grid))
    assert pooled.shape == expected.shape
    torch.testing.assert_close(pooled, expected, atol=1e-12, rtol=0)


def test_max_kv_grid_caps_the_keys_of_the_attention_module() -> None:
    kwargs = CloAttention.example_kwargs()                             # window 4
    capped = visattn.create_attention("attn_conv", **kwargs, max_kv_grid=3).eval()
    official = visattn.create_attention("attn_conv", **kwargs).eval()
    official.load_state_dict(capped.state_dict())                      # the cap adds no parameter
    assert capped.global_branch.max_kv_grid == 3
    small, large = torch.randn(2, kwargs["dim"], 12, 9), torch.randn(1, kwargs["dim"], 41, 26)
    assert capped.global_branch.pool(small).shape[-2:] == (3, 3)        # 3 x 3 windows: under the cap
    assert capped.global_branch.pool(large).shape[-2:] == (3, 3)        # 11 x 7 windows: capped
    with torch.no_grad():
        assert torch.equal(capped(small), official(small))
        assert capped(large).shape == large.shape
        assert not torch.allclose(capped(large), official(large), atol=1e-4)
    with pytest.raises(ValueError, match="max_kv_grid"):
        PooledGlobalAttention(8, num_heads=2, head_dim=4, window_size=4, max_kv_grid=0)


def _four_stage_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    official = visattn.create_model("cloformer_xxs", **_FOUR_STAGES).eval()
    capped = visattn.create_model("cloformer_xxs", **_FOUR_STAGES, max_kv_grids=_GRID_224).eval()
    assert visattn.load_pretrained(capped, official.state_dict()) == ([], [])
    return official, capped


def test_max_kv_grids_keep_outputs_up_to_224_and_change_them_above() -> None:
    official, capped = _four_stage_pair()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for shape in [(1, 3, 224, 224), (2, 3, 200, 150)]:               # the reference size, and below it
            x = torch.randn(shape, generator=gen)
            assert (capped(x) - official(x)).abs().max().item() <= 1e-6, shape
        x = torch.randn(1, 3, 256, 288, generator=gen)                   # stage grids 8 x 9 > 7 x 7: capped
        assert (capped(x) - official(x)).abs().max().item() > 1e-4


def test_max_kv_grids_make_gmacs_per_pixel_linear() -> None:
    def gmacs_per_pixel(overrides: dict, side: int) -> float:
        with torch.device("meta"):
            model = visattn.create_model("cloformer_xxs", **_FOUR_STAGES, **overrides).eval()
            x = torch.empty(1, 3, side, side)
        return count_flops(lambda: model(x)) / 2e9 / side ** 2

    capped = gmacs_per_pixel({"max_kv_grids": _GRID_224}, 896) / gmacs_per_pixel({"max_kv_grids": _GRID_224}, 224)
    official = gmacs_per_pixel({}, 896) / gmacs_per_pixel({}, 224)
    assert capped <= 1.25, capped
    assert official > 1.25, official                                    # the official windows are not linear


def test_max_kv_grids_config_round_trip_and_length_check() -> None:
    with torch.device("meta"):
        model = visattn.create_model("cloformer_xxs", max_kv_grids=_GRID_224)
    text = json.dumps(config_to_dict(model.config))
    assert config_from_dict(type(model), text) == model.config
    assert config_from_dict(type(model), text).max_kv_grids == _GRID_224
    assert visattn.create_model("cloformer_xxs", **_FOUR_STAGES).config.max_kv_grids is None   # off by default
    with pytest.raises(ValueError, match="max_kv_grids"):
        visattn.create_model("cloformer_xxs", **_FOUR_STAGES, max_kv_grids=(7, 7))


@pytest.mark.slow
def test_max_kv_grids_export_with_dynamic_sizes() -> None:
    from visattn.export import export_program

    # Small caps so that the test sizes run both paths: 64 x 64 stays under them, 97 x 203 is capped at every stage,
    # 32 x 32 has a 1 x 1 last stage (a size whose key count 1 the trace once guarded against).
    model = visattn.create_model("cloformer_xxs", **_FOUR_STAGES, max_kv_grids=(3, 3, 2, 2)).eval()
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            module.reset_parameters()                                   # outputs of order 1 (see test_export.py)
    program = export_program(model).module()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for shape in [(2, 3, 64, 64), (1, 3, 97, 203), (3, 3, 32, 32)]:
            x = torch.randn(shape, generator=gen)
            expected = model(x)
            assert expected.abs().max().item() > 0.1
            assert (program(x) - expected).abs().max().item() <= 1e-4, shape
