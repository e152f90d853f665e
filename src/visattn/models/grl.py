"""GRL: image restoration with global, regional and local modelling (Li et al., CVPR 2023, arXiv 2303.00748).

Reference implementation: ofsoundof/GRL-Image-Restoration (``models/networks/grl.py``,
``models/common/mixed_attn_block_efficient.py``, ``mixed_attn_block.py``, ``ops.py``, ``upsample.py``).

conv3x3 -> LayerNorm -> stages -> LayerNorm -> conv3x3 (+ the conv_first features) -> reconstruction. A stage is a
stack of transformer layers followed by a conv3x3, with a residual over the stage. A layer is res-post-norm (Swin
V2 style): x + LN(MixedAttention(x)) [+ CAB(x)], then x + LN(MLP(x)). The mixed attention splits one qkv projection
in two halves: shifted-window cosine attention (``attention/window_v2.py``) on one, anchored stripe attention
(``attention/anchored_stripe.py``) on the other; the two outputs are concatenated and projected. Layers alternate
horizontal and vertical stripes, shift the windows every other layer and the stripes in layers 2, 3 of every 4.
Reconstruction: ``pixelshuffle`` (conv + LeakyReLU, conv + PixelShuffle per factor 2 or one for 3, conv),
``pixelshuffledirect`` (one conv + PixelShuffle, GRL-T), ``nearest+conv`` (real-world SR x4: conv + LeakyReLU, two
nearest x2 upsamplings each followed by conv + LeakyReLU(0.2), conv + LeakyReLU(0.2), conv) or, with ``upscale=1``
(denoising, deblurring), a conv3x3 added to the input - or alone when ``out_chans`` differs from ``in_chans`` (the
6-channel dual-pixel input of defocus deblurring restored to 3 channels). The RGB mean of DIV2K is subtracted first
and added back at the end (3-channel inputs only, as the official code).

Deviations:
- ``stripe_groups`` stripes follow the axis they cut (stripe height = H / G0, width = W / G1). The official code
  builds the vertical-stripe tables from the transposed *horizontal* geometry, which fails for non-square inputs;
  for square inputs (and for the fixed stripes of the released SR and denoising configs) the two agree.
- ``upscale=1`` always uses the denoising head (conv3x3 added to the input), whatever ``upsampler`` says; the official
  ``pixelshuffle`` head with scale 1 degenerates to two convs without the input residual.
- Window and stripe sizes that do not divide the reflect-padded map (possible only with sizes the official configs
  never combine) are handled by zero padding and masking inside the attention instead of failing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.anchored_stripe import AnchoredStripeCore, AnchorProjection
from ..attention.window_v2 import ShiftedWindowCosineAttention
from ..layers.conv import SqueezeExcite
from ..layers.checks import check_config
from ..layers.drop import DropPath, drop_path_rates
from ..layers.mlp import Mlp
from ..layers.model import VisionModel, init_trunc_normal_, run_blocks
from ..layers.partition import is_symbolic
from ..registry import register_models

__all__ = ["GRLConfig", "GRL"]


@dataclass(frozen=True, kw_only=True)
class GRLConfig:
    """GRL hyper-parameters (official ``config/model/grl/grl_*.yaml`` and ``config/experiment/{sr,dn}/grl``)."""

    in_chans: int = 3
    upscale: int = 4  # 2, 3, 4 (any power of 2 with pixelshuffle) for super-resolution, 1 for denoising
    upsampler: str = "pixelshuffledirect"  # "pixelshuffle", "nearest+conv" (x4); upscale 1: the conv head
    out_chans: int | None = None  # output channels (None: in_chans), e.g. 3 for a 6-channel dual-pixel input
    embed_dim: int = 64
    depths: tuple[int, ...] = (4, 4, 4, 4)
    num_heads_window: tuple[int, ...] = (2, 2, 2, 2)
    num_heads_stripe: tuple[int, ...] = (2, 2, 2, 2)
    window_size: int = 32
    stripe_size: tuple[int | None, int | None] = (64, 64)  # horizontal stripes; vertical layers transpose them
    stripe_groups: tuple[int | None, int | None] = (None, None)  # an entry G: that axis is cut into G stripes
    stripe_shift: bool = True
    anchor_down_factor: int = 4
    mlp_ratio: float = 2.0
    local_connection: bool = False  # the conv + channel-attention branch (CAB) of GRL-B
    upsample_features: int = 64  # width of the pixelshuffle head (``num_out_feats``)
    cpb_hidden: int = 512  # width of the continuous position bias MLPs
    img_range: float = 1.0
    rgb_mean: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)  # DIV2K mean, subtracted from RGB inputs
    qkv_bias: bool = True
    drop_rate: float = 0.0
    drop_path_rate: float = 0.1  # official default ("no impact on SR results")

    def __post_init__(self) -> None:
        check_config(self, positive=("in_chans", "upscale", "embed_dim", "depths", "num_heads_window",
                                     "num_heads_stripe", "window_size", "stripe_size", "stripe_groups",
                                     "anchor_down_factor", "mlp_ratio", "upsample_features", "cpb_hidden", "img_range"),
                     nonnegative=("rgb_mean", "drop_rate", "drop_path_rate"))


class MixedAttention(nn.Module):
    """One qkv projection split between window attention and anchored stripe attention, then one output projection.

    Shape: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, num_heads_window: int, num_heads_stripe: int, config: GRLConfig, *,
                 window_shift: bool, stripe_size: tuple, stripe_groups: tuple, stripe_shift: bool):
        super().__init__()
        if dim % 2 or (dim // 2) % num_heads_window or (dim // 2) % num_heads_stripe:
            raise ValueError(f"embed_dim {dim} must be even and half of it divisible by the window heads "
                             f"({num_heads_window}) and stripe heads ({num_heads_stripe})")
        self.qkv = nn.Linear(dim, 3 * dim, bias=config.qkv_bias)
        self.anchor = AnchorProjection(dim, dim // 2, config.anchor_down_factor)
        self.window_attn = ShiftedWindowCosineAttention(num_heads_window, config.window_size, shift=window_shift,
                                                        cpb_hidden=config.cpb_hidden)
        self.stripe_attn = AnchoredStripeCore(num_heads_stripe, stripe_size, stripe_groups, shift=stripe_shift,
                                              down_factor=config.anchor_down_factor, cpb_hidden=config.cpb_hidden)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(config.drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        qkv_window, qkv_stripe = self.qkv(x).chunk(2, dim=-1)              # 2 x (B, H, W, 3C/2)
        out = torch.cat([self.window_attn(qkv_window), self.stripe_attn(qkv_stripe, self.anchor(x))], dim=-1)
        return self.proj_drop(self.proj(out))


class ChannelAttentionBlock(nn.Module):
    """CAB (GRL-B's local branch, from HAT): conv3x3 (C -> C/4), GELU, conv3x3 (C/4 -> C), channel attention.

    Shape: (B, H, W, C) -> (B, H, W, C).
    """

    def __init__(self, dim: int, compress_ratio: int = 4, reduction: int = 18):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim // compress_ratio, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // compress_ratio, dim, 3, padding=1)
        self.ca = SqueezeExcite(dim, dim // reduction, act_layer=nn.ReLU)  # RCAN's channel attention

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)                                          # (B, C, H, W)
        x = self.ca(self.conv2(self.act(self.conv1(x))))
        return x.permute(0, 2, 3, 1)                                       # (B, H, W, C)


class GRLTransformerLayer(nn.Module):
    """Res-post-norm layer: x + LN(attn(x)) [+ CAB(x)], then x + LN(MLP(x)) (channels-last)."""

    def __init__(self, dim: int, index: int, num_heads_window: int, num_heads_stripe: int, config: GRLConfig,
                 drop_path: float):
        super().__init__()
        vertical = index % 2 == 1  # official stripe_type "W" on odd layers: stripe sizes and groups transposed
        stripe_size = tuple(config.stripe_size[::-1]) if vertical else tuple(config.stripe_size)
        stripe_groups = tuple(config.stripe_groups[::-1]) if vertical else tuple(config.stripe_groups)
        self.attn = MixedAttention(dim, num_heads_window, num_heads_stripe, config, window_shift=index % 2 == 0,
                                   stripe_size=stripe_size, stripe_groups=stripe_groups,
                                   stripe_shift=config.stripe_shift and index % 4 in (2, 3))
        self.norm1 = nn.LayerNorm(dim)
        self.local = ChannelAttentionBlock(dim) if config.local_connection else None
        self.drop_path1 = DropPath(drop_path)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), drop=config.drop_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, H, W, C) -> (B, H, W, C)."""
        out = x + self.drop_path1(self.norm1(self.attn(x)))
        if self.local is not None:
            out = out + self.local(x)
        return out + self.drop_path2(self.norm2(self.mlp(out)))


class GRLStage(nn.Module):
    """Transformer layers, a conv3x3, and a residual over the whole stage."""

    def __init__(self, dim: int, depth: int, num_heads_window: int, num_heads_stripe: int, config: GRLConfig,
                 drop_paths: list[float]):
        super().__init__()
        self.blocks = nn.ModuleList([
            GRLTransformerLayer(dim, i, num_heads_window, num_heads_stripe, config, drop_paths[i])
            for i in range(depth)
        ])
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.grad_checkpointing = False

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, H, W, C) -> (B, H, W, C)."""
        res = run_blocks(self.blocks, x, self.grad_checkpointing)
        res = self.conv(res.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)       # conv on (B, C, H, W), back to (B, H, W, C)
        return res + x


def _pixelshuffle_layers(scale: int, channels: int, out_channels: int | None = None) -> list[nn.Module]:
    """conv + PixelShuffle(2) per factor 2 of ``scale`` (or one PixelShuffle(3)); ``out_channels`` given: one step."""
    if out_channels is not None:
        return [nn.Conv2d(channels, scale * scale * out_channels, 3, padding=1), nn.PixelShuffle(scale)]
    if scale & (scale - 1) == 0:
        layers: list[nn.Module] = []
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(channels, 4 * channels, 3, padding=1), nn.PixelShuffle(2)]
        return layers
    if scale == 3:
        return [nn.Conv2d(channels, 9 * channels, 3, padding=1), nn.PixelShuffle(3)]
    raise ValueError(f"upscale {scale} is not supported by the pixelshuffle head: use a power of 2 or 3")


