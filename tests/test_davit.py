"""DaViT specifics: timm and official parity (golden files), full-size key mapping, the channel group attention
formula and its globality, masked window padding."""

from __future__ import annotations

import json

import pytest
import torch

import visattn
from visattn.attention import spatial_window
from visattn.attention.channel_group import ChannelGroupAttention
from visattn.attention.spatial_window import SpatialWindowAttention
from visattn.layers.attend import use_fused
from visattn.models.davit import DaViT

from .conftest import GOLDEN, golden_overrides, load_golden
from .test_golden import golden_model_cases


# Parity with these is checked by tests/test_golden.py. davit_224 and davit_pad_200x232: timm weights and logits (the
# padded one with mask_padding=False); davit_official_224: the official repository's key layout and logits.
GOLDEN_CASES = ["davit_224", "davit_pad_200x232", "davit_official_224"]


def test_golden_cases_are_checked_by_the_generic_parity_test() -> None:
    assert set(GOLDEN_CASES) <= set(golden_model_cases())


def test_masked_padding_is_a_real_deviation_from_timm() -> None:
    # The padded golden only matches with mask_padding=False; the default masks the zero tokens out of the keys and
    # so must give different logits at this size (and the same ones at 224, see the parity test).
    meta, state, x, expected = load_golden("davit_pad_200x232")
    overrides = {**golden_overrides(meta), "mask_padding": True}
    model = visattn.create_model(meta["visattn_model"], **overrides).eval()
    visattn.load_pretrained(model, state)
    with torch.no_grad():
        out = model(x)
    assert (out - expected).abs().max() > 1e-3


@pytest.mark.parametrize("manifest", ["davit_manifest_davit_tiny", "davit_manifest_official_tiny"])
def test_full_size_keys_map_on_meta(manifest: str) -> None:
    shapes = json.loads((GOLDEN / f"{manifest}.json").read_text())["shapes"]
    with torch.device("meta"):
        model = visattn.create_model("davit_tiny")
        state = {k: torch.empty(s) for k, s in shapes.items()}
    mapped = model.remap_state_dict(state, model)
    own = model.state_dict()
    assert sorted(mapped) == sorted(own)
    assert all(mapped[k].shape == own[k].shape for k in own)


# --- channel group attention ---------------------------------------------------------------------------------------

def _paper_channel_group_attention(x: torch.Tensor, module: ChannelGroupAttention) -> torch.Tensor:
    """A direct transcription of DaViT Eq. 4, one group at a time, from the module's weights.

    x: (N, C) tokens of one image (N = H*W). For group i, Q_i, K_i, V_i are (N, C_g) projections and
    A(Q_i, K_i, V_i) = [softmax(Q_i^T K_i / sqrt(C_g)) V_i^T]^T; the groups are concatenated, then projected.
    The roles of the three row blocks of ``qkv`` are (V, Q, K), the reference code's storage order.
    """
    C, G = module.dim, module.num_groups
    Cg = C // G
    W, b = module.qkv.weight, module.qkv.bias
    V = x @ W[:C].T + b[:C]
    Q = x @ W[C:2 * C].T + b[C:2 * C]
    K = x @ W[2 * C:].T + b[2 * C:]
    groups = []
    for i in range(G):
        sl = slice(i * Cg, (i + 1) * Cg)
        Qi, Ki, Vi = Q[:, sl], K[:, sl], V[:, sl]                     # (N, C_g) each
        A = torch.softmax(Qi.T @ Ki / Cg ** 0.5, dim=-1)               # (C_g, C_g), rows = query channels
        groups.append((A @ Vi.T).T)                                    # (N, C_g)
    return module.proj(torch.cat(groups, dim=1))                       # (N, C)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("dim", "groups", "size"), [(12, 3, (5, 7)), (32, 4, (9, 2)), (8, 1, (3, 3))])
def test_channel_group_matches_paper_formula(fused: bool, dim: int, groups: int, size: tuple[int, int]) -> None:
    module = ChannelGroupAttention(dim, num_groups=groups).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.5)  # large enough that softmax is far from uniform
        x = torch.randn(2, dim, *size)
        with use_fused(fused):
            out = module(x)                                            # (B, C, H, W)
        for b in range(2):
            tokens = x[b].flatten(1).T                                 # (N, C)
            expected = _paper_channel_group_attention(tokens, module)  # (N, C)
            torch.testing.assert_close(out[b].flatten(1).T, expected, atol=1e-5, rtol=1e-4)


