"""GRL's attention mechanisms against dense references written from the definitions, on whole small maps.

The references build full (pixels x pixels) or (pixels x anchors) logit matrices from global coordinates - which
stripe or window each pixel falls in after the shift, its position inside it, which pixels are real - without any
partition, roll or table/index code, and share only the module's weights.
"""

from __future__ import annotations

import math

import pytest
import torch

import visattn
from visattn.attention.anchored_stripe import AnchoredStripeAttention
from visattn.attention.window_v2 import WindowAttentionV2
from visattn.layers.attend import use_fused


def _log_coords(c: torch.Tensor, norm: list[int]) -> torch.Tensor:
    # (..., 2) integer offsets -> Swin V2 log-spaced coordinates, each axis divided by its largest offset
    t = c.float() / torch.tensor([max(n, 1) for n in norm], dtype=torch.float32) * 8
    return torch.sign(t) * torch.log2(t.abs() + 1) / math.log2(8)


def _group_and_local(pos: torch.Tensor, size: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Windows of `size` on a line shifted by `shift` (not cyclic: the first `shift` positions form their own group);
    # local position = position in the rolled window.
    return torch.div(pos - shift + size, size, rounding_mode="floor"), (pos - shift) % size


def _bias(transform, coords: torch.Tensor) -> torch.Tensor:
    return 16 * torch.sigmoid(transform.cpb_mlp(coords)).permute(2, 0, 1)   # (heads, Nq, Nk)


def _scale(transform) -> torch.Tensor:
    return transform.logit_scale.clamp(max=math.log(100)).exp()           # (heads, 1, 1)


def _cos_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    # (N, heads, hd) x (M, heads, hd) -> (heads, N, M)
    q = torch.nn.functional.normalize(q, dim=-1).transpose(0, 1)
    k = torch.nn.functional.normalize(k, dim=-1).transpose(0, 1)
    return q @ k.transpose(-2, -1)


def dense_window_v2(module: WindowAttentionV2, x: torch.Tensor) -> torch.Tensor:
    """Window V2 as one (HW x HW) attention with an explicit "same shifted window, real key" mask."""
    core = module.window_attn
    _, C, H, W = x.shape
    nh = core.num_heads
    (p0, p1), (s0, s1) = core.window_size, core.shift_size
    Hp, Wp = -(-H // p0) * p0, -(-W // p1) * p1
    xp = torch.zeros(1, Hp, Wp, C)
    xp[0, :H, :W] = x[0].permute(1, 2, 0)
    q, k, v = module.qkv(xp.view(-1, C)).view(-1, 3, nh, C // nh).unbind(1)  # (Np, nh, hd)
    ys, xs = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    gy, ly = _group_and_local(ys, p0, s0)
    gx, lx = _group_and_local(xs, p1, s1)
    same = (gy[:, None] == gy[None]) & (gx[:, None] == gx[None])
    real = (ys < H) & (xs < W)
    offsets = torch.stack([ly[:, None] - ly[None], lx[:, None] - lx[None]], dim=-1)
    logits = _cos_logits(q, k) * _scale(core.attn_transform)
    logits = logits + _bias(core.attn_transform, _log_coords(offsets, [p0 - 1, p1 - 1]))
    logits = logits.masked_fill(~(same & real[None]), float("-inf"))
    out = logits.softmax(-1) @ v.transpose(0, 1)                           # (nh, Np, hd)
    out = module.proj(out.transpose(0, 1).reshape(Hp, Wp, C))
    return out[:H, :W].permute(2, 0, 1)[None]


def dense_anchored_stripe(module: AnchoredStripeAttention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Anchored stripe attention as explicit matrices: (Np x Na) query->anchor and (Na x Np) anchor->key softmaxes,
    and the implied dense (Np x Np) map M = softmax(Q A^T) softmax(A K^T) over the padded map of Np pixels.

    Returns the output, M, and the (Np,) mask of real pixels.
    """
    core = module.stripe_attn
    _, C, H, W = x.shape
    nh, df = core.num_heads, core.down_factor
    (S0, S1), (s0, s1) = core.geometry(H, W)
    A0, A1 = S0 // df, S1 // df
    Hp, Wp = -(-H // S0) * S0, -(-W // S1) * S1
    img = x[0].permute(1, 2, 0)                                            # (H, W, C)
    xp = torch.zeros(Hp, Wp, C)
    xp[:H, :W] = img
    q, k, v = module.qkv(xp.view(-1, C)).view(-1, 3, nh, C // nh).unbind(1)  # (Np, nh, hd)
    # anchors: the mean of the real pixels of each s x s cell, then the linear projection
    Ha, Wa = Hp // df, Wp // df
    pooled = torch.zeros(Ha, Wa, C)
    anchor_real = torch.zeros(Ha, Wa, dtype=torch.bool)
    for i in range(Ha):
        for j in range(Wa):
            cell = img[i * df:(i + 1) * df, j * df:(j + 1) * df]
            if cell.numel():
                pooled[i, j] = cell.reshape(-1, C).mean(0)
                anchor_real[i, j] = True
    a = module.anchor.reduction(pooled).view(-1, nh, C // nh)               # (Na, nh, hd)

    ys, xs = torch.meshgrid(torch.arange(Hp), torch.arange(Wp), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    ya, xa = torch.meshgrid(torch.arange(Ha), torch.arange(Wa), indexing="ij")
    ya, xa = ya.flatten(), xa.flatten()
    gy, ly = _group_and_local(ys, S0, s0)
    gx, lx = _group_and_local(xs, S1, s1)
    gya, lya = _group_and_local(ya, A0, s0 // df)
    gxa, lxa = _group_and_local(xa, A1, s1 // df)
    same = (gy[:, None] == gya[None]) & (gx[:, None] == gxa[None])         # (Np, Na)
    px_real = (ys < H) & (xs < W)
    # GRL's offsets between a window position w and an anchor position a (both counted from 0 in their grids)
    c0, c1 = (S0 - A0) // 2, (S1 - A1) // 2
    norm = [S0 - 1 - c0, S1 - 1 - c1]
    w2a = torch.stack([ly[:, None] - lya[None] - c0, lx[:, None] - lxa[None] - c1], dim=-1)
    a2w = torch.stack([lya[:, None] - ly[None] + (S0 - A0) - c0, lxa[:, None] - lx[None] + (S1 - A1) - c1], dim=-1)

    t1, t2 = core.attn_transform1, core.attn_transform2
    e = _cos_logits(a, k) * _scale(t1) + _bias(t1, _log_coords(a2w, norm))   # (nh, Na, Np)
    e = e.masked_fill(~(same.T & px_real[None]), float("-inf"))
    d = _cos_logits(q, a) * _scale(t2) + _bias(t2, _log_coords(w2a, norm))   # (nh, Np, Na)
    d = d.masked_fill(~(same & anchor_real.flatten()[None]), float("-inf"))
    e = torch.nan_to_num(e.softmax(-1))                                    # anchors with no real key: unused
    M = d.softmax(-1) @ e                                                  # (nh, Np, Np) the implied dense map
    out = M @ v.transpose(0, 1)                                            # (nh, Np, hd)
    out = module.proj(out.transpose(0, 1).reshape(Hp, Wp, C))
    return out[:H, :W].permute(2, 0, 1)[None], M, px_real


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size", [(8, 12), (7, 10), (1, 5)])
def test_window_v2_equals_dense_shifted_window_attention(shift: bool, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    module = WindowAttentionV2(8, num_heads=2, window_size=4, shift=shift, cpb_hidden=16).eval()
    x = torch.randn(1, 8, *size)
    with torch.no_grad(), use_fused(False):
        torch.testing.assert_close(module(x), dense_window_v2(module, x), atol=1e-5, rtol=1e-4)


def test_window_v2_shift_mask_keeps_borders_apart() -> None:
    # With a shift, pixel (0, 0) shares its rolled window with the far corner; the mask must keep them apart, so
    # changing the far corner must not change pixel (0, 0) (and without the mask it would).
    torch.manual_seed(0)
    module = WindowAttentionV2(8, num_heads=2, window_size=4, shift=True, cpb_hidden=16).eval()
    x = torch.randn(1, 8, 8, 8)
    x2 = x.clone()
    x2[..., -1, -1] += 5
    with torch.no_grad():
        out, out2 = module(x), module(x2)
    assert torch.equal(out[..., 0, 0], out2[..., 0, 0])
    assert not torch.allclose(out[..., 6, 6], out2[..., 6, 6])  # same shifted window as the corner: it sees it


@pytest.mark.parametrize("geometry", [
    # (query map, window, shift), (key map, window, shift), real key rows / columns
    (((8, 12), (4, 4), (2, 2)), ((8, 12), (4, 4), (2, 2)), (8, 12)),      # shifted windows, no padding
    (((8, 12), (4, 4), (2, 2)), ((8, 12), (4, 4), (2, 2)), (7, 10)),      # shifted windows over padding
    (((8, 12), (4, 4), (0, 0)), ((8, 12), (4, 4), (0, 0)), (5, 12)),      # padding only
    (((16, 32), (8, 16), (4, 8)), ((4, 8), (2, 4), (1, 2)), (3, 7)),      # pixels -> anchors, shifted, padded
    (((4, 8), (2, 4), (1, 2)), ((16, 32), (8, 16), (4, 8)), (13, 30)),    # anchors -> pixels
    (((12, 8), (4, 8), (2, 0)), ((12, 8), (4, 8), (2, 0)), (12, 8)),      # shifted on one axis only
])
def test_window_classes_reassemble_the_dense_masks(geometry) -> None:
    # Every window in exactly one class, and each class's mask equal to that window's dense shift + padding mask.
    from visattn.layers.attend import key_padding_bias
    from visattn.layers.cpb import shift_region_mask, window_classes
    from visattn.layers.partition import valid_token_mask, window_partition

    (q_map, q_win, q_shift), (k_map, k_win, k_shift), real = geometry
    dense = shift_region_mask(q_map, q_win, q_shift, k_map, k_win, k_shift)          # (nWin, Nq, Nk)
    valid = valid_token_mask(*real, (k_map[0] - real[0], k_map[1] - real[1]))        # (1, Hk, Wk, 1)
    valid = torch.roll(valid, (-k_shift[0], -k_shift[1]), (1, 2))
    valid = window_partition(valid, k_win).reshape(dense.shape[0], -1)                # (nWin, Nk)
    dense = dense + key_padding_bias(valid, torch.float32)[:, 0]                     # (nWin, Nq, Nk)
    seen = torch.zeros(dense.shape[0], dtype=torch.long)
    for index, mask in window_classes(q_map, q_win, q_shift, k_map, k_win, k_shift, real):
        seen[index] += 1
        expected = dense[index]
        if mask is None:
            assert torch.all(expected == 0)
        else:
            assert torch.equal(mask.expand_as(expected), expected)
    assert torch.all(seen == 1)


@pytest.mark.parametrize("module", ["window", "stripe"])
def test_batched_windows_equal_single_images(module: str) -> None:
    # Batch 1 gathers each mask class's windows, larger batches (small windows) build one dense mask: same outputs.
    torch.manual_seed(0)
    if module == "window":
        m = WindowAttentionV2(8, num_heads=2, window_size=4, shift=True, cpb_hidden=16).eval()
    else:
        m = AnchoredStripeAttention(8, num_heads=2, shift=True, cpb_hidden=16, stripe_size=(8, 16),
                                    stripe_groups=(None, None), down_factor=2).eval()
    x = torch.randn(4, 8, 17, 21)
    with torch.no_grad():
        single = torch.cat([m(x[i:i + 1]) for i in range(4)])
        torch.testing.assert_close(m(x), single, atol=1e-6, rtol=0)


STRIPES = {
    "horizontal_groups": dict(stripe_size=(4, None), stripe_groups=(None, 2), down_factor=2),
    "vertical_groups": dict(stripe_size=(None, 4), stripe_groups=(2, None), down_factor=2),
    "fixed": dict(stripe_size=(8, 8), stripe_groups=(None, None), down_factor=4),
    "no_anchor_pooling": dict(stripe_size=(2, 6), stripe_groups=(None, None), down_factor=1),
}


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("kind", sorted(STRIPES))
@pytest.mark.parametrize("size", [(8, 16), (9, 13)])
def test_anchored_stripe_two_steps_equal_dense_formulation(kind: str, shift: bool, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    module = AnchoredStripeAttention(8, num_heads=2, shift=shift, cpb_hidden=16, **STRIPES[kind]).eval()
    x = torch.randn(1, 8, *size)
    with torch.no_grad(), use_fused(False):
        out = module(x)
        dense, M, real = dense_anchored_stripe(module, x)
    torch.testing.assert_close(out, dense, atol=1e-5, rtol=1e-4)
    # for real query pixels the implied dense map is row-stochastic and puts no weight on padding
    M = M[:, real]
    rows = M.sum(-1)
    torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
    assert torch.all(M[..., ~real] == 0)


def test_anchored_stripe_is_local_to_its_stripe() -> None:
    # Unshifted horizontal stripes of 4 rows: rows 4.. never influence rows 0..3.
    torch.manual_seed(0)
    module = AnchoredStripeAttention(8, num_heads=2, stripe_size=(4, None), stripe_groups=(None, 1),
                                     down_factor=2, cpb_hidden=16).eval()
    x = torch.randn(1, 8, 12, 10)
    x2 = x.clone()
    x2[..., 4:, :] = torch.randn_like(x2[..., 4:, :])
    with torch.no_grad():
        torch.testing.assert_close(module(x)[..., :4, :], module(x2)[..., :4, :], atol=0, rtol=0)
        assert not torch.allclose(module(x)[..., 4:8, :], module(x2)[..., 4:8, :])


def test_anchored_stripe_cost_is_linear_in_pixels() -> None:
    # Fixed stripes: doubling the map doubles the number of stripes, each with the same (N x N/s^2) work; the
    # logit matrices per stripe keep their size. Checked through the geometry the module reports.
    core = AnchoredStripeAttention(8, stripe_size=(4, 8), stripe_groups=(None, None), down_factor=4).stripe_attn
    assert core.geometry(16, 32)[0] == core.geometry(64, 128)[0] == (4, 8)


def test_invalid_stripe_settings_raise() -> None:
    with pytest.raises(ValueError, match="divisible"):
        AnchoredStripeAttention(8, stripe_size=(6, 8), stripe_groups=(None, None), down_factor=4)
    with pytest.raises(ValueError, match="positive size"):
        AnchoredStripeAttention(8, stripe_size=(None, 8), stripe_groups=(None, None))
    with pytest.raises(ValueError, match="num_heads"):
        visattn.create_attention("window_v2", dim=10, num_heads=3)


EXPORTED = {
    "window_v2_shifted": lambda: WindowAttentionV2(8, num_heads=2, window_size=4, shift=True, cpb_hidden=16),
    "stripe_fixed_shifted": lambda: AnchoredStripeAttention(8, num_heads=2, shift=True, cpb_hidden=16,
                                                            **STRIPES["fixed"]),
    "stripe_groups_shifted": lambda: AnchoredStripeAttention(8, num_heads=2, shift=True, cpb_hidden=16,
                                                             **STRIPES["vertical_groups"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(EXPORTED))
def test_attention_exports_with_dynamic_sizes(kind: str) -> None:
    # One torch.export trace (batch, height, width symbolic) must equal eager at sizes that divide, need padding, are
    # smaller than a window, and at batch 1. Traced, the shift masks, position tables and (grouped stripes) the
    # stripe size and shift are built from symbolic sizes. The per-size table caches start empty, so a table cached
    # during the trace (a fake tensor) would reach the eager calls after it.
    from visattn.export import export_program
    from visattn.layers import cpb

    for cache in (cpb.cpb_coords, cpb.cpb_index, cpb.shift_region_mask, cpb.window_classes):
        cache.cache_clear()
    torch.manual_seed(0)
    module = EXPORTED[kind]().eval()
    program = export_program(module, torch.randn(2, 8, 11, 19)).module()
    with torch.no_grad():
        for b, h, w in [(2, 16, 24), (1, 9, 13), (3, 5, 7)]:
            x = torch.randn(b, 8, h, w)
            expected = module(x)
            assert type(expected) is torch.Tensor                           # not a fake tensor left by the trace
            torch.testing.assert_close(program(x), expected, atol=1e-5, rtol=0)


def test_per_size_tables_stay_within_their_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # Evaluating images of many sizes must not grow the cached tables without bound: past the budget the least
    # recently used sizes go, and a size asked for again is rebuilt with the same values.
    from visattn.layers import cpb

    monkeypatch.setattr(cpb, "_CACHE_BYTES", 2**20)
    cpb.cpb_index.cache_clear()
    first = cpb.cpb_index((16, 32), (4, 8), True).clone()               # 128 x 512 int64: 0.5 MiB
    for s in range(17, 24):
        cpb.cpb_index((s, 32), (4, 8), True)
        assert cpb.cpb_index.cache_bytes() <= 2**20
    assert torch.equal(cpb.cpb_index((16, 32), (4, 8), True), first)
    big = cpb.cpb_index((64, 128), (16, 32), True)                        # 32 MiB alone: kept, as the newest
    assert cpb.cpb_index.cache_bytes() == big.numel() * 8
    cpb.cpb_index.cache_clear()
