"""MaxViT specifics: full-size key mapping, partition-size resizing, masked padding (timm parity: test_golden.py)."""

from __future__ import annotations

import json

import pytest
import torch

import visattn
from visattn.attention import multi_axis
from visattn.attention.multi_axis import PartitionAttention
from visattn.layers.rel_pos import resize_rel_pos_table
from visattn.models.maxvit import MaxViT

from .conftest import GOLDEN


@pytest.mark.parametrize(
    ("manifest", "variant", "partition"),
    [("maxvit_manifest_maxvit_base_tf_384", "maxvit_base", 12), ("maxvit_manifest_maxvit_tiny_tf_224", "maxvit_tiny", 7)],
)
def test_full_size_timm_keys_map_on_meta(manifest: str, variant: str, partition: int) -> None:
    shapes = json.loads((GOLDEN / f"{manifest}.json").read_text())["shapes"]
    with torch.device("meta"):
        model = visattn.create_model(variant, partition_size=partition)
        state = {k: torch.empty(s) for k, s in shapes.items()}
    mapped = model.remap_state_dict(state, model)
    own = model.state_dict()
    assert sorted(mapped) == sorted(own)
    assert all(mapped[k].shape == own[k].shape for k in own)


def test_checkpoint_from_other_partition_size_is_resized() -> None:
    overrides = MaxViT.test_overrides
    src = visattn.create_model("maxvit_tiny", **{**overrides, "partition_size": 6})
    dst = visattn.create_model("maxvit_tiny", **{**overrides, "partition_size": 4})
    visattn.load_pretrained(dst, src.state_dict())
    key = "stages.0.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table"
    assert dst.state_dict()[key].shape == (1, 7, 7)
    torch.testing.assert_close(dst.state_dict()[key], resize_rel_pos_table(src.state_dict()[key], 4))


def test_resize_keeps_constant_and_linear_tables() -> None:
    const = torch.full((2, 13, 13), 0.7)
    torch.testing.assert_close(resize_rel_pos_table(const, 12), torch.full((2, 23, 23), 0.7))
    # align_corners=False bilinear keeps the centre (zero offset) value of a symmetric table
    ramp = torch.linspace(-1, 1, 13)[None, :, None].expand(1, 13, 13)
    resized = resize_rel_pos_table(ramp, 12)
    assert resized.shape == (1, 23, 23)
    assert resized[0, 11, 5].abs() < 1e-6
    assert torch.all(resized[0, 1:, 0] >= resized[0, :-1, 0])


@pytest.mark.parametrize("partition", ["block", "grid"])
@pytest.mark.parametrize("size", [(10, 13), (5, 3), (1, 9)])
def test_real_tokens_never_attend_to_padding(partition: str, size: tuple[int, int], monkeypatch) -> None:
    attn = PartitionAttention(32, partition=partition, partition_size=4, head_dim=8).eval()
    x = torch.randn(2, *size, 32)
    with torch.no_grad():
        zero_padded = attn.forward_cl(x)
        original = multi_axis.pad_to_multiple

        def garbage_pad(t, multiple):
            padded, pad = original(t, multiple)
            H, W = t.shape[1:3]
            noise = torch.randn_like(padded) * 100
            keep = torch.zeros_like(padded, dtype=torch.bool)
            keep[:, :H, :W] = True
            return torch.where(keep, padded, noise), pad

        monkeypatch.setattr(multi_axis, "pad_to_multiple", garbage_pad)
        garbage_padded = attn.forward_cl(x)
    assert zero_padded.shape == x.shape
    torch.testing.assert_close(garbage_padded, zero_padded, atol=1e-5, rtol=1e-5)


def test_extra_block_padding_does_not_change_real_outputs(monkeypatch) -> None:
    # Block windows only: one more whole window of padding must not change any real token's output.
    attn = PartitionAttention(16, partition="block", partition_size=4, head_dim=8).eval()
    x = torch.randn(1, 6, 7, 16)
    with torch.no_grad():
        base = attn.forward_cl(x)
        original = multi_axis.pad_to_multiple

        def pad_more(t, multiple):
            H, W = t.shape[1:3]
            bigger = torch.nn.functional.pad(t, (0, 0, 0, 4, 0, 4))  # (B, H + 4, W + 4, C)
            padded, pad = original(bigger, multiple)
            return padded, (pad[0] + 4, pad[1] + 4)

        monkeypatch.setattr(multi_axis, "pad_to_multiple", pad_more)
        more = attn.forward_cl(x)
    torch.testing.assert_close(more, base, atol=1e-5, rtol=1e-5)


def test_divisible_input_is_not_padded(monkeypatch) -> None:
    attn = PartitionAttention(16, partition="grid", partition_size=4, head_dim=8).eval()
    calls = []
    monkeypatch.setattr(multi_axis, "valid_token_mask", lambda *a, **k: calls.append(a))
    with torch.no_grad():
        attn.forward_cl(torch.randn(1, 8, 12, 16))
    assert calls == []


@pytest.mark.parametrize("size", [(256, 320), (97, 203), (32, 32)])
def test_odd_sizes_full_width_tiny_stage_maps(size: tuple[int, int]) -> None:
    model = visattn.create_model("maxvit_tiny", **MaxViT.test_overrides).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    expected = [(-(-size[0] // r), -(-size[1] // r)) for r in (4, 8, 16, 32)]
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    assert all(torch.isfinite(f).all() for f in feats)
