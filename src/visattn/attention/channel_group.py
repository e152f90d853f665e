"""Channel group attention (DaViT, Ding et al. 2022, arXiv 2204.03645, Sec. 3.2, Eq. 4).

The transpose of ordinary attention: the tokens are the channels and each token's feature vector is that channel's
whole map of H*W values. The C channels are split into G groups of C_g = C / G; inside each group one head attends
the C_g channel tokens to each other,

    A(Q_i, K_i, V_i) = softmax(Q_i^T K_i / sqrt(C_g)) V_i^T       (Q_i, K_i, V_i: (H*W, C_g), output transposed back)

so the C_g x C_g attention matrix sums over every pixel: each output pixel depends on the whole image (global).
The scale is C_g^-0.5, not (H*W)^-0.5, so it does not change with the image size. Cost O(H*W * C_g * C): linear in
the pixels. No padding is ever needed; any H, W works.

Notes against the reference code (dingmyu/davit ``ChannelAttention``, reproduced in timm ``davit.py``):
- Same computation, different names. The reference splits ``qkv`` into tensors it calls (q, k, v) but computes
  softmax(k^T v * C_g^-0.5) q^T; in the paper's letters its ``k`` is Q, its ``v`` is K and its ``q`` is V. We keep the
  reference's storage order in ``qkv`` (rows [0:C) = V, [C:2C) = Q, [2C:3C) = K) so its checkpoints load unchanged,
  and name the tensors by their role in the paper.
- The reference multiplies its ``k`` (our Q) by C_g^-0.5 before the product; our default path scales the
  C_g x C_g logits instead (fewer multiplies), the reference path (``use_fused(False)``) scales Q through
  ``layers.attend``. Identical up to float rounding.
- C_g is ``dim // num_groups`` in both (the reference calls the groups ``num_heads``).
- Not implemented: timm's ``ChannelAttentionV2`` (Florence-2), which scales by (H*W)^-0.5 ("dynamic scale").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.attend import attend, fused_enabled
from ..layers.checks import check_image
from ..layers.fused import linear
from ..layers.partition import is_symbolic, symbolic_reshape
from ..registry import register_attention

__all__ = ["ChannelGroupAttention"]


@register_attention("channel_group")
class ChannelGroupAttention(nn.Module):
    """Global attention between the channels of each group, one head per group.

    Args:
        dim: channels C.
        num_groups: G; C_g = dim // num_groups channels attend to each other inside a group.
        qkv_bias: bias on the q, k, v projections (True in DaViT).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, *, num_groups: int, qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_groups:
            raise ValueError(f"dim {dim} must be divisible by num_groups {num_groups}")
        self.dim = dim
        self.num_groups = num_groups
        self.group_dim = dim // num_groups
        self.scale = self.group_dim ** -0.5  # C_g^-0.5 (paper Eq. 4), independent of the image size
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Attention over the channels of a token sequence. Shape: (B, N, C) -> (B, N, C), N = H*W."""
        B, N, C = x.shape
        G, Cg = self.num_groups, self.group_dim
        qkv = linear(x, self.qkv).reshape(B, N, 3, G, Cg).permute(2, 0, 3, 1, 4)      # (3, B, G, N, Cg)
        v, q, k = qkv.unbind(0)  # reference storage order, see the module docstring; each (B, G, N, Cg)
        if is_symbolic(N):
            # Traced for any size (torch.export): batched matmul reshapes its strided operands, which guards on
            # N != 1 (one pixel left); bmm over explicit contiguous copies does not.
            qt = symbolic_reshape(q.transpose(-2, -1), (B * G, Cg, N))                # (B*G, Cg, N)
            attn = torch.bmm(qt, symbolic_reshape(k, (B * G, N, Cg))).mul(self.scale).softmax(dim=-1)
            out = torch.bmm(symbolic_reshape(v, (B * G, N, Cg)), attn.transpose(-2, -1))  # (B*G, N, Cg)
            out = out.view(B, G, N, Cg)
        elif fused_enabled():
            # Q^T K and V A^T are two small GEMMs straight on the strided views: no transposed copies, and no
            # SDPA, which has no fused kernel for head_dim = H*W and falls back to a slower math path (measured).
            attn = (q.transpose(-2, -1) @ k).mul_(self.scale).softmax(dim=-1)  # (B, G, Cg, Cg)
            out = v @ attn.transpose(-2, -1)                                    # (B, G, N, Cg)
        else:
            # The paper's formula through the shared kernel: channel tokens (rows) with N features each.
            out = attend(q.transpose(-2, -1), k.transpose(-2, -1), v.transpose(-2, -1), scale=self.scale,
                         fused=False).transpose(-2, -1)                         # (B, G, N, Cg)
        out = symbolic_reshape(out.transpose(1, 2), (B, N, C))                  # (B, N, C)
        return self.proj_drop(linear(out, self.proj))

    def forward_cl(self, x: Tensor) -> Tensor:
        """Channels-last attention. Shape: (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        return self.forward_tokens(x.reshape(B, H * W, C)).view(B, H, W, C)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C, H, W) -> (B, C, H, W), any H, W."""
        check_image(x, self.dim, who="ChannelGroupAttention")
        return self.forward_cl(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    @staticmethod
    def example_kwargs() -> dict[str, int]:
        """Small constructor arguments for the generic tests (dim must be given)."""
        return {"dim": 32, "num_groups": 4}
