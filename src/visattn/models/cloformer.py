"""CloFormer: Rethinking Local Perception in Lightweight Vision Transformer (Fan et al., 2023, arXiv 2303.17803).

Reference implementation: qhfan/CloFormer (``classification/models``, configs in ``classification/configs``), at
commit 9181f69230. Its state-dict keys load through :func:`remap_state_dict`; visattn uses its own names
(``stem``, ``stages``, ``head``, timm's block slots).

Stem: conv3x3 s2 -> BN -> ReLU, conv3x3 s2 -> BN -> ReLU, twice conv3x3 -> BN -> ReLU, conv1x1 -> GroupNorm(1).
Four stages of Clo blocks: ``x + Attn(GN(x))`` with the AttnConv + pooled global attention of
:mod:`visattn.attention.attn_conv`, then ``shortcut(x) + ConvFFN(GN(x))`` with ConvFFN = 1x1 -> GELU -> depthwise
5x5 -> 1x1. The last block of stages 1-3 downsamples: its ConvFFN's depthwise conv has stride 2 and widens to the
next stage, and its shortcut is conv5x5 s2 -> BN -> conv1x1. Head: GroupNorm(1) -> global average pool -> Linear.

Deviations:
- Any input size >= 32: the global branch pools with ``ceil_mode`` (partial windows average their real pixels),
  where the official code needs every stage size divisible by its pool window (input divisible by 32 at the
  default windows). Sizes that divide give identical results.
- Plain ``BatchNorm2d`` where the official code hard-codes ``SyncBatchNorm`` (same parameters and eval outputs);
  convert with ``nn.SyncBatchNorm.convert_sync_batchnorm`` when training with DDP.
- Swish is ``nn.SiLU`` (the official ``MemoryEfficientSwish`` from efficientnet_pytorch computes the same function).
- ``forward_features`` returns the last stage's map; the final GroupNorm belongs to ``forward_head`` (the official
  ``forward_feature`` also pools), so dense tasks get un-normalised stage outputs like other visattn backbones.
- Opt-in, off by default: ``max_kv_grids`` caps each stage's global key / value grid (adaptive pooling once window
  pooling would exceed it), so the cost grows linearly with the pixels instead of quadratically. Not in the paper or
  the official code; with ``(7, 7, 7, 7)`` (the grid a 224 input gives at the default windows) outputs at inputs up
  to 224 x 224 are the official ones, larger inputs get fewer, wider-pooled keys than the official model would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..attention.attn_conv import CloAttention
from ..layers.backbone import ClassifierBackbone
from ..layers.checks import check_config
from ..layers.drop import DropPath, drop_path_rates
from ..layers.model import run_blocks
from ..registry import register_models

__all__ = ["CloFormerConfig", "CloFormer"]


@dataclass(frozen=True, kw_only=True)
class CloFormerConfig:
    """CloFormer hyper-parameters, one entry per stage (official ``classification/configs/cloformer_*.yaml``).

    ``group_splits[i]`` gives the heads of each local AttnConv group and, last, of the global group;
    ``kernel_sizes[i]`` the depthwise kernel of each local group; ``window_sizes[i]`` the global pooling window.
    ``max_kv_grids[i]`` (opt-in, default None = official) caps each side of stage i's global key grid: a side that
    ``window_sizes[i]`` pooling would make longer is pooled adaptively to that many keys, which makes the cost
    linear in the pixels. The grid of a 224 x 224 input at stage i is ``ceil(224 / 2^(i+2) / window_sizes[i])``,
    ``(7, 7, 7, 7)`` at the default windows, which keeps every input up to 224 x 224 exactly official.
    """

    in_chans: int = 3
    num_classes: int = 1000
    dims: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 4, 8, 16)
    group_splits: tuple[tuple[int, ...], ...] = ((3, 1), (2, 2), (4, 4), (4, 12))
    kernel_sizes: tuple[tuple[int, ...], ...] = ((3,), (5,), (7,), (9,))
    window_sizes: tuple[int, ...] = (8, 4, 2, 1)
    mlp_kernel_sizes: tuple[int, ...] = (5, 5, 5, 5)
    mlp_ratios: tuple[float, ...] = (4.0, 4.0, 4.0, 4.0)
    max_kv_grids: tuple[int, ...] | None = None  # deviation (opt-in): linear-cost cap on the global key grid
    qkv_bias: bool = True
    attn_drop: float = 0.0
    drop_rate: float = 0.0  # official ``mlp_drop``: dropout in the ConvFFN and after the attention projection
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        check_config(self, positive=("in_chans", "dims", "depths", "num_heads", "kernel_sizes", "window_sizes",
                                     "mlp_kernel_sizes", "mlp_ratios", "max_kv_grids"),
                     nonnegative=("num_classes", "group_splits", "attn_drop", "drop_rate", "drop_path_rate"))


def _group_norm(dim: int) -> nn.GroupNorm:
    # GroupNorm with one group normalises over (C, H, W) per sample (official ``nn.GroupNorm(1, dim)``, eps 1e-5).
    return nn.GroupNorm(1, dim)


class ConvBNReLU(nn.Module):
    """Conv k x k (with bias, "same" padding) -> BatchNorm -> ReLU: one stem layer."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride, 1)
        self.norm = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class CloStem(nn.Module):
    """4x downsampling: two strided conv3x3 layers, two more conv3x3 layers, conv1x1 -> GroupNorm(1)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = ConvBNReLU(in_chans, dim // 2, 2)
        self.conv2 = ConvBNReLU(dim // 2, dim, 2)
        self.conv3 = ConvBNReLU(dim, dim, 1)
        self.conv4 = ConvBNReLU(dim, dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.norm = _group_norm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chans, H, W) -> (B, dim, ceil(H / 4), ceil(W / 4))."""
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.norm(self.proj(x))