def test_channel_group_scale_is_group_width_not_image_size() -> None:
    module = ChannelGroupAttention(24, num_groups=3)
    assert module.scale == pytest.approx(8 ** -0.5)


def test_channel_group_is_global() -> None:
    # One changed pixel changes the C_g x C_g attention matrix, hence every output position.
    module = ChannelGroupAttention(16, num_groups=4).eval()
    x = torch.randn(1, 16, 11, 13)
    x2 = x.clone()
    x2[0, :, 9, 2] += 1.0
    with torch.no_grad():
        diff = (module(x2) - module(x)).abs().amax(dim=1)[0]           # (H, W)
    assert (diff > 1e-7).all(), f"unchanged positions: {(diff <= 1e-7).nonzero().tolist()[:5]}"


def test_spatial_window_is_local() -> None:
    # The contrast to the channel attention: a pixel changes only the outputs of its own window.
    module = SpatialWindowAttention(16, num_heads=2, window_size=4).eval()
    x = torch.randn(1, 16, 8, 12)
    x2 = x.clone()
    x2[0, :, 5, 9] += 1.0
    with torch.no_grad():
        diff = (module(x2) - module(x)).abs().amax(dim=1)[0]           # (H, W)
    changed = diff > 1e-7
    assert changed[4:8, 8:12].all()
    changed[4:8, 8:12] = False
    assert not changed.any()


# --- spatial window padding ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(10, 13), (5, 3), (1, 9)])
def test_real_tokens_never_attend_to_padding(size: tuple[int, int], monkeypatch) -> None:
    attn = SpatialWindowAttention(32, num_heads=4, window_size=4).eval()
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        zero_padded = attn.forward_cl(x)
        original = spatial_window.pad_to_multiple

        def garbage_pad(t, multiple):
            padded, pad = original(t, multiple)
            H, W = t.shape[1:3]
            keep = torch.zeros_like(padded, dtype=torch.bool)
            keep[:, :H, :W] = True
            return torch.where(keep, padded, torch.randn_like(padded) * 100), pad

        monkeypatch.setattr(spatial_window, "pad_to_multiple", garbage_pad)
        garbage_padded = attn.forward_cl(x)
    assert zero_padded.shape == x.shape
    torch.testing.assert_close(garbage_padded, zero_padded, atol=1e-5, rtol=1e-5)


def test_mask_padding_changes_nothing_when_sizes_divide() -> None:
    masked = SpatialWindowAttention(16, num_heads=2, window_size=4).eval()
    unmasked = SpatialWindowAttention(16, num_heads=2, window_size=4, mask_padding=False).eval()
    unmasked.load_state_dict(masked.state_dict())
    x = torch.randn(1, 8, 12, 16)
    y = torch.randn(1, 7, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(masked.forward_cl(x), unmasked.forward_cl(x))
        assert (masked.forward_cl(y) - unmasked.forward_cl(y)).abs().max() > 1e-4


@pytest.mark.parametrize("size", [(224, 224), (97, 203), (32, 32)])
def test_stage_map_sizes(size: tuple[int, int]) -> None:
    model = visattn.create_model("davit_tiny", **DaViT.test_overrides).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    expected = [(-(-size[0] // r), -(-size[1] // r)) for r in (4, 8, 16, 32)]
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("size", [(14, 21), (13, 23)])
def test_spatial_window_training_path_equals_inference_path(size):
    # with autograd on, the projection runs per window before the partition is undone (less saved for backward);
    # it must give the inference path's output, padding included (13 x 23 pads to 14 x 28 with window 7)
    from visattn.attention.spatial_window import SpatialWindowAttention

    torch.manual_seed(0)
    attn = SpatialWindowAttention(32, num_heads=2, window_size=7).eval()
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        expected = attn.forward_cl(x)
    got = attn.forward_cl(x.requires_grad_())
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    got.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
