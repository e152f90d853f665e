"""MViT and MViTv2: Multiscale Vision Transformers for images and video.

Papers: Fan et al., "Multiscale Vision Transformers", ICCV 2021 (arXiv 2104.11227); Li et al., "MViTv2: Improved
Multiscale Vision Transformers for Classification and Detection", CVPR 2022 (arXiv 2112.01526).
Reference implementations: facebookresearch/mvit (official MViTv2 images), facebookresearch/SlowFast (official
video), timm ``mvitv2.py`` (whose image state-dict layout this file uses unchanged) and torchvision
``models/video/mvit.py`` (``mvit_v1_b``, ``mvit_v2_s``, whose keys ``remap_state_dict`` translates).

A conv patch embedding (7x7 stride 4 for images, 3x7x7 stride 2x4x4 for video) feeds four stages of pooling-attention
blocks. The first block of each stage pools the queries by 2 (the map shrinks) and the channels double, either
inside that block's attention (MViTv2 ``dim_mul_in_att``) or in the MLP of the previous stage's last block (MViT v1,
MViTv2-L). Keys and values are pooled everywhere, by a stride that starts at 4 (8 for video) and shrinks with the
map, so the attended map stays about 14x14 (7x7). Head: final LayerNorm, then the mean of the map tokens or the class
token, then a linear classifier.

Deviations:
- Any input size >= 32 (and any number of frames): relative position tables and absolute position embeddings are
  sized for ``img_size`` (so timm and torchvision checkpoints load unchanged) and interpolated for other sizes
  (linear for tables, as torchvision does; bicubic for the spatial embedding). timm fails on any size but the one
  it was built for (256x256 raises); torchvision's video MViT only runs 16x224x224 with absolute positions.
- Relative position indices are computed in exact integer arithmetic; the reference code's float32 version can
  differ by one entry, only at non-integer ratios between query and key map sizes (never at 224).
- ``mvitv2_*_cls``: the residual pooling skips the class token, as in the official code (facebookresearch/mvit
  ``attention.py``); timm adds the pooled query to the class token too. ``residual_pool_cls=True`` reproduces timm.
- The head returns logits in eval mode (the official image head applies a softmax at test time).
- ``forward_features`` returns the normalised map (B, C, h, w) (or (B, C, t, h, w)) without the class token;
  ``forward_tokens`` returns the token sequence that class-token models pool.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.pooling import PoolingAttention
from ..layers.backbone import ClassifierBackbone
from ..layers.checks import check_config
from ..layers.drop import DropPath, drop_path_rates
from ..layers.fused import fast_inference
from ..layers.mlp import Mlp
from ..layers.model import call_block, init_trunc_normal_
from ..layers.partition import is_symbolic, spatial_size, symbolic_reshape
from ..registry import register_models

__all__ = ["MViTConfig", "MViT", "MViTVideo"]


@dataclass(frozen=True, kw_only=True)
class MViTConfig:
    """MViT / MViTv2 hyper-parameters (facebookresearch/mvit ``config/defaults.py`` and ``configs/*.yaml``).

    Per-axis tuples have 2 entries (H, W) for images and 3 (T, H, W) for video; their length sets the model's
    dimensionality.
    """

    in_chans: int = 3
    num_classes: int = 1000
    img_size: tuple[int, ...] = (224, 224)  # input the rel-pos tables / abs-pos embeddings are sized for
    patch_kernel: tuple[int, ...] = (7, 7)
    patch_stride: tuple[int, ...] = (4, 4)
    patch_padding: tuple[int, ...] = (3, 3)
    dims: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (1, 2, 5, 2)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pool_mode: str = "conv"  # "conv" (depthwise conv + LayerNorm), "avg" or "max"
    pool_first: bool = False
    pool_kernel: tuple[int, ...] = (3, 3)
    stride_q: tuple[tuple[int, ...], ...] = ((1, 1), (2, 2), (2, 2), (2, 2))  # per stage, in its first block
    stride_kv_adaptive: tuple[int, ...] = (4, 4)  # KV stride of stage 0; divided by each later Q stride
    pool_q_every_block: bool = True  # MViTv2 pools Q (stride 1) in every block; MViT v1 only where it strides
    dim_mul_in_att: bool = True  # channels grow in the attention of a stage's first block (timm ``expand_attn``)
    residual_pooling: bool = True
    residual_pool_cls: bool = False
    rel_pos: bool = True
    abs_pos: str = "none"  # "none" or "separable" (MViT v1: spatial + temporal + class embeddings)
    cls_token: bool = False
    global_pool: str = "avg"  # "avg" over map tokens, or "token" (the class token)
    norm_eps: float = 1e-6
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        check_config(self, positive=("in_chans", "img_size", "patch_kernel", "patch_stride", "dims", "depths",
                                     "num_heads", "mlp_ratio", "pool_kernel", "stride_q", "stride_kv_adaptive",
                                     "norm_eps"),
                     nonnegative=("num_classes", "patch_padding", "drop_rate", "drop_path_rate"))


def _stage_plan(config: MViTConfig) -> list[dict[str, Any]]:
    """Per stage: input dim, per-block output dims, heads, Q and KV strides, and the reference map size."""
    n = len(config.img_size)
    ref = tuple(s // p for s, p in zip(config.img_size, config.patch_stride))  # as timm/torchvision: floor
    kv = tuple(config.stride_kv_adaptive)
    plan, dim_in, last = [], config.dims[0], len(config.dims) - 1
    for i, depth in enumerate(config.depths):
        sq = tuple(config.stride_q[i])
        kv = tuple(max(k // s, 1) for k, s in zip(kv, sq))  # facebookresearch/mvit POOL_KV_STRIDE_ADAPTIVE
        if config.dim_mul_in_att:
            outs = (config.dims[i],) * depth
        else:
            outs = (config.dims[i],) * (depth - 1) + (config.dims[min(i + 1, last)],)
        if len(sq) != n or len(kv) != n:
            raise ValueError(f"stride_q[{i}] {sq} and stride_kv_adaptive {kv} need {n} entries like img_size")
        plan.append(dict(dim_in=dim_in, outs=outs, heads=config.num_heads[i], stride_q=sq, stride_kv=kv, ref=ref))
        ref = tuple(r // s for r, s in zip(ref, sq))
        dim_in = outs[-1]
    return plan


class PatchEmbed(nn.Module):
    def __init__(self, config: MViTConfig):
        super().__init__()
        conv = nn.Conv2d if len(config.img_size) == 2 else nn.Conv3d
        self.proj = conv(config.in_chans, config.dims[0], config.patch_kernel, stride=config.patch_stride,
                         padding=config.patch_padding)
        self.spatial_dims = len(config.img_size)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Shape: (B, in_chans, *size) -> ((B, N, dims[0]), size') with N = prod(size')."""
        x = self.proj(x)                                               # (B, C, *size')
        return x.flatten(2).transpose(1, 2), spatial_size(x, self.spatial_dims)  # (B, N, C)


def _pool_tokens(x: Tensor, pool: nn.Module, size: tuple[int, ...], prefix: int) -> Tensor:
    """Pool the map tokens of (B, prefix + N, C) with a (B, C, *size) pooling; class tokens pass through."""
    cls, x = x[:, :prefix], x[:, prefix:]
    B, _, C = x.shape
    # traced: reshaped through a contiguous copy (after the class token's slice the view's stride check guarded on
    # the batch not being 1)
    x = symbolic_reshape(x, (B, *size, C)).movedim(-1, 1)             # (B, C, *size), channels-last strides
    if is_symbolic(B, C, *size):
        # traced: an NCHW copy; max pooling's meta function picks the output layout from channels-last input by
        # asking whether the output map is one pixel wide, a guard that froze the last stage's width to != 1
        x = x.clone(memory_format=torch.contiguous_format)
    x = pool(x)                                                        # (B, C, *size')
    x = x.flatten(2).transpose(1, 2)                                   # (B, N', C)
    return torch.cat((cls, x), dim=1) if prefix else x


class MViTBlock(nn.Module):
    """norm1 -> pooling attention (+ pooled, possibly projected shortcut) -> norm2 -> MLP (+ shortcut).

    The attention shortcut is the raw input, max-pooled by the query stride (kernel stride + 1), or with a channel
    change inside attention ``shortcut_proj_attn(norm1(x))``; with a channel change in the MLP the MLP shortcut is
    ``shortcut_proj_mlp(norm2(x))`` (facebookresearch/mvit ``MultiScaleBlock.forward``).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, stride_q: tuple[int, ...],
                 stride_kv: tuple[int, ...], rel_pos_size: tuple[int, ...], config: MViTConfig, drop_path: float):
        super().__init__()
        n = len(stride_q)
        expand = config.dim_mul_in_att
        att_dim = dim_out if expand else dim
        self.num_prefix_tokens = int(config.cls_token)
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.shortcut_proj_attn = nn.Linear(dim, dim_out) if expand and dim != dim_out else None
        if math.prod(stride_q) > 1:
            kernel = tuple(s + 1 if s > 1 else s for s in stride_q)
            pool = nn.MaxPool2d if n == 2 else nn.MaxPool3d
            self.shortcut_pool_attn = pool(kernel, stride_q, tuple(k // 2 for k in kernel))
        else:
            self.shortcut_pool_attn = None
        pool_q = config.pool_q_every_block or math.prod(stride_q) > 1
        self.attn = PoolingAttention(
            dim, att_dim, num_heads=num_heads, spatial_dims=n,
            kernel_q=config.pool_kernel if pool_q else 1, kernel_kv=config.pool_kernel,
            stride_q=stride_q, stride_kv=stride_kv, mode=config.pool_mode, pool_first=config.pool_first,
            qkv_bias=config.qkv_bias, rel_pos=config.rel_pos, rel_pos_size=rel_pos_size,
            residual_pooling=config.residual_pooling, residual_pool_cls=config.residual_pool_cls,
            norm_eps=config.norm_eps,
        )
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(att_dim, eps=config.norm_eps)
        self.shortcut_proj_mlp = nn.Linear(dim, dim_out) if not expand and dim != dim_out else None
        self.mlp = Mlp(att_dim, int(att_dim * config.mlp_ratio), dim_out)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor, size: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
        """Shape: ((B, prefix + N, dim), size) -> ((B, prefix + N', dim_out), size'), size' = query-pooled size."""
        prefix = self.num_prefix_tokens
        x_norm = self.norm1(x)
        shortcut = x if self.shortcut_proj_attn is None else self.shortcut_proj_attn(x_norm)
        if self.shortcut_pool_attn is not None:
            shortcut = _pool_tokens(shortcut, self.shortcut_pool_attn, size, prefix)
        x, size = self.attn.forward_tokens(x_norm, size, prefix=prefix)
        fast = fast_inference(x, self)  # eval, no autograd: in-place residual, FFN residual fused into fc2
        x = x.add_(shortcut) if fast else shortcut + self.drop_path1(x)
        x_norm = self.norm2(x)
        shortcut = x if self.shortcut_proj_mlp is None else self.shortcut_proj_mlp(x_norm)
        if fast:
            return self.mlp.forward_add(x_norm, shortcut), size
        return shortcut + self.drop_path2(self.mlp(x_norm)), size


class MViTStage(nn.Module):
    def __init__(self, plan: dict[str, Any], config: MViTConfig, drop_paths: list[float]):
        super().__init__()
        n = len(plan["stride_q"])
        blocks, dim, ref = [], plan["dim_in"], plan["ref"]
        for j, dim_out in enumerate(plan["outs"]):
            stride_q = plan["stride_q"] if j == 0 else (1,) * n
            blocks.append(MViTBlock(dim, dim_out, plan["heads"], stride_q, plan["stride_kv"], ref, config,
                                    drop_paths[j]))
            dim = dim_out
            ref = tuple(r // s for r, s in zip(ref, stride_q))
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, size: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
        for block in self.blocks:  # each block returns the pooled size with the tokens, so no run_blocks chain
            x, size = call_block(block, x, size, checkpointing=self.grad_checkpointing)
        return x, size


class MViT(ClassifierBackbone):
    """MViTv2 image classifier and backbone (and, through :class:`MViTVideo`, the video models).

    Args:
        config: a :class:`MViTConfig` (see ``VARIANTS``).
    """

    data_defaults = {**ClassifierBackbone.data_defaults, "crop_pct": 0.9}  # timm mvitv2_* fb_in1k

    config_class = MViTConfig
    min_input_size = 32
    # A reduced config with every image code path: Q/KV pooling with rel-pos tables sized for another input (so
    # they are interpolated at the test's odd size), channel expansion in attention, residual pooling.
    test_overrides = dict(dims=(16, 32, 48, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), img_size=(64, 64),
                          num_classes=7)

    def __init__(self, config: MViTConfig):
        super().__init__()
        n = len(config.img_size)
        lengths = {len(config.patch_kernel), len(config.patch_stride), len(config.patch_padding),
                   len(config.pool_kernel), len(config.stride_kv_adaptive)}
        if n not in (2, 3) or lengths != {n}:
            raise ValueError(f"img_size, patch_kernel/stride/padding, pool_kernel and stride_kv_adaptive need the "
                             f"same length, 2 (H, W) or 3 (T, H, W); got img_size={config.img_size}")
        if not len(config.dims) == len(config.depths) == len(config.num_heads) == len(config.stride_q):
            raise ValueError("dims, depths, num_heads and stride_q need one entry per stage")
        if config.global_pool not in ("avg", "token") or (config.global_pool == "token" and not config.cls_token):
            raise ValueError(f"global_pool must be 'avg', or 'token' with cls_token=True; got {config.global_pool!r}"
                             f" with cls_token={config.cls_token}")
        if config.abs_pos not in ("none", "separable"):
            raise ValueError(f"abs_pos must be 'none' or 'separable', got {config.abs_pos!r}")
        self.config = config
        self.spatial_dims = n
        self.num_prefix_tokens = int(config.cls_token)
        self.patch_embed = PatchEmbed(config)
        self.patch_grid = tuple(s // p for s, p in zip(config.img_size, config.patch_stride))
        embed = config.dims[0]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed)) if config.cls_token else None
        self.pos_embed_spatial = self.pos_embed_temporal = self.pos_embed_class = None
        if config.abs_pos == "separable":
            self.pos_embed_spatial = nn.Parameter(torch.zeros(1, math.prod(self.patch_grid[-2:]), embed))
            if n == 3:
                self.pos_embed_temporal = nn.Parameter(torch.zeros(1, self.patch_grid[0], embed))
            if config.cls_token:
                self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, embed))

        plan = _stage_plan(config)
        rates = drop_path_rates(config.drop_path_rate, config.depths)
        self.stages = nn.ModuleList(MViTStage(p, config, r) for p, r in zip(plan, rates))
        self.feature_info: list[dict[str, Any]] = []
        reduction = config.patch_stride[-1]
        for i, p in enumerate(plan):
            reduction *= p["stride_q"][-1]
            self.feature_info.append({"num_chs": p["outs"][-1], "reduction": reduction, "module": f"stages.{i}"})
        self.num_features = plan[-1]["outs"][-1]
        self.norm = nn.LayerNorm(self.num_features, eps=config.norm_eps)
        self.head = self._make_head(config.num_classes)
        init_trunc_normal_(self)  # truncated normal(0.02) linear weights, zero biases (facebookresearch/mvit)
        for p in (self.cls_token, self.pos_embed_spatial, self.pos_embed_temporal, self.pos_embed_class):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def _make_head(self, num_classes: int) -> nn.Sequential:
        fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        return nn.Sequential(OrderedDict(drop=nn.Dropout(self.config.drop_rate), fc=fc))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none); ``global_pool`` ("avg", or "token" with a class token)
        changes the pooling too, as in timm."""
        if global_pool is not None:
            if global_pool not in ("avg", "token", "") or (global_pool == "token" and not self.config.cls_token):
                raise ValueError(f"global_pool must be 'avg', 'token' with cls_token=True, or '' (unpooled tokens); "
                                 f"got {global_pool!r}")
            self.config = replace(self.config, global_pool=global_pool)
        self.head = self._make_head(num_classes)
        self.config = replace(self.config, num_classes=num_classes)

    def _abs_pos(self, size: tuple[int, ...]) -> Tensor:
        """The separable absolute position embedding for a ((T,) H, W) map: (1, prefix + N, C)."""
        C = self.pos_embed_spatial.shape[-1]
        ref_hw, hw = self.patch_grid[-2:], size[-2:]
        pos = self.pos_embed_spatial                                   # (1, H0*W0, C)
        # traced for any size (torch.export): always resized, a size comparison would freeze it; resizing to the
        # same size is exact (bicubic and linear sample the original points with align_corners=False)
        if is_symbolic(*hw) or hw != ref_hw:
            grid = pos.reshape(1, *ref_hw, C).permute(0, 3, 1, 2)      # (1, C, H0, W0)
            grid = F.interpolate(grid.float(), size=hw, mode="bicubic", align_corners=False).to(pos.dtype)
            pos = grid.flatten(2).transpose(1, 2)                      # (1, H*W, C)
        if self.pos_embed_temporal is not None:
            temporal = self.pos_embed_temporal                         # (1, T0, C)
            if is_symbolic(size[0]) or size[0] != temporal.shape[1]:
                temporal = F.interpolate(temporal.transpose(1, 2).float(), size=size[0], mode="linear",
                                         align_corners=False).transpose(1, 2).to(pos.dtype)
            pos = (temporal[:, :, None] + pos[:, None]).reshape(1, -1, C)  # (1, T*H*W, C), T outermost
        if self.pos_embed_class is not None:
            pos = torch.cat((self.pos_embed_class, pos), dim=1)       # (1, 1 + N, C)
        return pos

    def _embed(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        self.check_input(x)
        x, size = self.patch_embed(x)                                  # (B, N, C)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (B, 1 + N, C)
        if self.pos_embed_spatial is not None:
            x = x + self._abs_pos(size)
        return x, size

    def _to_map(self, x: Tensor, size: tuple[int, ...]) -> Tensor:
        x = x[:, self.num_prefix_tokens:]                              # (B, N, C)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)  # (B, C, *size)

    def forward_tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """Normalised tokens after the last stage. Shape: (B, in_chans, *size) -> ((B, prefix + N, C), size')."""
        x, size = self._embed(x)
        for stage in self.stages:
            x, size = stage(x, size)
        return self.norm(x), size

    def forward_features(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chans, ((T,) H, W) -> (B, num_features, ((T',) H/32, W/32) (rounded up), normalised."""
        return self._to_map(*self.forward_tokens(x))

    def _stage_maps(self, x: Tensor, last: int) -> list[Tensor]:
        """Stage output maps 0..last, (B, C_i, ((T',) H/2^(i+2), W/2^(i+2)); the last stage's normalised."""
        x, size = self._embed(x)
        features = []
        for i, stage in enumerate(self.stages[:last + 1]):
            x, size = stage(x, size)
            features.append(self._to_map(self.norm(x) if i == len(self.stages) - 1 else x, size))
        return features

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Shape: tokens (B, prefix + N, C) from ``forward_tokens`` or a map from ``forward_features`` ->
        (B, num_classes), or (B, num_features) with ``pre_logits``. Class-token pooling needs the tokens."""
        if self.config.global_pool == "":                               # reset_classifier(n, ''): no pooling
            return x if pre_logits else self.head(x)
        if x.ndim == 3:
            return self._head_from_tokens(x, pre_logits)
        if self.config.global_pool == "token":
            raise ValueError("this model pools its class token, which a feature map does not hold; pass "
                             "forward_tokens(x)[0] to forward_head")
        x = x.flatten(2).mean(2)                                       # (B, C)
        return x if pre_logits else self.head(x)

    def _head_from_tokens(self, x: Tensor, pre_logits: bool) -> Tensor:
        """:meth:`forward_head` of tokens (B, prefix + N, C), without asking their rank (torch.fx cannot)."""
        if self.config.global_pool == "":
            return x if pre_logits else self.head(x)
        x = x[:, 0] if self.config.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chans, ((T,) H, W) -> (B, num_classes); any H, W >= 32."""
        return self._head_from_tokens(self.forward_tokens(x)[0], False)

    @staticmethod
    def remap_state_dict(state_dict: dict[str, Tensor], model: "MViT") -> dict[str, Tensor]:
        """timm keys are visattn keys; official facebookresearch/mvit and torchvision video keys are renamed."""
        return remap_state_dict(state_dict, model)


class MViTVideo(MViT):
    """MViT / MViTv2 video classifier: input (B, 3, T, H, W), features (B, C, T', H', W')."""

    input_ndim = 5
    min_input_frames = 1  # the registered variants' temporal patch conv (kernel 3, padding 1) maps 1 frame to 1
    # Every video code path: 3-D pooling, temporal + spatial rel-pos (spatially interpolated at the generic tests'
    # size; other frame counts in tests/test_mvit.py), separable absolute positions, channel growth in the MLP (MViT
    # v1), Q pooling only where it strides.
    test_overrides = dict(dims=(16, 32, 48, 64), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 4), img_size=(4, 64, 64),
                          rel_pos=True, residual_pooling=True, cls_token=False, global_pool="avg", num_classes=7)

    @property
    def num_frames(self) -> int:
        """The frame count the config is built for (``img_size[0]``)."""
        return self.config.img_size[0]


# --- key remapping -----------------------------------------------------------------------------------------------

def _resize_table(table: Tensor, length: int) -> Tensor:
    resized = F.interpolate(table.t()[None].float(), size=length, mode="linear", align_corners=False)
    return resized[0].t().to(table.dtype)


def _block_index(depths: tuple[int, ...]) -> dict[int, tuple[int, int]]:
    out, start = {}, 0
    for s, d in enumerate(depths):
        out.update({start + j: (s, j) for j in range(d)})
        start += d
    return out


def _from_flat_blocks(key: str, where: dict[int, tuple[int, int]], proj: str) -> str:
    match = re.match(r"blocks\.(\d+)\.(.*)", key)
    if match is None:
        return key
    stage, j = where[int(match.group(1))]
    rest = match.group(2)
    if rest.startswith("proj.") or rest.startswith("project."):      # the block's channel-change shortcut
        rest = proj + rest[rest.index("."):]
    return f"stages.{stage}.blocks.{j}.{rest}"


_TORCHVISION = [
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^pos_encoding\.class_token$", "cls_token"),
    (r"^pos_encoding\.spatial_pos$", "pos_embed_spatial"),
    (r"^pos_encoding\.temporal_pos$", "pos_embed_temporal"),
    (r"^pos_encoding\.class_pos$", "pos_embed_class"),
    (r"\.attn\.project\.0\.", ".attn.proj."),
    (r"\.attn\.pool_([qkv])\.pool\.", r".attn.pool_\1."),
    (r"\.attn\.pool_([qkv])\.norm_act\.0\.", r".attn.norm_\1."),
    (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.3\.", ".mlp.fc2."),
    (r"^head\.1\.", "head.fc."),
]


def remap_state_dict(state_dict: dict[str, Tensor], model: MViT) -> dict[str, Tensor]:
    """Map a timm, official (facebookresearch/mvit), torchvision video or visattn state dict onto ``model``.

    Official and torchvision checkpoints number blocks globally (``blocks.7``); they become ``stages.s.blocks.j``
    and the block's channel projection becomes ``shortcut_proj_attn`` or ``shortcut_proj_mlp``. Relative position
    tables and absolute position embeddings trained at another resolution are interpolated to this model's.
    """
    config = model.config
    proj = "shortcut_proj_attn" if config.dim_mul_in_att else "shortcut_proj_mlp"
    where = _block_index(config.depths)
    torchvision = any(k.startswith(("conv_proj.", "pos_encoding.")) for k in state_dict)
    flat = not any(k.startswith("stages.") for k in state_dict)
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if torchvision:
            for pattern, repl in _TORCHVISION:
                key = re.sub(pattern, repl, key)
        if flat:
            key = _from_flat_blocks(key, where, proj)
            key = key.replace("head.projection.", "head.fc.")
        if key in own and value.shape != own[key].shape:
            target = own[key].shape
            name = key.rsplit(".", 1)[-1]
            if value.numel() == own[key].numel():
                value = value.reshape(target)                          # torchvision's (C,) / (N, C) embeddings
            elif name in ("rel_pos_h", "rel_pos_w", "rel_pos_t"):
                value = _resize_table(value, target[0])
            elif key == "pos_embed_temporal":
                value = _resize_table(value.reshape(-1, target[-1]), target[1])[None]
            elif key == "pos_embed_spatial":
                side = math.isqrt(value.numel() // target[-1])         # square grids only, as every checkpoint
                grid = value.reshape(1, side, side, target[-1]).permute(0, 3, 1, 2).float()
                grid = F.interpolate(grid, size=model.patch_grid[-2:], mode="bicubic", align_corners=False)
                value = grid.flatten(2).transpose(1, 2).to(value.dtype)
        out[key] = value
    return out


# MViTv2 images (facebookresearch/mvit configs/MVITv2_{T,S,B}.yaml, configs/test/MVITv2_L_test.yaml; timm
# ``model_cfgs``): Q stride 2 at each stage start, KV stride 4 -> 2 -> 1 -> 1, kernel 3, residual pooling.
_VIDEO = dict(
    num_classes=400, img_size=(16, 224, 224), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
    pool_kernel=(3, 3, 3), stride_q=((1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2)), stride_kv_adaptive=(1, 8, 8),
    depths=(1, 2, 11, 2), cls_token=True, global_pool="token", drop_rate=0.5,
)
_LARGE = dict(dims=(144, 288, 576, 1152), num_heads=(2, 4, 8, 16), depths=(2, 6, 36, 4))
_HUGE = dict(dims=(192, 384, 768, 1536), num_heads=(3, 6, 12, 24), depths=(4, 8, 60, 8))
_CLS = dict(cls_token=True, global_pool="token")
_IN21K = dict(num_classes=19168)  # the official in21k checkpoints' head (timm default_cfgs ``*_cls.fb_inw21k``)

VARIANTS = {
    "mvitv2_tiny": MViTConfig(depths=(1, 2, 5, 2)),
    "mvitv2_small": MViTConfig(depths=(1, 2, 11, 2)),
    "mvitv2_base": MViTConfig(depths=(2, 3, 16, 3)),
    "mvitv2_large": MViTConfig(**_LARGE, dim_mul_in_att=False),
    "mvitv2_huge": MViTConfig(**_HUGE),
    "mvitv2_tiny_cls": MViTConfig(depths=(1, 2, 5, 2), **_CLS),
    "mvitv2_small_cls": MViTConfig(depths=(1, 2, 11, 2), **_CLS),
    "mvitv2_base_cls": MViTConfig(depths=(2, 3, 16, 3), **_CLS, **_IN21K),
    "mvitv2_large_cls": MViTConfig(**_LARGE, **_CLS, **_IN21K),  # channel growth in attention, unlike mvitv2_large
    "mvitv2_huge_cls": MViTConfig(**_HUGE, **_CLS, **_IN21K),
}
# Exact counts of timm 1.0.31 ``MultiScaleVit`` at 224 with the default heads, counted in the reference environment
# (tiny_cls and huge, which timm does not register, built from ``MultiScaleVitCfg`` with the same settings).
REFERENCE_PARAMS = {
    "mvitv2_tiny": 24_173_320,
    "mvitv2_small": 34_870_216,
    "mvitv2_base": 51_472_744,
    "mvitv2_large": 217_992_952,
    "mvitv2_huge": 666_879_720,
    "mvitv2_tiny_cls": 24_173_416,
    "mvitv2_small_cls": 34_870_312,
    "mvitv2_base_cls": 65_444_032,
    "mvitv2_large_cls": 234_583_216,
    "mvitv2_huge_cls": 694_804_128,
}
register_models(MViT, VARIANTS, reference_params=REFERENCE_PARAMS)

# Video (torchvision ``mvit_v1_b`` = MViT-B 16x4 of the MViT paper, ``mvit_v2_s`` = MViTv2-S 16x4, Kinetics-400).
VIDEO_VARIANTS = {
    "mvit_v1_base_16x4": MViTConfig(**_VIDEO, pool_q_every_block=False, dim_mul_in_att=False, residual_pooling=False,
                                    rel_pos=False, abs_pos="separable"),
    "mvitv2_small_video": MViTConfig(**_VIDEO),
}
# Exact counts of torchvision 0.28 ``mvit_v1_b`` / ``mvit_v2_s`` (their weights' ``num_params``, recounted).
VIDEO_REFERENCE_PARAMS = {"mvit_v1_base_16x4": 36_610_672, "mvitv2_small_video": 34_537_744}
register_models(MViTVideo, VIDEO_VARIANTS, reference_params=VIDEO_REFERENCE_PARAMS)