class ConvFFN(nn.Module):
    """1x1 -> GELU -> depthwise k x k (stride 1 or 2) -> dropout -> 1x1 -> dropout."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int, *, kernel_size: int, stride: int, drop: float):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = nn.GELU()
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, kernel_size, stride, kernel_size // 2, groups=hidden_dim)
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_dim, out_dim, 1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, dim, H, W) -> (B, out_dim, ceil(H / stride), ceil(W / stride))."""
        return self.drop2(self.fc2(self.drop1(self.dwconv(self.act(self.fc1(x))))))


class DownsampleShortcut(nn.Module):
    """The residual path of a downsampling block: full conv k x k s2 -> BatchNorm -> conv1x1 to the next width."""

    def __init__(self, dim: int, out_dim: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, 2, kernel_size // 2)
        self.norm = nn.BatchNorm2d(dim)
        self.proj = nn.Conv2d(dim, out_dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(self.conv(x)))


class CloBlock(nn.Module):
    """x + Attn(GN(x)), then shortcut(x) + ConvFFN(GN(x)); with ``stride=2`` the second half downsamples."""

    def __init__(self, dim: int, out_dim: int, stage: int, stride: int, config: CloFormerConfig, drop_path: float):
        super().__init__()
        self.norm1 = _group_norm(dim)
        self.attn = CloAttention(dim, num_heads=config.num_heads[stage], group_split=config.group_splits[stage],
                                 kernel_sizes=config.kernel_sizes[stage], window_size=config.window_sizes[stage],
                                 qkv_bias=config.qkv_bias, attn_drop=config.attn_drop, proj_drop=config.drop_rate,
                                 max_kv_grid=None if config.max_kv_grids is None else config.max_kv_grids[stage])
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = _group_norm(dim)
        k = config.mlp_kernel_sizes[stage]
        self.mlp = ConvFFN(dim, int(dim * config.mlp_ratios[stage]), out_dim, kernel_size=k, stride=stride,
                           drop=config.drop_rate)
        self.drop_path2 = DropPath(drop_path)
        if stride == 1 and dim == out_dim:
            self.shortcut = nn.Identity()
        elif stride == 2:
            self.shortcut = DownsampleShortcut(dim, out_dim, k)
        else:
            raise ValueError(f"a CloBlock widens only while downsampling (dim {dim} -> {out_dim}, stride {stride})")

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, dim, H, W) -> (B, out_dim, ceil(H / stride), ceil(W / stride))."""
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return self.shortcut(x) + self.drop_path2(self.mlp(self.norm2(x)))


class CloStage(nn.Module):
    """``depth`` Clo blocks at one width; the last one downsamples to ``out_dim`` unless this is the last stage."""

    def __init__(self, stage: int, dim: int, out_dim: int, downsample: bool, config: CloFormerConfig,
                 drop_paths: list[float]):
        super().__init__()
        depth = config.depths[stage]
        self.blocks = nn.Sequential(*[
            CloBlock(dim, out_dim if i == depth - 1 else dim, stage, 2 if downsample and i == depth - 1 else 1,
                     config, drop_paths[i])
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        return run_blocks(self.blocks, x, self.grad_checkpointing)


class CloHead(nn.Module):
    """GroupNorm(1) on the map -> global average pool -> dropout -> Linear."""

    def __init__(self, dim: int, num_classes: int, drop_rate: float):
        super().__init__()
        self.norm = _group_norm(dim)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x).mean((2, 3))                                  # (B, C)
        return x if pre_logits else self.fc(self.drop(x))


class CloFormer(ClassifierBackbone):
    """CloFormer image classifier and backbone.

    Args:
        config: a :class:`CloFormerConfig` (see ``VARIANTS``).

    The feature map of stage i has stride 4 * 2^i; the downsampling sits at the end of stages 1-3, so stage i's
    output already has the next stage's width and stride (``feature_info`` lists them).
    """

    # The official evaluation (classification/data/build.py, Swin's transform) resizes to 256 / 224 of the input
    # and centre-crops: crop 0.875, bicubic, ImageNet mean / std - the ClassifierBackbone defaults.

    config_class = CloFormerConfig
    min_input_size = 32  # the total stride; smaller inputs would reach the last stages as 1x1 maps
    # A reduced config with every code path of the family (two local groups with different kernels, a stage without
    # global heads, pooled and unpooled global branches, depth-1 and depth-2 stages), used by the generic tests.
    # ``max_kv_grids`` at the generic tests' 35 x 59 input: stage 0's 3 x 4 key grid is capped to 2 x 2 (adaptive
    # bins), stage 1's 3 x 4 stays under its cap (plain ceil pooling), stage 3's 2 x 2 unpooled keys too.
    test_overrides = dict(dims=(16, 24, 32, 32), depths=(1, 2, 1, 1), num_heads=(2, 3, 4, 2),
                          group_splits=((1, 1), (1, 1, 1), (4, 0), (1, 1)), kernel_sizes=((3,), (3, 5), (3,), (3,)),
                          window_sizes=(4, 2, 2, 1), max_kv_grids=(2, 4, 2, 2), mlp_ratios=(2.0, 2.0, 2.0, 2.0),
                          num_classes=7)

    def __init__(self, config: CloFormerConfig):
        super().__init__()
        n = len(config.depths)
        per_stage = {name: getattr(config, name) for name in
                     ("dims", "num_heads", "group_splits", "kernel_sizes", "window_sizes", "mlp_kernel_sizes",
                      "mlp_ratios")}
        if config.max_kv_grids is not None:
            per_stage["max_kv_grids"] = config.max_kv_grids
        bad = {name: len(v) for name, v in per_stage.items() if len(v) != n}
        if bad:
            raise ValueError(f"per-stage config fields need {n} entries (len(depths)), got lengths {bad}")
        self.config = config
        self.stem = CloStem(config.in_chans, config.dims[0])
        rates = drop_path_rates(config.drop_path_rate, config.depths)
        stages, reduction = [], 4
        self.feature_info: list[dict[str, Any]] = []
        for i in range(n):
            last = i == n - 1
            out_dim = config.dims[i] if last else config.dims[i + 1]
            stages.append(CloStage(i, config.dims[i], out_dim, not last, config, rates[i]))
            reduction = reduction if last else reduction * 2
            self.feature_info.append({"num_chs": out_dim, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.head = CloHead(config.dims[-1], config.num_classes, config.drop_rate)
        self.num_features = config.dims[-1]
        # No custom init: the official code keeps PyTorch's default initialisation.

    def forward_features(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chans, H, W) -> (B, dims[-1], ceil(H / 32), ceil(W / 32)) (rounded up at every stride)."""
        return self.stages(self._stem(x))

    @staticmethod
    def remap_state_dict(state_dict: dict[str, Tensor], model: "CloFormer") -> dict[str, Tensor]:
        """Official qhfan/CloFormer keys -> visattn keys (visattn keys pass through)."""
        return remap_state_dict(state_dict, model)


