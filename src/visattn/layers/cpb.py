"""Cosine attention with a learnable logit scale and a continuous position bias (Swin V2, used by GRL).

Logits are ``cos(q, k) * exp(min(logit_scale, log 100)) + 16 * sigmoid(MLP(coords))``: the similarity is bounded,
a per-head learnable temperature sets its sharpness, and a small MLP maps log-spaced relative coordinates to a
bias, so one set of weights serves any window or stripe size.

GRL also lets a window of queries attend to a smaller window of *anchors* (the window average-pooled by a down
factor). The relative coordinates then compare positions in two grids of different sizes, both counted from 0; the
offsets below reproduce the official tables exactly (ofsoundof/GRL-Image-Restoration ``models/common/ops.py``,
``get_relative_coords_table_all`` and ``get_relative_position_index_simple``), so released weights see the same
bias.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attend import attend
from .partition import (
    is_symbolic,
    needs_padding,
    roll_maps,
    symbolic_reshape,
    valid_token_mask,
    window_partition,
)

__all__ = ["CosineAttnTransform", "cpb_coords", "cpb_index", "shift_region_mask", "window_classes",
           "dense_window_bias", "mask_like", "cosine_qk", "attend_windows", "attend_window_classes"]

# Swin V2 / GRL clamp the learnable logit scale at log(1 / 0.01), i.e. a temperature of at most 100.
_MAX_LOGIT_SCALE = math.log(100.0)


# Bytes of tables each per-size cache may hold: GRL's stripe tables are large (an (8192, 512) index is 32 MiB), and
# evaluating images of many sizes must not grow memory without bound. One forward of GRL at one size needs about
# ten entries per cache, well inside this.
_CACHE_BYTES = 512 * 2**20


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _per_size_cache(build: Callable[..., Any]) -> Callable[..., Any]:
    """``build`` cached per argument tuple in eager mode (least recently used first out past ``_CACHE_BYTES``), called
    directly while traced.

    A symbolic size cannot key the cache, and while torch.export / torch.compile traces even fixed sizes, a cached
    tensor would be a fake one that outlives the trace and later eager calls would receive it.
    """
    cached: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
    total = 0

    @functools.wraps(build)
    def table(*args: Any) -> Any:
        nonlocal total
        sizes = [n for arg in args if isinstance(arg, tuple) for n in arg]
        if is_symbolic(*sizes) or torch.compiler.is_compiling():
            return build(*args)
        if args in cached:
            cached.move_to_end(args)
            return cached[args][0]
        value = build(*args)
        nbytes = _tensor_bytes(value)
        cached[args] = (value, nbytes)
        total += nbytes
        while total > _CACHE_BYTES and len(cached) > 1:                 # the newest entry always stays
            total -= cached.popitem(last=False)[1][1]
        return value

    def cache_clear() -> None:
        nonlocal total
        cached.clear()
        total = 0

    table.cache_clear = cache_clear                                     # type: ignore[attr-defined]
    table.cache_bytes = lambda: total                                   # type: ignore[attr-defined]
    return table


@_per_size_cache
def cpb_coords(size: tuple[int, int], anchor_size: tuple[int, int] | None = None) -> Tensor:
    """Log-spaced relative coordinates (T0, T1, 2) fed to the bias MLP, on the CPU.

    For a window of ``size`` attending to itself (``anchor_size`` None) the offsets run from -(S-1) to S-1. With an
    anchor grid of size A = S // down_factor, they run from -(A-1) - (S-A)//2 to (S-1) - (S-A)//2 (T = S + A - 1
    values per axis). Each axis is divided by its largest offset, scaled to [-8, 8] and mapped through
    sign(t) * log2(1 + |t|) / log2(8) (Swin V2, Eq. 4).

    Cached per size in eager mode; built in the graph while traced (see :func:`_per_size_cache`).
    """
    anchor_size = anchor_size or size
    axes = []
    for s, a in zip(size, anchor_size):
        lo, hi = -(a - 1) - (s - a) // 2, (s - 1) - (s - a) // 2
        top = torch.sym_max(hi, 1) if is_symbolic(hi) else max(hi, 1)  # max() of a SymInt would guard
        axes.append(torch.arange(lo, hi + 1, dtype=torch.float32, device="cpu") / top)
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1) * 8   # (T0, T1, 2) in [-8, 8]
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)


@_per_size_cache
def cpb_index(size: tuple[int, int], anchor_size: tuple[int, int] | None = None, anchor_queries: bool = False) -> Tensor:
    """(Nq, Nk) flat index into the (T0, T1) coordinate table for every (query, key) pair, on the CPU.

    Without anchors, queries and keys are the S0*S1 window pixels and the offset is query - key. With anchors,
    ``anchor_queries=False`` pairs window queries with anchor keys (offset window - anchor), ``True`` anchor
    queries with window keys (offset anchor - window); both grids are counted from 0.

    Cached per size in eager mode; built in the graph while traced.
    """
    anchor_size = anchor_size or size

    def grid(shape: tuple[int, int]) -> Tensor:
        rows, cols = torch.meshgrid(torch.arange(shape[0], device="cpu"), torch.arange(shape[1], device="cpu"),
                                    indexing="ij")
        n = shape[0] * shape[1]  # meshgrid gives expanded views; traced, flattening one guarded on a side being 1
        return torch.stack([symbolic_reshape(rows, (n,)), symbolic_reshape(cols, (n,))])  # (2, N)

    win, anc = grid(size), grid(anchor_size)
    q, k = (anc, win) if anchor_queries else (win, anc)
    # shift the smallest offset to 0: -(S-1) for anchor queries, -(A-1) for window queries
    offset = [(s - 1) if anchor_queries else (a - 1) for s, a in zip(size, anchor_size)]
    d = q[:, :, None] - k[:, None, :]                                    # (2, Nq, Nk)
    width = size[1] + anchor_size[1] - 1                                 # T1
    return (d[0] + offset[0]) * width + (d[1] + offset[1])


def _region_labels(size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> Tensor:
    # After a cyclic roll by -shift, the last window row/column mixes pixels from opposite image borders; label the
    # three bands (0 .. S-w, S-w .. S-s, S-s .. S) per axis so pixels that were not neighbours can be told apart.
    # Comparisons, not slice writes, so symbolic sizes (torch.export) trace; a zero shift gives one region.
    labels = []
    for n, w, s in zip(size, window, shift):
        pos = torch.arange(n, device="cpu")
        lab = (pos >= n - w).long() + (pos >= n - s).long()
        if is_symbolic(s):
            labels.append(lab * torch.sym_min(s, 1))                     # 0 or 1 without a guard on s > 0
        else:
            labels.append(lab if s > 0 else torch.zeros_like(lab))
    return labels[0][:, None] * 3 + labels[1][None, :]                   # (H, W)


@_per_size_cache
def shift_region_mask(size: tuple[int, int], window: tuple[int, int], shift: tuple[int, int],
                      key_size: tuple[int, int] | None = None, key_window: tuple[int, int] | None = None,
                      key_shift: tuple[int, int] | None = None, value: float = -100.0) -> Tensor:
    """(nW, Nq, Nk) additive mask of shifted-window attention: 0 within a region, ``value`` across regions.

    Queries live on a (H, W) map cut into ``window`` tiles after a roll by -``shift``; keys on the same map, or on a
    smaller one (anchors: ``key_size``, ``key_window``, ``key_shift``). ``value`` is -100, not -inf, as in Swin and
    GRL's official code (``calculate_mask``), whose released weights were trained with it.

    Cached per size in eager mode; built in the graph while traced.
    """
    key_size, key_window, key_shift = key_size or size, key_window or window, key_shift or shift

    def per_window(lab: Tensor, win: tuple[int, int]) -> Tensor:
        H, W = lab.shape
        lab = lab.view(H // win[0], win[0], W // win[1], win[1])       # (nH, w0, nW, w1)
        return symbolic_reshape(lab.permute(0, 2, 1, 3), (-1, win[0] * win[1]))  # (nWin, w0*w1)

    q = per_window(_region_labels(size, window, shift), window)
    k = per_window(_region_labels(key_size, key_window, key_shift), key_window)
    mask = torch.zeros(q.shape[0], q.shape[1], k.shape[1], device="cpu")
    return mask.masked_fill(q[:, :, None] != k[:, None, :], value)      # (nWin, Nq, Nk)


def _axis_window_groups(query: tuple[int, int, int], key: tuple[int, int, int],
                        key_real: int) -> list[tuple[tuple, list[int]]]:
    # One axis of the windows: (map length, window, shift) of the query and key grids, and how many leading key
    # positions are real (the rest is padding, before the roll). Window j's mask along this axis is fixed by the
    # region labels of its query and key positions and which of its keys are real; windows with equal ones group.
    def label(pos: int, n: int, w: int, s: int) -> int:                  # the bands of _region_labels
        return int(pos >= n - w) + int(pos >= n - s) if s > 0 else 0

    (nq, wq, sq), (nk, wk, sk) = query, key
    groups: dict[tuple, list[int]] = {}
    for j in range(nq // wq):
        q_labels = tuple(label(j * wq + i, nq, wq, sq) for i in range(wq))
        k_labels = tuple(label(j * wk + i, nk, wk, sk) for i in range(wk))
        k_real = tuple((j * wk + i + sk) % nk < key_real for i in range(wk))  # rolled position -> original one
        groups.setdefault((q_labels, k_labels, k_real), []).append(j)
    return list(groups.items())


@_per_size_cache
def window_classes(query_map: tuple[int, int], query_window: tuple[int, int], query_shift: tuple[int, int],
                   key_map: tuple[int, int], key_window: tuple[int, int], key_shift: tuple[int, int],
                   key_real: tuple[int, int], value: float = -100.0) -> list[tuple[Tensor, Tensor | None]]:
    """The windows of a (shifted, padded) window attention grouped by their mask: [(window indices, mask), ...].

    Queries live on ``query_map`` cut into ``query_window`` tiles after a roll by -``query_shift``, keys likewise on
    ``key_map`` (the same map, or GRL's anchors); the first ``key_real`` rows / columns of the key map are real, the
    rest padding. A window's mask is the sum of :func:`shift_region_mask` (``value`` across regions) and the key
    padding mask (the most negative float on padded keys); both are products of a row and a column pattern, and only
    the last one or two window rows and columns differ from the rest. So instead of one (nWin, Nq, Nk) mask - at a
    896 x 896 map GRL's layers each built several of over 1 GB - each class of windows gets one (Nq, Nk) mask, None
    where it is all zero (no shift, no padding: a single class of every window). Flat indices count windows row-major.

    Sizes must be concrete; traced with symbolic ones, build the dense masks instead. Cached per size in eager mode.
    """
    rows = _axis_window_groups((query_map[0], query_window[0], query_shift[0]),
                               (key_map[0], key_window[0], key_shift[0]), key_real[0])
    cols = _axis_window_groups((query_map[1], query_window[1], query_shift[1]),
                               (key_map[1], key_window[1], key_shift[1]), key_real[1])
    n_cols = query_map[1] // query_window[1]
    Nq, Nk = query_window[0] * query_window[1], key_window[0] * key_window[1]
    classes = []
    for (q_rows, k_rows, real_rows), row_ids in rows:
        for (q_cols, k_cols, real_cols), col_ids in cols:
            mask = None  # decided on the label tuples, not on tensors: torch.compile traces this with fake ones
            if len({*q_rows, *k_rows}) > 1 or len({*q_cols, *k_cols}) > 1 or not all(real_rows + real_cols):
                cross_rows = torch.tensor(q_rows)[:, None] != torch.tensor(k_rows)[None, :]   # (wq0, wk0)
                cross_cols = torch.tensor(q_cols)[:, None] != torch.tensor(k_cols)[None, :]   # (wq1, wk1)
                cross = (cross_rows[:, None, :, None] | cross_cols[None, :, None, :]).reshape(Nq, Nk)
                real = (torch.tensor(real_rows)[:, None] & torch.tensor(real_cols)[None, :]).reshape(1, Nk)
                mask = torch.zeros(Nq, Nk).masked_fill(cross, value).masked_fill(~real, torch.finfo(torch.float32).min)
            index = (torch.tensor(row_ids)[:, None] * n_cols + torch.tensor(col_ids)[None, :]).reshape(-1)
            classes.append((index, mask))
    return classes


def mask_like(mask: Tensor, bias: Tensor) -> Tensor:
    """A float32 additive ``mask`` in ``bias``'s device and dtype, its most negative values clamped to the dtype's
    own finite minimum (float32's minimum would round to -inf in bfloat16 and float16)."""
    return mask.to(bias.device).clamp(min=torch.finfo(bias.dtype).min).to(bias.dtype)


def dense_window_bias(bias: Tensor, query_map: tuple[int, int], query_window: tuple[int, int],
                      query_shift: tuple[int, int], key_map: tuple[int, int], key_window: tuple[int, int],
                      key_shift: tuple[int, int], key_real: tuple[int, int], shifted: bool) -> Tensor:
    """``bias`` (nh, Nq, Nk) plus every window's shift and key-padding mask: (nWin, nh, Nq, Nk), or ``bias`` itself
    when neither applies. The masks of :func:`window_classes` (same arguments) one per window: the form that traces
    with symbolic sizes (torch.export), where the grouping cannot be computed."""
    device = bias.device
    if shifted:
        region = shift_region_mask(query_map, query_window, query_shift, key_map, key_window, key_shift)
        bias = bias + mask_like(region, bias)[:, None]                  # (nWin, nh, Nq, Nk)
    pad = (key_map[0] - key_real[0], key_map[1] - key_real[1])
    if needs_padding(pad):                                              # always while traced (amounts may be 0)
        valid = valid_token_mask(*key_real, pad, device)                # (1, Hk, Wk, 1)
        if shifted:
            valid = roll_maps(valid, (-key_shift[0], -key_shift[1]), (1, 2))
        valid = window_partition(valid, key_window).reshape(-1, key_window[0] * key_window[1])  # (nWin, Nk)
        # set, not added: -100 (shift) plus the dtype's minimum would overflow to -inf in float16
        bias = torch.where(valid[:, None, None, :], bias, torch.finfo(bias.dtype).min)  # (nWin, nh, Nq, Nk)
    return bias


def cosine_qk(q: Tensor, k: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Unit-normalise q and k along the last dimension and fold the per-head scale (heads, 1, 1) into q.

    ``attend(q, k, v, scale=1.0)`` on the result gives cosine-similarity attention.
    """
    # F.normalize's default eps (1e-12) is 0 in float16, where zero (padded) tokens would give 0 / 0
    eps = max(1e-12, torch.finfo(q.dtype).tiny)
    return F.normalize(q, dim=-1, eps=eps) * scale.to(q.dtype), F.normalize(k, dim=-1, eps=eps)


def attend_windows(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """``attend(..., scale=1)`` over windows: q (B, nWin, nh, Nq, hd), k and v (B, nWin, nh, Nk, hd).

    ``bias`` is (nh, Nq, Nk) when every window shares it, or (nWin, nh, Nq, Nk) with per-window masks; either way it
    broadcasts over the batch without being copied B times.

    Shape: returns (B, nWin, nh, Nq, hd_v).
    """
    B, n_win, nh, Nq, hd = q.shape
    Nk, hd_v = k.shape[-2], v.shape[-1]  # explicit sizes, no -1: inferring one divides symbolic sizes (a guard)
    if bias.ndim == 4:
        lead, bias = (B, n_win * nh), bias.reshape(n_win * nh, Nq, Nk)    # windows folded into the heads
    else:
        lead = (B * n_win, nh)                                           # windows folded into the batch
    out = attend(q.reshape(*lead, Nq, hd), k.reshape(*lead, Nk, hd), v.reshape(*lead, Nk, hd_v),
                 bias=bias, scale=1.0)                                   # (*lead, Nq, hd_v)
    return out.view(B, n_win, nh, Nq, hd_v)


def attend_window_classes(q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                          classes: list[tuple[Tensor, Tensor | None]]) -> Tensor:
    """:func:`attend_windows` with a shared (nh, Nq, Nk) ``bias`` plus one mask per class of windows
    (:func:`window_classes`): each class's windows are gathered and attended together.

    Shape: q (B, nWin, nh, Nq, hd), k and v (B, nWin, nh, Nk, hd) -> (B, nWin, nh, Nq, hd_v).
    """
    if len(classes) == 1:
        mask = classes[0][1]
        return attend_windows(q, k, v, bias if mask is None else bias + mask_like(mask, bias))
    B, n_win, _, Nq, hd = q.shape
    Nk = k.shape[-2]
    if Nq * Nk <= B * (Nq + 2 * Nk) * hd:
        # Small windows: one (nWin, Nq, Nk) mask costs less than gathering each class's q, k, v. Measured, a shifted
        # WindowAttentionV2 (dim 64, 2 heads) on a 224 x 224 map, 2 threads: window 4 dense 77 ms / classes 101 ms,
        # window 8 100 / 102, window 16 108 / 94; the rule picks dense for the first two.
        masks = torch.zeros(n_win, Nq, Nk, device=bias.device, dtype=bias.dtype)
        for index, mask in classes:
            if mask is not None:
                masks[index.to(bias.device)] = mask_like(mask, bias)
        return attend_windows(q, k, v, bias + masks[:, None])           # bias (nWin, nh, Nq, Nk)
    out = None
    for index, mask in classes:
        index = index.to(q.device)
        part = attend_windows(q.index_select(1, index), k.index_select(1, index), v.index_select(1, index),
                              bias if mask is None else bias + mask_like(mask, bias))  # (B, n, nh, Nq, hd_v)
        if out is None:
            out = part.new_empty(q.shape[0], q.shape[1], *part.shape[2:])  # (B, nWin, nh, Nq, hd_v)
        out.index_copy_(1, index, part)
    return out


class CosineAttnTransform(nn.Module):
    """Per-head logit scale and continuous position bias of one cosine attention.

    Args:
        num_heads: attention heads.
        hidden: width of the bias MLP (512 in Swin V2 and GRL).

    The parameter names (``logit_scale``, ``cpb_mlp.0``, ``cpb_mlp.2``) are those of GRL's ``AffineTransform``.
    """

    def __init__(self, num_heads: int, hidden: int = 512):
        super().__init__()
        self.num_heads = num_heads
        # Initial temperature 10 (Swin V2 / GRL AffineTransform).
        self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_heads, bias=False))

    def scale(self) -> Tensor:
        """(heads, 1, 1) multiplicative logit scale."""
        return self.logit_scale.clamp(max=_MAX_LOGIT_SCALE).exp()

    def bias(self, coords: Tensor, index: Tensor) -> Tensor:
        """(heads, Nq, Nk) position bias from a (T0, T1, 2) coordinate table and a (Nq, Nk) index into it."""
        # Swin V2 bounds the bias to 16 * sigmoid; applied to the small table before the gather (the same values),
        # and gathered head-major so the (heads, Nq, Nk) result is contiguous, as SDPA's mask wants it.
        # the coordinate tables are float32 (cached for every dtype): the MLP runs in its weights' dtype
        coords = coords.to(self.cpb_mlp[0].weight.dtype)
        table = 16 * torch.sigmoid(self.cpb_mlp(coords).view(-1, self.num_heads))  # (T0*T1, heads)
        bias = table.t().contiguous().index_select(1, index.reshape(-1))  # (heads, Nq*Nk)
        return bias.view(self.num_heads, *index.shape)                   # (heads, Nq, Nk)
