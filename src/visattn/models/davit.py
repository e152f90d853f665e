"""DaViT: Dual Attention Vision Transformers (Ding et al., ECCV 2022, arXiv 2204.03645).

Reference implementations: dingmyu/davit (official, ``timm/models/davit.py`` in that repository) and timm
(``timm/models/davit.py``, the ``davit_*`` models), whose state-dict layout this file uses unchanged, so timm
checkpoints load without renaming; :func:`remap_state_dict` also accepts the official layout.

A four-stage pyramid. Stem: conv 7x7 stride 4 -> LayerNorm. Stages 2-4 start with LayerNorm -> conv 2x2 stride 2.
Every stage stacks dual blocks; a dual block is a spatial block (window attention, P = 7) followed by a channel
block (channel group attention, global), and both have the same shape: x = CPE(x); x = x + Attn(LN(x));
x = CPE(x); x = x + MLP(LN(x)), where CPE is a depthwise 3x3 conv with a residual. Head: global average pool ->
LayerNorm -> Linear. Heads per stage = channel groups per stage, 32 channels each.

The blocks work channels-last, (B, H, W, C), from stem to head; the depthwise convs read that memory directly as a
channels-last NCHW view, so no layout copies sit between the blocks.

Deviations:
- Padded keys are masked: maps that do not divide by the window are zero-padded (as in timm and the official code),
  but the padding is excluded from the keys (``mask_padding=True``). timm and the official code let the zero tokens
  act as keys. ``mask_padding=False`` reproduces them exactly; sizes that divide (224 with P = 7) are identical.
- Stochastic depth follows the official code, one rate per attention sub-block growing linearly over all 2 * sum(
  depths) sub-blocks; timm uses one rate per dual block over sum(depths). Training only.
- ``drop_rate`` is head dropout only (timm); the official code has no dropout.
- Not implemented: the Florence-2 towers (``davit_*_fl``: 3x3 downsample, window 12, (H*W)^-0.5 channel scale).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.channel_group import ChannelGroupAttention
from ..attention.spatial_window import SpatialWindowAttention
from ..layers.backbone import ClassifierBackbone
from ..layers.checks import check_config
from ..layers.drop import DropPath, drop_path_rates
from ..layers.fused import fast_inference
from ..layers.mlp import Mlp
from ..layers.model import init_trunc_normal_, run_blocks
from ..layers.partition import needs_padding, pad_to_multiple
from ..registry import register_models

__all__ = ["DaViTConfig", "DaViT"]


@dataclass(frozen=True, kw_only=True)
class DaViTConfig:
    """DaViT hyper-parameters (dingmyu/davit ``DaViT_*``; timm ``davit_*``)."""

    in_chans: int = 3
    num_classes: int = 1000
    dims: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (1, 1, 3, 1)  # dual blocks (spatial + channel) per stage
    num_heads: tuple[int, ...] = (3, 6, 12, 24)  # window attention heads = channel groups, per stage
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5
    mask_padding: bool = True  # False: padded tokens act as keys, exactly as in timm / the official code
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        check_config(self, positive=("in_chans", "dims", "depths", "num_heads", "window_size", "mlp_ratio", "norm_eps"),
                     nonnegative=("num_classes", "drop_rate", "drop_path_rate"))


class ConvPosEnc(nn.Module):
    """Conditional position encoding: x + DWConv3x3(x), on a channels-last map."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, H, W, C) -> (B, H, W, C)."""
        # The permuted view is NCHW in channels-last memory; the conv keeps that format, so no copy either way.
        if fast_inference(x, self):
            return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).add_(x)  # in place: one fresh map fewer
        return x + self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class DaViTBlock(nn.Module):
    """CPE -> x + Attn(LN(x)) -> CPE -> x + MLP(LN(x)); the spatial and the channel block differ only in ``attn``."""

    def __init__(self, dim: int, attn: nn.Module, config: DaViTConfig, drop_path: float):
        super().__init__()
        self.cpe1 = ConvPosEnc(dim)
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path)
        self.cpe2 = ConvPosEnc(dim)
        self.norm2 = nn.LayerNorm(dim, eps=config.norm_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio))
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, H, W, C) -> (B, H, W, C)."""
        x = self.cpe1(x)
        if fast_inference(x, self):  # eval, no autograd: in-place residual, FFN residual fused into fc2
            x = self.cpe2(self.attn.forward_cl(self.norm1(x)).add_(x))
            return self.mlp.forward_add(self.norm2(x), x)
        x = x + self.drop_path1(self.attn.forward_cl(self.norm1(x)))
        x = self.cpe2(x)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


def _dual_block(dim: int, heads: int, config: DaViTConfig, drop_paths: tuple[float, float]) -> nn.Sequential:
    # nn.Sequential keeps timm's keys: blocks.<j>.0 is the spatial block, blocks.<j>.1 the channel block.
    spatial = SpatialWindowAttention(dim, num_heads=heads, window_size=config.window_size, qkv_bias=config.qkv_bias,
                                     mask_padding=config.mask_padding)
    channel = ChannelGroupAttention(dim, num_groups=heads, qkv_bias=config.qkv_bias)
    return nn.Sequential(DaViTBlock(dim, spatial, config, drop_paths[0]),
                         DaViTBlock(dim, channel, config, drop_paths[1]))


def _pad_bottom_right(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad a (B, H, W, C) map so H and W divide by ``multiple`` (timm / official stem and downsample)."""
    return pad_to_multiple(x, multiple)[0]