# --- key remapping -----------------------------------------------------------------------------------------------

# (official pattern, visattn replacement), applied in order to each key; at most one matches.
_OFFICIAL_KEYS: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"^patch_embed\.conv(\d)\.conv\.0\.", r"stem.conv\1.conv."),
    (r"^patch_embed\.conv(\d)\.conv\.1\.", r"stem.conv\1.norm."),
    (r"^patch_embed\.conv5\.", "stem.proj."),
    (r"^patch_embed\.layernorm\.", "stem.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.qkvs\.(\d+)\.", r"stages.\1.blocks.\2.attn.local_branches.\3.qkv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.convs\.(\d+)\.", r"stages.\1.blocks.\2.attn.local_branches.\3.dwconv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.act_blocks\.(\d+)\.act_block\.0\.",
     r"stages.\1.blocks.\2.attn.local_branches.\3.attn_map.fc1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.act_blocks\.(\d+)\.act_block\.2\.",
     r"stages.\1.blocks.\2.attn.local_branches.\3.attn_map.fc2."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.global_q\.", r"stages.\1.blocks.\2.attn.global_branch.q."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.attn\.global_kv\.", r"stages.\1.blocks.\2.attn.global_branch.kv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.downsample\.0\.", r"stages.\1.blocks.\2.shortcut.conv."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.downsample\.1\.", r"stages.\1.blocks.\2.shortcut.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.downsample\.2\.", r"stages.\1.blocks.\2.shortcut.proj."),
    # norm1 / norm2 / attn.proj / mlp.{fc1,dwconv,fc2} keep their names inside a block
    (r"^layers\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^norm\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
))


