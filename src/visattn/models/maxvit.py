"""MaxViT: Multi-Axis Vision Transformer (Tu et al., ECCV 2022, arXiv 2204.01697).

Reference implementations: google-research/maxvit (official, TensorFlow) and its PyTorch port in timm
(``timm/models/maxxvit.py``, the ``maxvit_*_tf_*`` models), whose state-dict layout this file uses unchanged, so
timm checkpoints load without renaming.

Each stage is a stack of MaxViT blocks: MBConv (the first one strides by 2) -> block attention -> FFN -> grid
attention -> FFN. Stem: conv3x3 s2 -> BN -> GELU -> conv3x3. Head: global average pool -> LayerNorm -> Linear ->
tanh -> Linear.

Deviations:
- Any input size >= 32: each attention pads its map to a multiple of the partition size and masks the padding out
  as keys (timm and the official code require sizes divisible by 32 * P / 7). Sizes that divide are unaffected.
- The 2x2 average-pool shortcut follows TF "same" semantics on odd sizes (padding excluded from the mean); timm's
  ``AvgPool2dSame`` includes it. Only odd stage sizes differ, which timm cannot run.
- BatchNorm momentum 0.01 (TF decay 0.99, google-research/maxvit ``bn_momentum``); timm keeps PyTorch's 0.1. This
  changes training statistics only, never a loaded model's outputs.
- Stochastic depth grows linearly from 0 over all blocks (timm's schedule); the official code uses
  ``rate * block_id / num_blocks``, which differs by at most one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.multi_axis import PartitionAttention
from ..layers.backbone import ClassifierBackbone
from ..layers.conv import MBConv, SameConv2d, same_padding
from ..layers.checks import check_config
from ..layers.drop import DropPath, drop_path_rates
from ..layers.fused import conv_act, fast_inference
from ..layers.mlp import Mlp
from ..layers.model import init_trunc_normal_, run_blocks
from ..layers.rel_pos import resize_rel_pos_table
from ..registry import register_models

__all__ = ["MaxViTConfig", "MaxViT"]


@dataclass(frozen=True, kw_only=True)
class MaxViTConfig:
    """MaxViT hyper-parameters (google-research/maxvit ``hp/vision.py``; heads = width / head_dim)."""

    in_chans: int = 3
    num_classes: int = 1000
    stem_width: int = 64
    dims: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (2, 2, 5, 2)
    head_dim: int = 32
    partition_size: int = 7  # 7 for 224 inputs, 12 for 384, 16 for 512 (official fine-tuning configs)
    mlp_ratio: float = 4.0
    expand_ratio: float = 4.0  # MBConv hidden width = expand_ratio * output width
    se_ratio: float = 0.25  # SE bottleneck = se_ratio * output width
    head_hidden_size: int | None = None  # None: the last stage width; 0: no tanh pre-logits layer
    bn_eps: float = 1e-3  # TF BatchNorm epsilon (google-research/maxvit ``bn_epsilon``)
    ln_eps: float = 1e-5
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        check_config(self, positive=("in_chans", "stem_width", "dims", "depths", "head_dim", "partition_size",
                                     "mlp_ratio", "expand_ratio", "head_hidden_size", "bn_eps", "ln_eps"),
                     nonnegative=("num_classes", "se_ratio", "drop_rate", "drop_path_rate"))


def _gelu_tanh() -> nn.Module:
    # The TF code uses tf.nn.gelu(approximate=True) (google-research/maxvit common_ops.py).
    return nn.GELU(approximate="tanh")


class MaxViTTransformerLayer(nn.Module):
    """x + Attn(LN(x)), then x + FFN(LN(x)), on a channels-last map; attention is block or grid partitioned."""

    def __init__(self, dim: int, partition: str, config: MaxViTConfig, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=config.ln_eps)
        self.attn = PartitionAttention(dim, partition=partition, partition_size=config.partition_size,
                                       head_dim=config.head_dim, proj_drop=config.drop_rate)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=config.ln_eps)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), act_layer=_gelu_tanh, drop=config.drop_rate)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, H, W, C) -> (B, H, W, C)."""
        if fast_inference(x, self):  # eval, no autograd: in-place residual, FFN residual fused into fc2
            x = self.attn.forward_cl(self.norm1(x)).add_(x)
            return self.mlp.forward_add(self.norm2(x), x)
        x = x + self.drop_path1(self.attn.forward_cl(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class MaxViTBlock(nn.Module):
    """MBConv -> block attention + FFN -> grid attention + FFN."""

    def __init__(self, in_dim: int, dim: int, stride: int, config: MaxViTConfig, drop_path: float):
        super().__init__()
        self.conv = MBConv(in_dim, dim, stride=stride, expand_ratio=config.expand_ratio, se_ratio=config.se_ratio,
                           act_layer=_gelu_tanh, bn_eps=config.bn_eps, drop_path=drop_path)
        self.attn_block = MaxViTTransformerLayer(dim, "block", config, drop_path)
        self.attn_grid = MaxViTTransformerLayer(dim, "grid", config, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, in_dim, H, W) -> (B, dim, H / stride, W / stride) (rounded up)."""
        x = self.conv(x).permute(0, 2, 3, 1)                           # (B, H', W', C)
        x = self.attn_grid(self.attn_block(x))
        return x.permute(0, 3, 1, 2)                                   # (B, C, H', W')


class MaxViTStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, depth: int, config: MaxViTConfig, drop_paths: list[float]):
        super().__init__()
        self.blocks = nn.Sequential(*[
            MaxViTBlock(in_dim if i == 0 else dim, dim, 2 if i == 0 else 1, config, drop_paths[i])
            for i in range(depth)
        ])
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        return run_blocks(self.blocks, x, self.grad_checkpointing)


class MaxViTStem(nn.Module):
    def __init__(self, config: MaxViTConfig):
        super().__init__()
        w = config.stem_width
        self.conv1 = SameConv2d(config.in_chans, w, 3, 2)
        self.norm1 = nn.BatchNorm2d(w, eps=config.bn_eps, momentum=0.01)
        self.act1 = _gelu_tanh()
        self.conv2 = SameConv2d(w, w, 3, 1)  # no norm or activation after it (google-research/maxvit MaxViT.build)

    def forward(self, x: Tensor) -> Tensor:
        if fast_inference(x, self):
            # BatchNorm folded into conv1 and the GELU fused into it (oneDNN); only the 3-channel input is padded.
            conv, bn = self.conv1, self.norm1
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = bn.bias - bn.running_mean * scale
            top, bottom = same_padding(x.shape[-2], conv.kernel_size[0], conv.stride[0])
            left, right = same_padding(x.shape[-1], conv.kernel_size[1], conv.stride[1])
            if top != bottom or left != right:
                x, top, left = F.pad(x, (left, right, top, bottom)), 0, 0
            weight = conv.weight * scale.view(-1, 1, 1, 1)
            bias = shift if conv.bias is None else conv.bias * scale + shift
            x = conv_act(x.contiguous(memory_format=torch.channels_last), conv, self.act1, weight=weight, bias=bias,
                         padding=(top, left))
            return self.conv2(x)
        return self.conv2(self.act1(self.norm1(self.conv1(x))))


class MaxViTHead(nn.Module):
    """Average pool -> LayerNorm -> [Linear -> tanh] -> dropout -> Linear."""

    def __init__(self, dim: int, num_classes: int, hidden: int, ln_eps: float, drop_rate: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=ln_eps)
        if hidden:
            self.pre_logits = nn.Sequential()
            self.pre_logits.add_module("fc", nn.Linear(dim, hidden))
            self.pre_logits.add_module("act", nn.Tanh())
        else:
            self.pre_logits = nn.Identity()
        self.num_features = hidden or dim
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.pre_logits(self.norm(x.mean((2, 3))))                 # (B, num_features)
        return x if pre_logits else self.fc(self.drop(x))


class MaxViT(ClassifierBackbone):
    """MaxViT image classifier and backbone.

    Args:
        config: a :class:`MaxViTConfig` (see ``VARIANTS``).
    """

    # timm's maxvit_*_tf_224 in1k weights: ImageNet mean / std, centre crop 0.95; its xlarge default tag is in21k with
    # mean = std = 0.5
    data_defaults = {**ClassifierBackbone.data_defaults, "crop_pct": 0.95}
    data_variants = {"maxvit_xlarge": {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}}

    config_class = MaxViTConfig
    min_input_size = 32
    # A reduced config with every code path of the family, used by the generic tests.
    test_overrides = dict(stem_width=16, dims=(16, 32, 32, 48), depths=(1, 2, 1, 1), head_dim=16, partition_size=4,
                          num_classes=7)

    def __init__(self, config: MaxViTConfig):
        super().__init__()
        if len(config.dims) != len(config.depths):
            raise ValueError(f"dims {config.dims} and depths {config.depths} must have the same length")
        self.config = config
        self.stem = MaxViTStem(config)
        rates = drop_path_rates(config.drop_path_rate, config.depths)
        stages, in_dim, reduction = [], config.stem_width, 2
        self.feature_info: list[dict[str, Any]] = []
        for i, (dim, depth) in enumerate(zip(config.dims, config.depths)):
            stages.append(MaxViTStage(in_dim, dim, depth, config, rates[i]))
            in_dim, reduction = dim, reduction * 2
            self.feature_info.append({"num_chs": dim, "reduction": reduction, "module": f"stages.{i}"})
        self.stages = nn.Sequential(*stages)
        hidden = config.dims[-1] if config.head_hidden_size is None else config.head_hidden_size
        self.head = MaxViTHead(config.dims[-1], config.num_classes, hidden, config.ln_eps, config.drop_rate)
        self.num_features = self.head.num_features
        # Normal(0, 0.02) kernels and zero biases, convs included (google-research/maxvit:
        # tf.random_normal_initializer(stddev=0.02)).
        init_trunc_normal_(self, layers=(nn.Linear, nn.Conv2d))

    def _stem(self, x: Tensor) -> Tensor:
        self.check_input(x)
        # NHWC memory: oneDNN convolutions run faster on it, and every (B, C, H, W) <-> (B, H, W, C) permute
        # between the MBConv and the attention layers becomes a free view instead of a copy.
        return self.stem(x.contiguous(memory_format=torch.channels_last))

    def forward_features(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chans, H, W) -> (B, dims[-1], ceil(H / 32), ceil(W / 32))."""
        return self.stages(self._stem(x))

    @staticmethod
    def remap_state_dict(state_dict: dict[str, Tensor], model: "MaxViT") -> dict[str, Tensor]:
        """timm ``maxvit_*_tf_*`` keys are visattn keys; only the relative position tables may need resizing."""
        return remap_state_dict(state_dict, model)


# --- key remapping -----------------------------------------------------------------------------------------------

def remap_state_dict(state_dict: dict[str, Tensor], model: MaxViT) -> dict[str, Tensor]:
    """Map a timm or visattn MaxViT state dict onto ``model``.

    Both use the same names. Relative position tables from a checkpoint trained with another partition size are
    resized bilinearly (``resize_rel_pos_table``), so e.g. ``maxvit_tiny_tf_384`` weights load into a P=7 model.
    A 1x1 conv stored as a linear weight (or back) is reshaped, as timm's ``checkpoint_filter_fn`` allows.
    """
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.endswith("relative_position_bias_table") and key in own and value.shape != own[key].shape:
            value = resize_rel_pos_table(value, model.config.partition_size)
        elif key in own and value.ndim != own[key].ndim and value.numel() == own[key].numel():
            value = value.reshape(own[key].shape)
        out[key] = value
    return out


VARIANTS = {
    "maxvit_tiny": MaxViTConfig(stem_width=64, dims=(64, 128, 256, 512), depths=(2, 2, 5, 2)),
    "maxvit_small": MaxViTConfig(stem_width=64, dims=(96, 192, 384, 768), depths=(2, 2, 5, 2)),
    "maxvit_base": MaxViTConfig(stem_width=64, dims=(96, 192, 384, 768), depths=(2, 6, 14, 2)),
    "maxvit_large": MaxViTConfig(stem_width=128, dims=(128, 256, 512, 1024), depths=(2, 6, 14, 2)),
    "maxvit_xlarge": MaxViTConfig(stem_width=192, dims=(192, 384, 768, 1536), depths=(2, 6, 14, 2)),
}
# Exact counts of timm 1.0.31 ``maxvit_{tiny,small,base,large,xlarge}_tf_224`` with 1000 classes (counted in the
# reference environment; the paper's Table 10 rounds them to 30.9M, 68.9M, 119.4M, 211.8M).
REFERENCE_PARAMS = {
    "maxvit_tiny": 30_916_528,
    "maxvit_small": 68_927_956,
    "maxvit_base": 119_467_708,
    "maxvit_large": 211_785_560,
    "maxvit_xlarge": 474_951_952,
}
register_models(MaxViT, VARIANTS, reference_params=REFERENCE_PARAMS)
