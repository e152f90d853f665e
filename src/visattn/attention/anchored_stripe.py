"""Anchored stripe self-attention (GRL, Li et al., CVPR 2023, arXiv 2303.00748, Sec. 3.2 and Fig. 2c).

The map is cut into stripes (horizontal: S0 rows x the width / groups, or a fixed S0 x S1; vertical: the
transpose), optionally shifted by half a stripe. Inside a stripe of N pixels, instead of the N x N attention
softmax(Q K^T) V, attention goes through M = N / s^2 *anchors* - the features average-pooled by the down factor s
and linearly projected - in two steps: anchors attend to the stripe's keys, Z = softmax(A K^T) V (M x N), then
queries attend to the anchors, out = softmax(Q A^T) Z (N x M). The implied N x N map softmax(Q A^T) softmax(A K^T)
is never formed; the cost is O(H*W * S0*S1 / s^2) (linear in H*W for a fixed stripe size). Both steps are cosine
attentions with their own logit scale and continuous position bias (see ``layers/cpb.py``), as in the official code
(ofsoundof/GRL-Image-Restoration ``models/common/mixed_attn_block_efficient.py``).

Sizes that do not divide by the stripe are zero-padded at the bottom/right; padded pixels are masked as keys of
the first step, anchors are averaged over real pixels only (a pooling cell that is all padding is masked as a key
of the second step), and the output is cropped. A stripe size derived from ``stripe_groups`` is rounded up to a
multiple of the down factor. Sizes that divide are unaffected.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.checks import check_image
from ..layers.cpb import (
    CosineAttnTransform,
    attend_window_classes,
    attend_windows,
    cosine_qk,
    cpb_coords,
    cpb_index,
    dense_window_bias,
    window_classes,
)
from ..layers.partition import (
    crop_padding,
    is_symbolic,
    needs_padding,
    pad_to_multiple,
    roll_maps,
    window_partition,
    window_reverse,
)
from ..layers.pool import ceil_avg_pool2d
from ..registry import register_attention

__all__ = ["AnchorProjection", "AnchoredStripeCore", "AnchoredStripeAttention"]


class AnchorProjection(nn.Module):
    """Anchors: average-pool a channels-last map by ``down_factor`` (real pixels only), then a linear layer.

    Shape: (B, H, W, C_in) -> (B, ceil(H / s), ceil(W / s), C_out).
    """

    def __init__(self, dim: int, dim_out: int, down_factor: int):
        super().__init__()
        self.down_factor = down_factor
        self.reduction = nn.Linear(dim, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        s = self.down_factor
        x = x.permute(0, 3, 1, 2)                                          # (B, C, H, W)
        x = ceil_avg_pool2d(x, s)                                          # a border cell: mean of its real pixels
        return self.reduction(x.permute(0, 2, 3, 1))                       # (B, H/s, W/s, C_out)


class AnchoredStripeCore(nn.Module):
    """Anchored stripe attention on precomputed q, k, v and anchors (no projections).

    Args:
        num_heads: heads; q, k, v and the anchors must have a channel count divisible by it.
        stripe_size: (S0, S1); an entry may be None when the matching ``stripe_groups`` entry is set.
        stripe_groups: (G0, G1); an entry G cuts that axis into G stripes (stripe = axis length / G), None uses the
            fixed ``stripe_size`` entry.
        shift: shift the stripes by half a stripe (anchors by half an anchor stripe).
        down_factor: s, the anchor pooling factor; fixed stripe sizes must divide by it.
        cpb_hidden: width of the position-bias MLPs.
    """

    def __init__(self, num_heads: int, stripe_size: tuple[int | None, int | None],
                 stripe_groups: tuple[int | None, int | None] = (None, None), *, shift: bool = False,
                 down_factor: int = 1, cpb_hidden: int = 512):
        super().__init__()
        for s, g in zip(stripe_size, stripe_groups):
            if g is None and (s is None or s <= 0):
                raise ValueError(f"stripe_size {stripe_size} needs a positive size on each axis without a group count "
                                 f"(stripe_groups {stripe_groups})")
            if g is None and s % down_factor:
                raise ValueError(f"stripe size {s} must be divisible by the anchor down factor {down_factor}")
        self.num_heads = num_heads
        self.stripe_size = tuple(stripe_size)
        self.stripe_groups = tuple(stripe_groups)
        self.shift = shift
        self.down_factor = down_factor
        self.attn_transform1 = CosineAttnTransform(num_heads, cpb_hidden)  # anchors -> keys (step 1)
        self.attn_transform2 = CosineAttnTransform(num_heads, cpb_hidden)  # queries -> anchors (step 2)

    def geometry(self, H: int, W: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Stripe size and shift for an H x W map (official ``_get_stripe_info``)."""
        size, shift = [], []
        for d, s, g in zip((H, W), self.stripe_size, self.stripe_groups):
            if g is not None:  # ceil(ceil(d / g) / s) * s in integers: a traced d stays symbolic
                s = ((d + g - 1) // g + self.down_factor - 1) // self.down_factor * self.down_factor
            size.append(s)
            shift.append(s // 2 if self.shift and g != 1 else 0)
        return (size[0], size[1]), (shift[0], shift[1])

    def forward(self, qkv: Tensor, anchor: Tensor) -> Tensor:
        """Shape: qkv (B, H, W, 3*C) holding [q | k | v], anchor (B, ceil(H/s), ceil(W/s), C) -> (B, H, W, C)."""
        B, H, W, C3 = qkv.shape
        C, nh, df = C3 // 3, self.num_heads, self.down_factor
        size, shift = self.geometry(H, W)
        a_size = (size[0] // df, size[1] // df)
        a_shift = (shift[0] // df, shift[1] // df)
        N1, N2 = size[0] * size[1], a_size[0] * a_size[1]
        qkv, pad = pad_to_multiple(qkv, size)
        Hp, Wp = H + pad[0], W + pad[1]
        Ha, Wa = anchor.shape[1:3]
        anchor = F.pad(anchor, (0, 0, 0, Wp // df - Wa, 0, Hp // df - Ha))  # (B, Hp/s, Wp/s, C)
        if is_symbolic(*shift):  # grouped stripes traced: roll (maybe by 0) whenever a shift is configured
            shifted = self.shift and any(g != 1 for g in self.stripe_groups)
        else:
            shifted = shift != (0, 0)
        if shifted:
            qkv = roll_maps(qkv, (-shift[0], -shift[1]), (1, 2))
            anchor = roll_maps(anchor, (-a_shift[0], -a_shift[1]), (1, 2))
        windows = window_partition(qkv, size)                              # (B*nWin, S0, S1, 3C)
        n_win = windows.shape[0] // B
        q, k, v = windows.reshape(B, n_win, N1, 3, nh, C // nh).permute(3, 0, 1, 4, 2, 5).unbind(0)  # 3x(B, nWin, nh, N1, hd)
        a = window_partition(anchor, a_size).reshape(B, n_win, N2, nh, C // nh).transpose(2, 3)      # (B, nWin, nh, N2, hd)

        device = qkv.device
        coords = cpb_coords(size, a_size).to(device)
        bias1 = self.attn_transform1.bias(coords, cpb_index(size, a_size, True).to(device))   # (nh, N2, N1)
        bias2 = self.attn_transform2.bias(coords, cpb_index(size, a_size, False).to(device))  # (nh, N1, N2)
        # step 1: anchors gather from the stripe's keys; step 2: queries read the anchors' summaries
        a1, k1 = cosine_qk(a, k, self.attn_transform1.scale())
        q2, a2 = cosine_qk(q, a, self.attn_transform2.scale())
        pixels, anchors = ((Hp, Wp), size, shift), ((Hp // df, Wp // df), a_size, a_shift)
        if is_symbolic(Hp, Wp):  # traced with dynamic sizes: dense masks over all windows
            z = attend_windows(a1, k1, v, dense_window_bias(bias1, *anchors, *pixels, (H, W), shifted))
            out = attend_windows(q2, a2, z, dense_window_bias(bias2, *pixels, *anchors, (Ha, Wa), shifted))
        else:
            z = attend_window_classes(a1, k1, v, bias1, window_classes(*anchors, *pixels, (H, W)))
            out = attend_window_classes(q2, a2, z, bias2, window_classes(*pixels, *anchors, (Ha, Wa)))
        out = out.permute(0, 1, 3, 2, 4).reshape(B * n_win, size[0], size[1], C)  # (B*nWin, S0, S1, C)
        out = window_reverse(out, size, (Hp, Wp))                           # (B, Hp, Wp, C)
        if shifted:
            out = roll_maps(out, shift, (1, 2))
        if needs_padding(pad):
            out = crop_padding(out, (H, W))
        return out


@register_attention("anchored_stripe")
class AnchoredStripeAttention(nn.Module):
    """Anchored stripe self-attention as a (B, C, H, W) layer: qkv and anchor projections, attention, output proj.

    Args:
        dim: channels.
        num_heads: heads (dim must divide by it).
        stripe_size: (S0, S1), None where ``stripe_groups`` sets the axis. Horizontal stripes of 8 rows spanning a
            quarter of the width are ``stripe_size=(8, None), stripe_groups=(None, 4)``; vertical ones the transpose.
        stripe_groups: (G0, G1), see :class:`AnchoredStripeCore`.
        shift: shift the stripes by half a stripe.
        down_factor: anchor pooling factor s.
        qkv_bias: bias on the q, k, v projection.
        cpb_hidden: width of the position-bias MLPs.
    """

    def __init__(self, dim: int, *, num_heads: int = 2, stripe_size: tuple[int | None, int | None] = (8, None),
                 stripe_groups: tuple[int | None, int | None] = (None, 4), shift: bool = False, down_factor: int = 4,
                 qkv_bias: bool = True, cpb_hidden: int = 512):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim = dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.anchor = AnchorProjection(dim, dim, down_factor)
        self.stripe_attn = AnchoredStripeCore(num_heads, stripe_size, stripe_groups, shift=shift,
                                              down_factor=down_factor, cpb_hidden=cpb_hidden)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C, H, W) -> (B, C, H, W), any H, W >= 1."""
        check_image(x, self.dim, who="AnchoredStripeAttention")
        x = x.permute(0, 2, 3, 1)                                          # (B, H, W, C)
        x = self.proj(self.stripe_attn(self.qkv(x), self.anchor(x)))
        return x.permute(0, 3, 1, 2)                                       # (B, C, H, W)

    @staticmethod
    def example_kwargs() -> dict[str, object]:
        """Small constructor arguments for the generic tests: grouped width, shifted, anchors pooled by 2."""
        return {"dim": 16, "num_heads": 2, "stripe_size": (4, None), "stripe_groups": (None, 2), "shift": True,
                "down_factor": 2, "cpb_hidden": 32}