def official_to_visattn_key(key: str) -> str:
    """The visattn name of one official qhfan/CloFormer state-dict key (unchanged if it matches no pattern)."""
    for pattern, replacement in _OFFICIAL_KEYS:
        new, hits = pattern.subn(replacement, key)
        if hits:
            return new
    return key


def remap_state_dict(state_dict: dict[str, Tensor], model: CloFormer) -> dict[str, Tensor]:
    """Map an official (qhfan/CloFormer) or visattn CloFormer state dict onto ``model``'s keys.

    A visattn state dict is recognised by its ``stem.`` keys and returned as is; otherwise every key is renamed
    by :func:`official_to_visattn_key` (an unknown key keeps its name, so the strict load reports it).
    """
    if any(k.startswith("stem.") for k in state_dict):
        return dict(state_dict)
    return {official_to_visattn_key(k): v for k, v in state_dict.items()}


VARIANTS = {
    "cloformer_xxs": CloFormerConfig(dims=(32, 64, 128, 256), depths=(2, 2, 6, 2), num_heads=(4, 4, 8, 16),
                                     group_splits=((3, 1), (2, 2), (4, 4), (4, 12)), drop_path_rate=0.0),
    "cloformer_xs": CloFormerConfig(dims=(48, 96, 160, 352), depths=(2, 2, 6, 2), num_heads=(3, 6, 10, 22),
                                    group_splits=((2, 1), (3, 3), (5, 5), (7, 15)), drop_path_rate=0.06),
    "cloformer_s": CloFormerConfig(dims=(64, 128, 224, 448), depths=(2, 2, 6, 2), num_heads=(4, 8, 14, 28),
                                   group_splits=((3, 1), (4, 4), (7, 7), (7, 21)), drop_path_rate=0.06),
}
# Exact counts of the official ``model_factory.cloformer_{xxs,xs,s}()`` (qhfan/CloFormer 9181f69230, 1000 classes),
# counted in the reference environment; the paper rounds them to 4.2M, 7.2M, 12.3M.
REFERENCE_PARAMS = {
    "cloformer_xxs": 4_166_728,
    "cloformer_xs": 7_172_216,
    "cloformer_s": 12_345_576,
}
register_models(CloFormer, VARIANTS, reference_params=REFERENCE_PARAMS)
