"""MViT / MViTv2 specifics: reference parity (timm, official, torchvision video), full-size key mapping, pooling
sizes, class-token handling, relative positions at any size, video forward/backward."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import visattn
from visattn.attention.pooling import PoolingAttention, pooled_size, rel_pos_index
from visattn.models.mvit import MViT, MViTVideo

from .conftest import GOLDEN
from .test_golden import golden_model_cases

GOLDEN_CASES = [
    "mvit_timm_224",  # mvitv2_tiny layout at 224
    "mvit_timm_cls_96",  # class token, timm's residual pooling into it
    "mvit_timm_mlpdim_96",  # mvitv2_large layout: channels grow in the MLP
    "mvit_timm_max_96",  # max pooling, no pooling norms
    "mvit_official_cls_96",  # facebookresearch/mvit: flat block keys, residual pooling skips the class token
    "mvit_official_mlpdim_96",  # facebookresearch/mvit, DIM_MUL_IN_ATT False
    "mvit_official_poolfirst_96",  # facebookresearch/mvit, POOL_FIRST (timm's pool-first path cannot run)
    "mvit_tv_v1_video",  # torchvision MViT v1 video: separable absolute positions, Q pooling only where it strides
    "mvit_tv_v2_video",  # torchvision MViTv2 video: spatial + temporal rel-pos
]


def test_golden_cases_are_checked_by_the_generic_parity_test() -> None:
    # tests/test_golden.py compares every case to the reference output; this list says what each one covers.
    assert set(GOLDEN_CASES) <= set(golden_model_cases())


def _small(name: str, **extra) -> MViT:
    cls = visattn.registry.get_model_class(name)
    return visattn.create_model(name, **{**cls.test_overrides, **extra})


@pytest.mark.parametrize(
    ("manifest", "variant"),
    [
        ("mvit_manifest_mvitv2_tiny", "mvitv2_tiny"),
        ("mvit_manifest_official_T", "mvitv2_tiny"),  # facebookresearch/mvit: blocks.N, blocks.N.proj, head.projection
        ("mvit_manifest_mvitv2_large", "mvitv2_large"),
        ("mvit_manifest_mvitv2_base_cls", "mvitv2_base_cls"),
        ("mvit_manifest_tv_mvit_v1_b", "mvit_v1_base_16x4"),
        ("mvit_manifest_tv_mvit_v2_s", "mvitv2_small_video"),
    ],
)
def test_full_size_reference_keys_map_on_meta(manifest: str, variant: str) -> None:
    shapes = json.loads((GOLDEN / f"{manifest}.json").read_text())["shapes"]
    with torch.device("meta"):
        model = visattn.create_model(variant)
        state = {k: torch.empty(s) for k, s in shapes.items()}
    mapped = model.remap_state_dict(state, model)
    own = model.state_dict()
    assert sorted(mapped) == sorted(own)
    assert all(mapped[k].shape == own[k].shape for k in own)


# --- pooling sizes ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["conv", "avg", "max"])
def test_pooled_sizes_follow_the_formula(mode: str) -> None:
    size = (9, 14)
    x = torch.randn(1, 8, *size)
    for kernel, stride, padding in itertools.product((1, 2, 3, 4), (1, 2, 3), (0, 1, 2)):
        if kernel == 1 and stride == 1:
            continue  # no pooling module at all
        if mode != "conv" and 2 * padding > kernel:
            with pytest.raises(ValueError, match="padding"):
                PoolingAttention(8, num_heads=2, kernel_q=kernel, stride_q=stride, padding_q=padding, mode=mode)
            continue
        attn = PoolingAttention(8, 16, num_heads=2, kernel_q=kernel, stride_q=stride, padding_q=padding,
                                kernel_kv=kernel, stride_kv=stride, padding_kv=padding, mode=mode, rel_pos_size=6)
        expected = tuple((n + 2 * padding - kernel) // stride + 1 for n in size)
        assert attn.output_shape(x.shape) == (1, 16, *expected)
        with torch.no_grad():
            assert attn(x).shape == (1, 16, *expected), (kernel, stride, padding)


def test_pooled_sizes_3d_per_axis() -> None:
    attn = PoolingAttention(8, num_heads=2, spatial_dims=3, kernel_q=(1, 3, 3), stride_q=(1, 2, 2),
                            kernel_kv=(3, 3, 3), stride_kv=(2, 4, 4), rel_pos_size=(4, 16, 16))
    x = torch.randn(2, 8, 5, 11, 17)
    with torch.no_grad():
        out = attn(x)
    assert out.shape == attn.output_shape(x.shape) == (2, 8, 5, 6, 9)
    assert pooled_size((5, 11, 17), (3, 3, 3), (2, 4, 4), (1, 1, 1)) == (3, 3, 5)


def test_too_small_map_raises_with_the_minimum() -> None:
    attn = PoolingAttention(8, kernel_q=5, padding_q=0, kernel_kv=3, padding_kv=0)
    with pytest.raises(ValueError, match=r"\(5, 5\)"):
        attn(torch.randn(1, 8, 4, 9))
    assert attn(torch.randn(1, 8, 5, 5)).shape == (1, 8, 1, 1)


@pytest.mark.parametrize("pool_first", [False, True])
@pytest.mark.parametrize("mode", ["conv", "avg", "max"])
def test_every_mode_trains_in_2d_and_3d(mode: str, pool_first: bool) -> None:
    for dims, shape in ((2, (2, 8, 7, 10)), (3, (2, 8, 3, 7, 10))):
        attn = PoolingAttention(8, 8 if pool_first else 16, num_heads=2, spatial_dims=dims, stride_q=2,
                                stride_kv=(1,) * (dims - 2) + (2, 2), mode=mode, pool_first=pool_first,
                                rel_pos_size=(4,) * dims)
        x = torch.randn(*shape, requires_grad=True)
        attn(x).square().mean().backward()
        assert all(p.grad is not None and p.grad.any() for p in attn.parameters())


# --- class token ------------------------------------------------------------------------------------------------

def test_class_token_is_carried_not_pooled_and_skips_rel_pos() -> None:
    torch.manual_seed(0)
    attn = PoolingAttention(16, 32, num_heads=2, stride_q=2, stride_kv=2, rel_pos_size=8).eval()
    x, cls = torch.randn(2, 16, 9, 12), torch.randn(2, 16)
    with torch.no_grad():
        out_map, out_cls = attn(x, cls_token=cls)
        tokens, size = attn.forward_tokens(torch.cat((cls[:, None], x.flatten(2).transpose(1, 2)), 1), (9, 12))
        assert out_map.shape == (2, 32, 5, 6) and out_cls.shape == (2, 32) and size == (5, 6)
        assert tokens.shape == (2, 1 + 5 * 6, 32)
        # The relative position term has no entry for the class token: its output ignores the tables.
        for name in attn.rel_pos_names:
            getattr(attn, name).normal_(0, 1)
        new_map, new_cls = attn(x, cls_token=cls)
    torch.testing.assert_close(new_cls, out_cls)
    assert (new_map - out_map).abs().max() > 1e-3


def test_residual_pooling_into_class_token_changes_only_it() -> None:
    torch.manual_seed(0)
    official = PoolingAttention(16, num_heads=2, stride_kv=2, rel_pos_size=8, residual_pool_cls=False).eval()
    timm_like = PoolingAttention(16, num_heads=2, stride_kv=2, rel_pos_size=8, residual_pool_cls=True).eval()
    timm_like.load_state_dict(official.state_dict())
    x, cls = torch.randn(2, 16, 6, 7), torch.randn(2, 16)
    with torch.no_grad():
        map_a, cls_a = official(x, cls_token=cls)
        map_b, cls_b = timm_like(x, cls_token=cls)
    torch.testing.assert_close(map_a, map_b)
    assert (cls_a - cls_b).abs().max() > 1e-3


def _assert_grads_except_last_query_path(model: MViT) -> None:
    # With class-token pooling, the last block's query pooling conv and position tables only shape map tokens,
    # which the head drops; every other parameter must get a gradient.
    no_grad = {n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    attn = model.stages[-1].blocks[-1].attn
    prefix = f"stages.{len(model.stages) - 1}.blocks.{len(model.stages[-1].blocks) - 1}.attn."
    expected = {prefix + n for n in ("pool_q.weight", *(attn.rel_pos_names if attn.rel_pos else ()))
                if attn.pool_q is not None or n != "pool_q.weight"}
    assert no_grad == expected


@pytest.mark.parametrize("name", ["mvitv2_tiny_cls", "mvit_v1_base_16x4", "mvitv2_small_video"])
def test_class_token_models_train_and_pool_the_token(name: str) -> None:
    model = _small(name, cls_token=True, global_pool="token")
    model.train()
    x = torch.randn(2, 3, 3, 36, 40) if isinstance(model, MViTVideo) else torch.randn(2, 3, 35, 59)
    out = model(x)
    assert out.shape == (2, 7)
    out.square().mean().backward()
    _assert_grads_except_last_query_path(model)
    model.eval()
    with torch.no_grad():
        tokens, _ = model.forward_tokens(x)
        torch.testing.assert_close(model.forward_head(tokens), model(x))
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 0])
        with pytest.raises(ValueError, match="class token"):
            model.forward_head(model.forward_features(x))


# --- relative positions at any size -----------------------------------------------------------------------------

def test_rel_pos_index_matches_the_reference_formula_at_integer_ratios() -> None:
    for q, k in [(56, 14), (14, 56), (7, 7), (28, 14), (1, 4), (8, 1)]:
        q_ratio, k_ratio = max(k / q, 1.0), max(q / k, 1.0)
        reference = (torch.arange(q)[:, None] * q_ratio - torch.arange(k)[None, :] * k_ratio
                     + (k - 1) * k_ratio).long()
        assert torch.equal(rel_pos_index(q, k), reference)
        assert rel_pos_index(q, k).max() < 2 * max(q, k) - 1 and rel_pos_index(q, k).min() >= 0


def test_rel_pos_index_is_exact_at_non_integer_ratios() -> None:
    for q, k in [(25, 13), (13, 25), (12, 7), (97, 25)]:
        idx = rel_pos_index(q, k)
        for i, j in [(0, 0), (q - 1, 0), (0, k - 1), (q // 2, k // 3)]:
            if q >= k:
                exact = i + math.floor((k - 1 - j) * q / k)
            else:
                exact = math.floor(i * k / q) + k - 1 - j
            assert idx[i, j] == exact
        assert idx.max() <= 2 * max(q, k) - 2


@pytest.mark.parametrize("size", [(256, 256), (97, 203)])
def test_odd_and_larger_inputs_run(size: tuple[int, int]) -> None:
    # Tables sized for 224 (as timm's checkpoints); timm itself raises at 256x256.
    model = _small("mvitv2_tiny", img_size=(224, 224)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
        feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert out.shape == (1, 7) and torch.isfinite(out).all()
    expected = [math.ceil(s / 4) for s in size]
    for f in feats:
        assert tuple(f.shape[2:]) == tuple(expected)
        expected = [math.ceil(s / 2) for s in expected]


def test_runtime_interpolation_equals_resized_checkpoint() -> None:
    # A model sized for 224 running 256 interpolates its tables exactly as a 256 model loading the same weights.
    at_224 = _small("mvitv2_tiny", img_size=(224, 224)).eval()
    at_256 = _small("mvitv2_tiny", img_size=(256, 256)).eval()
    visattn.load_pretrained(at_256, at_224.state_dict())
    key = "stages.0.blocks.0.attn.rel_pos_h"
    assert at_224.state_dict()[key].shape[0] == 111 and at_256.state_dict()[key].shape[0] == 127
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(at_224(x), at_256(x))


# --- training path (bf16 training memory) -----------------------------------------------------------------------

def _pooling_with_cls() -> tuple[PoolingAttention, torch.Tensor, tuple[int, int]]:
    attn = PoolingAttention(16, 32, num_heads=2, stride_q=2, stride_kv=4, rel_pos_size=12).train()
    size = (13, 11)
    return attn, torch.randn(2, 1 + 13 * 11, 16), size


def test_training_attention_equals_the_inference_attention() -> None:
    # with autograd the rel-pos bias needs a gradient, and the reference attention (keys scaled) replaces SDPA
    attn, x, size = _pooling_with_cls()
    out, _ = attn.forward_tokens(x, size)
    with torch.no_grad():
        expected, _ = attn.forward_tokens(x, size)                     # fused SDPA path
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    assert all(p.grad is not None for p in attn.parameters())


def test_bf16_training_keeps_attention_in_bf16() -> None:
    # PyTorch's CPU SDPA with a trainable mask upcasts to fp32 and keeps the fp32 probabilities for backward
    from torch.utils._python_dispatch import TorchDispatchMode

    attn, x, size = _pooling_with_cls()
    n_logits = 2 * 2 * (1 + 7 * 6) * (1 + 4 * 3)                       # B * heads * Nq * Nk
    made: list[torch.dtype] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            made.extend(t.dtype for t in torch.utils._pytree.tree_leaves(out)
                        if isinstance(t, torch.Tensor) and t.numel() == n_logits)
            return out

    with Record(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = attn.forward_tokens(x, size)
    out.float().sum().backward()
    assert made and set(made) == {torch.bfloat16}, made


# --- video ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mvit_v1_base_16x4", "mvitv2_small_video"])
def test_video_forward_backward_tiny(name: str) -> None:
    config = visattn.registry.get_model_config(name)
    model = visattn.create_model(name, dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4),
                                 img_size=(4, 32, 32), num_classes=5).train()
    assert model.config.cls_token and model.config.rel_pos == config.rel_pos
    x = torch.randn(2, 3, 6, 40, 36)  # another frame count and size than the embeddings were built for
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    _assert_grads_except_last_query_path(model)
    with torch.no_grad():
        feats = model.eval().forward_intermediates(x, intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(3, 10, 9), (3, 5, 5), (3, 3, 3), (3, 2, 2)]
    # MViT v1 grows channels at the end of a stage, MViTv2 at the start
    channels = (16, 16, 32, 32) if name == "mvit_v1_base_16x4" else (8, 16, 16, 32)
    assert [f.shape[1] for f in feats] == [i["num_chs"] for i in model.feature_info] == list(channels)


def test_video_checkpoint_from_other_resolution_loads() -> None:
    src = _small("mvit_v1_base_16x4", img_size=(8, 96, 96), cls_token=True, global_pool="token")
    dst = _small("mvit_v1_base_16x4", img_size=(4, 64, 64), cls_token=True, global_pool="token")
    visattn.load_pretrained(dst, src.state_dict())
    assert dst.pos_embed_spatial.shape == (1, 16 * 16, 16) and dst.pos_embed_temporal.shape == (1, 2, 16)
    with torch.no_grad():
        assert torch.isfinite(dst(torch.randn(1, 3, 4, 64, 64))).all()


def test_reset_classifier_switches_pooling_as_timm() -> None:
    # reset_classifier(n, global_pool): "token" pools the class token (needs one), "avg" the map tokens.
    overrides = visattn.registry.get_model_class("mvitv2_tiny").test_overrides
    model = visattn.create_model("mvitv2_tiny_cls", **overrides).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, _ = model.forward_tokens(x)
        model.reset_classifier(0, "token")
        torch.testing.assert_close(model(x), tokens[:, 0])
        model.reset_classifier(0, "avg")
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="cls_token"):
        visattn.create_model("mvitv2_tiny", **overrides).reset_classifier(5, "token")
