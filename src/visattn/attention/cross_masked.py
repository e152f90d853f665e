"""Cross masked attention (CAT-Net, Lin et al., MICCAI 2023, arXiv 2303.13867), preceded by self-attention.

Two feature maps meet: queries come from one (``x``), keys and values from the other (``context``), and the keys
are restricted to the foreground of ``context`` by its mask: a pixel's attention weight is multiplied by its mask
value, i.e. the logits get ``log(mask)``. A background pixel (mask 0) gets weight exactly 0, so whatever its
features hold never reaches the output; a soft mask (a pixel only partly covered at feature resolution) weighs the
pixel by its foreground fraction. If a sample's mask is empty, its cross-attention output is zero (nothing to
transfer) instead of a uniform average over background. Before the cross step, ``x`` goes through plain global
self-attention. Both steps are post-norm residual, ``LN(x + Attn(x))``, as in the paper's Fig. 1.

Cost: self-attention O((H*W)^2 * C), cross-attention O(H*W * Hc*Wc * C); both are global (CAT-Net runs them on
1/8-resolution features), so any H, W works without padding or partitions, and ``x`` and ``context`` may differ
in size. With neither ``context`` nor ``context_mask`` given the module attends ``x`` to itself, unmasked.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.attend import attend
from ..layers.checks import check_image
from ..layers.partition import symbolic_reshape
from ..registry import register_attention

__all__ = ["MaskedMultiheadAttention", "CrossMaskedAttention", "mask_bias"]


def mask_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, M) key mask in [0, 1] -> (B, 1, 1, M) additive logits bias ``log(mask)``; mask 0 -> the most negative
    finite value, so the key's softmax weight underflows to exactly 0 (finite, unlike -inf, if a row is all 0)."""
    mask = mask.to(dtype)
    tiny = torch.finfo(dtype).tiny
    bias = torch.where(mask > 0, mask.clamp_min(tiny).log(), torch.full_like(mask, torch.finfo(dtype).min))
    return bias[:, None, None, :]                                      # (B, 1, 1, M)


class MaskedMultiheadAttention(nn.Module):
    """Multi-head attention of ``x`` tokens over ``context`` tokens whose keys are weighted by a mask.

    Args:
        dim: channels of both token sets.
        num_heads: attention heads (dim must divide).
        qkv_bias: bias on the q, k, v projections.
    """

    def __init__(self, dim: int, *, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """Shape: x (B, N, C), context (B, M, C), key_mask (B, M) in [0, 1] or None -> (B, N, C)."""
        B, N, C = x.shape
        M = context.shape[1]
        q = self.q(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)         # (B, nh, N, hd)
        k, v = self.kv(context).view(B, M, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, nh, M, hd)
        bias = None if key_mask is None else mask_bias(key_mask, q.dtype)
        out = attend(q, k, v, bias=bias)                               # (B, nh, N, hd)
        out = self.proj(symbolic_reshape(out.transpose(1, 2), (B, N, C)))  # (B, N, C)
        if key_mask is not None:
            # An all-background context has nothing to give: zero, not a uniform average of background pixels.
            out = out * (key_mask > 0).any(dim=1).to(out.dtype)[:, None, None]
        return out


@register_attention("cross_masked")
class CrossMaskedAttention(nn.Module):
    """CAT-Net's attention step: ``x = LN(x + SelfAttn(x))``, then ``x = LN(x + CrossAttn(x, context, mask))``.

    The model (``models/catnet.py``) calls :meth:`self_attend` on both branches first and then :meth:`cross_attend`
    with the *other* branch's self-attended tokens; :meth:`forward` is the stand-alone drop-in, where ``context`` is
    used as given, so its masked pixels provably carry no information into the output.

    Args:
        dim: channels of ``x`` and ``context``.
        num_heads: heads of both attentions.
        qkv_bias: bias on the q, k, v projections.
        norm_eps: LayerNorm epsilon.
        cross: False builds the self-attention only (CAT-Net's one-direction ablation keeps the other branch so).
    """

    def __init__(self, dim: int, *, num_heads: int = 8, qkv_bias: bool = True, norm_eps: float = 1e-5,
                 cross: bool = True):
        super().__init__()
        self.dim = dim
        self.self_attn = MaskedMultiheadAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.cross_attn = MaskedMultiheadAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias) if cross else None
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps) if cross else None

    def self_attend(self, x: Tensor) -> Tensor:
        """Shape: (B, N, C) -> (B, N, C)."""
        return self.norm1(x + self.self_attn(x, x))

    def cross_attend(self, x: Tensor, context: Tensor, context_mask: Tensor | None) -> Tensor:
        """Shape: x (B, N, C), context (B, M, C), context_mask (B, M) or None -> (B, N, C); identity if not cross."""
        if self.cross_attn is None:
            return x
        return self.norm2(x + self.cross_attn(x, context, context_mask))

    def forward(self, x: Tensor, *, context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """Self-attention on ``x``, then attention from ``x`` to the foreground of ``context``.

        Args:
            x: the map that is updated (queries), (B, C, H, W).
            context: the map attended to (keys/values), (B, C, Hc, Wc); default ``x`` after its self-attention.
            context_mask: foreground of ``context`` in [0, 1] (float or bool), (B, 1, Hc, Wc) or (B, Hc, Wc);
                default all foreground.

        Shape:
            (B, C, H, W) -> (B, C, H, W).
        """
        check_image(x, self.dim, who="CrossMaskedAttention")
        B, C, H, W = x.shape
        if context is not None:
            check_image(context, self.dim, who="CrossMaskedAttention context")
            if context.shape[0] != B:
                raise ValueError(f"context batch {context.shape[0]} differs from x batch {B}")
        ref = x if context is None else context
        mask = None
        if context_mask is not None:
            mask = _check_mask(context_mask, B, tuple(ref.shape[2:]))
        tokens = self.self_attend(x.flatten(2).transpose(1, 2))        # (B, H*W, C)
        ctx = tokens if context is None else context.flatten(2).transpose(1, 2)  # (B, Hc*Wc, C)
        out = self.cross_attend(tokens, ctx, mask)                     # (B, H*W, C)
        return symbolic_reshape(out.transpose(1, 2), (B, C, H, W))     # (B, C, H, W)

    @staticmethod
    def example_kwargs() -> dict[str, int]:
        """Small constructor arguments for the generic tests."""
        return {"dim": 32, "num_heads": 4}


def _check_mask(mask: object, batch: int, size: tuple[int, int]) -> Tensor:
    """A (B, Hc*Wc) float mask from a (B, 1, Hc, Wc) / (B, Hc, Wc) tensor with values in [0, 1], else ValueError."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"context_mask must be a tensor, got {type(mask).__name__}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3 or mask.shape[0] != batch or tuple(mask.shape[1:]) != size:
        raise ValueError(f"context_mask must be (B, 1, H, W) or (B, H, W) = ({batch}, {size[0]}, {size[1]}) to match "
                         f"the context map, got shape {tuple(mask.shape)}")
    mask = mask.float() if mask.dtype == torch.bool or not mask.is_floating_point() else mask
    # A value check reads tensor data (a data-dependent branch that breaks a torch.compile fullgraph): eager only.
    if not torch.compiler.is_compiling() and bool(((mask < 0) | (mask > 1)).any()):
        raise ValueError("context_mask values must lie in [0, 1] (0 = background, 1 = foreground)")
    return mask.flatten(1)                                              # (B, Hc*Wc)