class GRL(VisionModel):
    """GRL image restoration network (super-resolution or denoising).

    Args:
        config: a :class:`GRLConfig` (see ``VARIANTS``).
    """

    config_class = GRLConfig
    task = "restoration"
    # Images below 8 x 8 (the smallest official window) are rejected rather than restored from mostly padding.
    min_input_size = 8
    # A reduced config with every code path: window + grouped stripe attention, both shifts, horizontal and
    # vertical stripes (4 layers), the CAB branch, the pixelshuffle head and reflect padding of odd sizes.
    test_overrides = dict(embed_dim=36, depths=(4, 1), num_heads_window=(3, 3), num_heads_stripe=(3, 3), window_size=4,
                          stripe_size=(4, None), stripe_groups=(None, 2), anchor_down_factor=2, local_connection=True,
                          upscale=2, upsampler="pixelshuffle", upsample_features=16, cpb_hidden=16)
    test_mismatch_overrides = {"in_chans": 1}

    def __init__(self, config: GRLConfig):
        super().__init__()
        n = len(config.depths)
        if len(config.num_heads_window) != n or len(config.num_heads_stripe) != n:
            raise ValueError(f"depths {config.depths}, num_heads_window {config.num_heads_window} and "
                             f"num_heads_stripe {config.num_heads_stripe} must have the same length")
        if config.upscale < 1:
            raise ValueError(f"upscale must be >= 1, got {config.upscale}")
        if config.upscale > 1 and config.upsampler not in ("pixelshuffle", "pixelshuffledirect", "nearest+conv"):
            raise ValueError(f"upsampler must be 'pixelshuffle', 'pixelshuffledirect' or 'nearest+conv', got "
                             f"{config.upsampler!r}")
        if config.upscale > 1 and config.upsampler == "nearest+conv" and config.upscale != 4:
            raise ValueError(f"the nearest+conv upsampler upscales x4 only (as the official one), got upscale "
                             f"{config.upscale}")
        out_chans = config.out_chans or config.in_chans
        if config.in_chans == 3 and out_chans != 3:
            raise ValueError(f"an RGB (3-channel) input gives 3 output channels, got out_chans {out_chans}")
        self.config = config
        self.out_chans = out_chans
        C = config.embed_dim
        # The RGB mean for 3-channel inputs, else zero (official: one zero for any other channel count).
        mean = config.rgb_mean if config.in_chans == 3 else (0.0,)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        # Inputs are reflect-padded to a multiple of this (official GRL.pad_size).
        stripes = [s or 0 for s in config.stripe_size]
        groups = [g or 0 for g in config.stripe_groups]
        self.pad_size = max(config.window_size, *stripes, max(groups) * config.anchor_down_factor)

        self.conv_first = nn.Conv2d(config.in_chans, C, 3, padding=1)
        self.norm_start = nn.LayerNorm(C)
        self.pos_drop = nn.Dropout(config.drop_rate)
        rates = drop_path_rates(config.drop_path_rate, config.depths)
        self.stages = nn.ModuleList([
            GRLStage(C, d, hw, hs, config, rates[i])
            for i, (d, hw, hs) in enumerate(zip(config.depths, config.num_heads_window, config.num_heads_stripe))
        ])
        self.norm_end = nn.LayerNorm(C)
        self.conv_after_body = nn.Conv2d(C, C, 3, padding=1)
        s = config.upscale
        if s == 1:
            self.conv_last = nn.Conv2d(C, out_chans, 3, padding=1)
        elif config.upsampler == "pixelshuffle":
            width = config.upsample_features
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(C, width, 3, padding=1), nn.LeakyReLU(inplace=True))
            self.upsample = nn.Sequential(*_pixelshuffle_layers(s, width))
            self.conv_last = nn.Conv2d(width, out_chans, 3, padding=1)
        elif config.upsampler == "nearest+conv":
            # official key names: conv_before_upsample.0, conv_up1, conv_up2, conv_hr, conv_last
            width = config.upsample_features
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(C, width, 3, padding=1), nn.LeakyReLU(inplace=True))
            self.conv_up1 = nn.Conv2d(width, width, 3, padding=1)
            self.conv_up2 = nn.Conv2d(width, width, 3, padding=1)
            self.conv_hr = nn.Conv2d(width, width, 3, padding=1)
            self.conv_last = nn.Conv2d(width, out_chans, 3, padding=1)
            self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        else:
            self.upsample = nn.Sequential(*_pixelshuffle_layers(s, C, out_chans))
        self.num_features = C
        self.feature_info = [{"num_chs": C, "reduction": 1, "module": "norm_end"}]
        # Linear layers (the position-bias MLPs included): truncated normal std 0.02, zero bias; convs keep PyTorch's
        # default (official GRL._init_weights, whose LayerNorm branch sets the values a new LayerNorm already has).
        init_trunc_normal_(self)

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(B, in_chans, H, W) -> (B, out_chans, H * upscale, W * upscale)."""
        B, _, H, W = input_shape
        s = self.config.upscale
        return (B, self.out_chans, H * s, W * s)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Logit scales and position-bias MLPs stay free of weight decay (as Swin V2's logit_scale / cpb_mlp)."""
        return {n for n, _ in self.named_parameters() if "logit_scale" in n or "cpb_mlp" in n}

    def _pad(self, x: Tensor) -> Tensor:
        H, W = x.shape[-2:]
        if is_symbolic(H, W):
            return self._pad_traced(x)
        ph, pw = (-H) % self.pad_size, (-W) % self.pad_size
        if not (ph or pw):
            return x
        # Reflect, falling back to zeros when the image is smaller than the padding (official check_image_size).
        mode = "reflect" if ph < H and pw < W else "constant"
        return F.pad(x, (0, pw, 0, ph), mode=mode)

    def _pad_traced(self, x: Tensor) -> Tensor:
        """:meth:`_pad` for symbolic sizes (torch.export): the same pixels without a branch on the size.

        Reflect padding guards on pad < size and the zero fallback is a branch on the size; here both are computed
        and a tensor condition picks one. The reflected rows are gathered (row i < H is row i, row i >= H is row
        2 (H - 1) - i), which is F.pad's reflect wherever the pad is smaller than the image; the padded size is a
        product ceil(H / P) * P so the partitions need no divisibility guard.
        """
        H, W = x.shape[-2:]
        P = self.pad_size
        Hp, Wp = (H + P - 1) // P * P, (W + P - 1) // P * P
        zeros = F.pad(x, (0, Wp - W, 0, Hp - H))                           # (B, C, Hp, Wp)
        rows, cols = torch.arange(Hp, device=x.device), torch.arange(Wp, device=x.device)
        rows = torch.where(rows < H, rows, 2 * (H - 1) - rows)             # negative where pad >= H
        cols = torch.where(cols < W, cols, 2 * (W - 1) - cols)
        reflect_ok = (rows.min() >= 0) & (cols.min() >= 0)                # the official test ph < H and pw < W
        reflected = x.index_select(-2, rows.clamp(min=0)).index_select(-1, cols.clamp(min=0))  # (B, C, Hp, Wp)
        return torch.where(reflect_ok, reflected, zeros)

    def forward_features(self, x: Tensor) -> Tensor:
        """The body on conv_first features. Shape: (B, C, H, W) -> (B, C, H, W)."""
        x = self.pos_drop(self.norm_start(x.permute(0, 2, 3, 1)))          # (B, H, W, C)
        for stage in self.stages:
            x = stage(x)
        return self.norm_end(x).permute(0, 3, 1, 2)                        # (B, C, H, W)

    def forward(self, x: Tensor) -> Tensor:
        """Restore an image in [0, 1] (the training range; nothing clamps it).

        Shape: (B, in_chans, H, W) -> (B, out_chans, H * upscale, W * upscale); any H, W >= 8.
        """
        self.check_input(x)
        H, W = x.shape[-2:]
        x = (self._pad(x) - self.mean) * self.config.img_range
        feat = self.conv_first(x)
        body = self.conv_after_body(self.forward_features(feat)) + feat
        if self.config.upscale == 1:
            out = self.conv_last(body)
            if self.out_chans == self.config.in_chans:
                out = out + x
        elif self.config.upsampler == "pixelshuffle":
            out = self.conv_last(self.upsample(self.conv_before_upsample(body)))
        elif self.config.upsampler == "nearest+conv":
            y = self.conv_before_upsample(body)
            y = self.lrelu(self.conv_up1(F.interpolate(y, scale_factor=2, mode="nearest")))   # (B, F, 2H, 2W)
            y = self.lrelu(self.conv_up2(F.interpolate(y, scale_factor=2, mode="nearest")))   # (B, F, 4H, 4W)
            out = self.conv_last(self.lrelu(self.conv_hr(y)))
        else:
            out = self.upsample(body)
        out = out / self.config.img_range + self.mean
        s = self.config.upscale
        if is_symbolic(H, W):  # a slice's bound clamp would guard on H * s <= Hp * s; crop by negative padding
            return F.pad(out, (0, W * s - out.shape[-1], 0, H * s - out.shape[-2]))
        return out[..., :H * s, :W * s]

    @staticmethod
    def remap_state_dict(state_dict: dict[str, Tensor], model: "GRL") -> dict[str, Tensor]:
        """Official (Lightning ``model.``-prefixed or bare) or visattn keys -> visattn keys."""
        return remap_state_dict(state_dict, model)