class DaViTStem(nn.Module):
    """Conv 7x7 stride 4 (input padded to a multiple of 4 first) -> LayerNorm."""

    def __init__(self, in_chans: int, dim: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, dim, 7, stride=4, padding=3)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C_in, H, W) -> (B, ceil(H / 4), ceil(W / 4), dim), channels-last."""
        H, W = x.shape[-2:]
        pad_h, pad_w = (H + 3) // 4 * 4 - H, (W + 3) // 4 * 4 - W   # ceil, not (-H) % 4: traces symbolically
        if needs_padding((pad_h, pad_w)):
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.norm(self.conv(x).permute(0, 2, 3, 1))             # (B, H/4, W/4, dim)


class DaViTDownsample(nn.Module):
    """LayerNorm -> conv 2x2 stride 2 (map padded to a multiple of 2 after the norm)."""

    def __init__(self, in_dim: int, dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(in_dim, eps=eps)
        self.conv = nn.Conv2d(in_dim, dim, 2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, H, W, in_dim) -> (B, ceil(H / 2), ceil(W / 2), dim), channels-last."""
        x = _pad_bottom_right(self.norm(x), 2)
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)   # (B, H/2, W/2, dim)


class DaViTStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, config: DaViTConfig, drop_paths: list[float],
                 downsample: bool):
        super().__init__()
        self.downsample = DaViTDownsample(in_dim, dim, config.norm_eps) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*[
            _dual_block(dim, heads, config, (drop_paths[2 * i], drop_paths[2 * i + 1])) for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, H, W, in_dim) -> (B, H', W', dim), channels-last (H' = ceil(H / 2) after a downsample)."""
        return run_blocks(self.blocks, self.downsample(x), self.grad_checkpointing)


class DaViTHead(nn.Module):
    """Average pool -> LayerNorm -> dropout -> Linear (timm ``NormMlpClassifierHead`` without hidden layer)."""

    def __init__(self, dim: int, num_classes: int, eps: float, drop_rate: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Shape: (B, C, h, w) -> (B, num_classes), or (B, C) with ``pre_logits``."""
        x = self.norm(x.mean((2, 3)))
        return x if pre_logits else self.fc(self.drop(x))


class DaViT(ClassifierBackbone):
    """DaViT image classifier and backbone.

    Args:
        config: a :class:`DaViTConfig` (see ``VARIANTS``).
    """

    data_defaults = {**ClassifierBackbone.data_defaults, "crop_pct": 0.95}  # timm davit_* msft_in1k

    config_class = DaViTConfig
    min_input_size = 32  # the total stride: below it every stage past the stem is mostly padding
    # A reduced config with every code path of the family, used by the generic tests. The default test input
    # (35 x 59) gives stage maps 9x15, 5x8, 3x4, 2x2: padding for the stem, every downsample and every window.
    test_overrides = dict(dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(2, 2, 3, 4), window_size=4,
                          num_classes=7)

    def __init__(self, config: DaViTConfig):
        super().__init__()
        if not len(config.dims) == len(config.depths) == len(config.num_heads):
            raise ValueError(f"dims {config.dims}, depths {config.depths} and num_heads {config.num_heads} must have "
                             "the same length")
        self.config = config
        self.stem = DaViTStem(config.in_chans, config.dims[0], config.norm_eps)
        # One rate per attention sub-block, linear over all 2 * sum(depths) of them (dingmyu/davit ``dpr``).
        rates = drop_path_rates(config.drop_path_rate, tuple(2 * d for d in config.depths))
        stages, in_dim = [], config.dims[0]
        self.feature_info: list[dict[str, Any]] = []
        for i, (dim, depth, heads) in enumerate(zip(config.dims, config.depths, config.num_heads)):
            stages.append(DaViTStage(in_dim, dim, depth, heads, config, rates[i], downsample=i > 0))
            in_dim = dim
            self.feature_info.append({"num_chs": dim, "reduction": 2 ** (i + 2), "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        self.head = DaViTHead(config.dims[-1], config.num_classes, config.norm_eps, config.drop_rate)
        self.num_features = config.dims[-1]
        # Linear: truncated normal(0.02), zero bias (timm DaVit._init_weights); convs keep PyTorch's default init.
        init_trunc_normal_(self)

    def _as_map(self, x: Tensor) -> Tensor:
        return x.permute(0, 3, 1, 2)                                   # (B, H, W, C) -> (B, C, H, W)

    def forward_features(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chans, H, W) -> (B, dims[-1], ceil(H / 32), ceil(W / 32))."""
        return self._as_map(self.stages(self._stem(x)))

    @staticmethod
    def remap_state_dict(state_dict: dict[str, Tensor], model: "DaViT") -> dict[str, Tensor]:
        """timm ``davit_*`` keys are visattn keys; official dingmyu/davit keys are renamed."""
        return remap_state_dict(state_dict, model)


# --- key remapping -----------------------------------------------------------------------------------------------

# Official layout (dingmyu/davit) -> timm / visattn layout, applied in order.
_OFFICIAL_RULES: tuple[tuple[str, str], ...] = (
    (r"^patch_embeds\.0\.proj\.", "stem.conv."),
    (r"^patch_embeds\.0\.norm\.", "stem.norm."),
    (r"^patch_embeds\.(\d+)\.proj\.", r"stages.\1.downsample.conv."),
    (r"^patch_embeds\.(\d+)\.norm\.", r"stages.\1.downsample.norm."),
    (r"^main_blocks\.(\d+)\.", r"stages.\1.blocks."),
    (r"\.cpe\.0\.", ".cpe1."),
    (r"\.cpe\.1\.", ".cpe2."),
    (r"^norms\.", "head.norm."),
    (r"^head\.(weight|bias)$", r"head.fc.\1"),
)


def remap_state_dict(state_dict: dict[str, Tensor], model: DaViT) -> dict[str, Tensor]:
    """Map a timm, official (dingmyu/davit) or visattn DaViT state dict onto ``model``'s keys.

    timm and visattn share every name. The official classification code names the stem and downsamples
    ``patch_embeds.<i>``, the stages ``main_blocks.<i>``, the position encodings ``cpe.<0|1>``, the head norm
    ``norms`` and the classifier ``head``; those are renamed. Tensors are never changed.
    """
    if not any(k.startswith(("patch_embeds.", "main_blocks.")) for k in state_dict):
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _OFFICIAL_RULES:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


VARIANTS = {
    "davit_tiny": DaViTConfig(dims=(96, 192, 384, 768), depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24)),
    "davit_small": DaViTConfig(dims=(96, 192, 384, 768), depths=(1, 1, 9, 1), num_heads=(3, 6, 12, 24)),
    "davit_base": DaViTConfig(dims=(128, 256, 512, 1024), depths=(1, 1, 9, 1), num_heads=(4, 8, 16, 32)),
    "davit_large": DaViTConfig(dims=(192, 384, 768, 1536), depths=(1, 1, 9, 1), num_heads=(6, 12, 24, 48)),
    "davit_huge": DaViTConfig(dims=(256, 512, 1024, 2048), depths=(1, 1, 9, 1), num_heads=(8, 16, 32, 64)),
    "davit_giant": DaViTConfig(dims=(384, 768, 1536, 3072), depths=(1, 1, 12, 3), num_heads=(12, 24, 48, 96)),
}
# Exact counts of timm 1.0.31 ``davit_*`` with 1000 classes (counted on the meta device in the reference
# environment; the official code's comments give the same 28,360,168 / 49,745,896 / 87,954,408 / 196,811,752).
REFERENCE_PARAMS = {
    "davit_tiny": 28_360_168,
    "davit_small": 49_745_896,
    "davit_base": 87_954_408,
    "davit_large": 196_811_752,
    "davit_huge": 348_922_856,
    "davit_giant": 1_406_470_120,
}
register_models(DaViT, VARIANTS, reference_params=REFERENCE_PARAMS)