# --- key remapping -----------------------------------------------------------------------------------------------

# Official buffers rebuilt on the fly here (coordinate tables, indices, shift masks) and training bookkeeping.
_DROP = re.compile(r"^(table_|index_|mask_)|(relative_coords_table|relative_position_index|attn_mask)$"
                   r"|^(current_val_metric|best_val_metric|best_iter)$")
_RENAMES = [
    (re.compile(r"^layers\.(\d+)\."), r"stages.\1."),
    (re.compile(r"\.attn\.qkv\.body\."), ".attn.qkv."),
    (re.compile(r"\.attn\.anchor\.body\.0\.reduction\."), ".attn.anchor.reduction."),
    (re.compile(r"\.conv\.cab\.0\."), ".local.conv1."),
    (re.compile(r"\.conv\.cab\.2\."), ".local.conv2."),
    (re.compile(r"\.conv\.cab\.3\.attention\.1\."), ".local.ca.fc1."),
    (re.compile(r"\.conv\.cab\.3\.attention\.3\."), ".local.ca.fc2."),
    (re.compile(r"^upsample\.up\."), "upsample."),
]


def remap_state_dict(state_dict: dict[str, Tensor], model: GRL | None = None) -> dict[str, Tensor]:
    """Map official GRL keys (models/networks/grl.py, as saved by its Lightning engine) onto visattn's.

    A Lightning checkpoint prefixes the network's keys with ``model.`` next to other entries (metrics, loss
    modules); only the ``model.`` ones are kept. Official buffers that visattn recomputes are dropped. visattn keys
    pass through unchanged.
    """
    if any(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
    out = {}
    for key, value in state_dict.items():
        if _DROP.search(key):
            continue
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


_SR = dict(window_size=32, stripe_size=(64, 64), stripe_groups=(None, None), anchor_down_factor=4)
_DN = dict(upscale=1, window_size=16, stripe_size=(64, 128), stripe_groups=(None, None), anchor_down_factor=4)
_JPEG = dict(upscale=1, window_size=36, stripe_size=(72, 144), stripe_groups=(None, None), anchor_down_factor=4)
_DM = dict(upscale=1, window_size=8, stripe_size=(32, 32), stripe_groups=(None, None), anchor_down_factor=4)
_TINY = dict(embed_dim=64, depths=(4, 4, 4, 4), num_heads_window=(2,) * 4, num_heads_stripe=(2,) * 4,
             upsampler="pixelshuffledirect")
_SMALL = dict(embed_dim=128, depths=(4, 4, 4, 4), num_heads_window=(2,) * 4, num_heads_stripe=(2,) * 4,
              upsampler="pixelshuffle")
_BASE = dict(embed_dim=180, depths=(4, 4, 8, 8, 8, 4, 4), num_heads_window=(3,) * 7, num_heads_stripe=(3,) * 7,
             upsampler="pixelshuffle", local_connection=True)
# GRL-B: the official test script (scripts/grl/grl_test.md) evaluates its SR and denoising weights with anchor down
# factor 2 and, for denoising, window 32.
_BASE_TEST = dict(anchor_down_factor=2)
_DEBLUR_MOTION = dict(upscale=1, window_size=12, stripe_size=(48, 96), stripe_groups=(None, None), anchor_down_factor=4)
_DEBLUR_DEFOCUS = dict(upscale=1, window_size=16, stripe_size=(48, 96), stripe_groups=(None, None),
                       anchor_down_factor=4)
_REALSR = dict(upscale=4, upsampler="nearest+conv", window_size=16, stripe_size=(64, 64), stripe_groups=(None, None),
               anchor_down_factor=4)

VARIANTS = {
    # super-resolution x4 (the official model configs' default scale), SR experiment windows and stripes
    "grl_tiny": GRLConfig(**_TINY, **_SR, upscale=4),
    "grl_small": GRLConfig(**_SMALL, **_SR, upscale=4),
    "grl_base": GRLConfig(**_BASE, **{**_SR, **_BASE_TEST}, upscale=4),
    # super-resolution x2
    "grl_tiny_x2": GRLConfig(**_TINY, **_SR, upscale=2),
    "grl_small_x2": GRLConfig(**_SMALL, **_SR, upscale=2),
    "grl_base_x2": GRLConfig(**_BASE, **{**_SR, **_BASE_TEST}, upscale=2),
    # colour denoising (in_chans=1 for grayscale)
    "grl_tiny_denoise": GRLConfig(**_TINY, **_DN),
    "grl_small_denoise": GRLConfig(**_SMALL, **_DN),
    "grl_base_denoise": GRLConfig(**_BASE, **{**_DN, **_BASE_TEST, "window_size": 32}),
    # JPEG artefact removal (config/experiment/jpeg/grl/grl_p288.yaml) and demosaicking (dm/grl.yaml), GRL-S
    "grl_small_jpeg": GRLConfig(**_SMALL, **_JPEG),
    "grl_small_jpeg_gray": GRLConfig(**_SMALL, **_JPEG, in_chans=1),
    "grl_small_demosaic": GRLConfig(**_SMALL, **_DM),
    # motion / defocus deblurring and real-world SR: config/experiment/{db_motion,db_defocus}/grl_p480.yaml and
    # bsr/grl_psnr.yaml (their anchor down factor 4; the official test script overrides nothing for them)
    "grl_base_deblur_motion": GRLConfig(**_BASE, **_DEBLUR_MOTION),
    "grl_base_deblur_defocus": GRLConfig(**_BASE, **_DEBLUR_DEFOCUS),
    "grl_base_deblur_defocus_dp": GRLConfig(**_BASE, **_DEBLUR_DEFOCUS, in_chans=6, out_chans=3),
    "grl_base_realsr": GRLConfig(**{**_BASE, **_REALSR}),
}
# Exact counts of the official GRL class built with these configs (counted in the reference environment); the paper
# rounds them to SR x4 0.91M / 3.49M / 20.20M, SR x2 0.89M / 3.34M / 20.05M, denoising 0.88M / 3.12M / 19.81M.
REFERENCE_PARAMS = {
    "grl_tiny": 906_192,
    "grl_small": 3_487_715,
    "grl_base": 20_201_299,
    "grl_tiny_x2": 885_420,
    "grl_small_x2": 3_340_003,
    "grl_base_x2": 20_053_587,
    "grl_tiny_denoise": 880_227,
    "grl_small_denoise": 3_120_227,
    "grl_base_denoise": 19_805_263,
    "grl_small_jpeg": 3_120_227,
    "grl_small_jpeg_gray": 3_115_617,
    "grl_small_demosaic": 3_120_227,
    # Counted with the official class too (config/experiment/{db_motion,db_defocus}/grl_p480.yaml, bsr/grl_psnr.yaml
    # settings; in_channels 6 / out_channels 3 for dual-pixel). Why: windows, stripes and the anchor factor add no
    # parameters (continuous position-bias MLPs, average-pooled anchors), so the deblurring models count as
    # grl_base_denoise; the 6-channel input adds 3 x 180 x 9 conv_first weights; nearest+conv replaces grl_base's two
    # conv + PixelShuffle(2) steps (2 x (64 x 256 x 9 + 256)) by conv_up1, conv_up2, conv_hr (3 x (64 x 64 x 9 + 64)).
    "grl_base_deblur_motion": 19_805_263,
    "grl_base_deblur_defocus": 19_805_263,
    "grl_base_deblur_defocus_dp": 19_805_263 + 3 * 180 * 9,
    "grl_base_realsr": 20_201_299 - 2 * (64 * 256 * 9 + 256) + 3 * (64 * 64 * 9 + 64),
}
register_models(GRL, VARIANTS, reference_params=REFERENCE_PARAMS)
