"""Demosaicking (``--task demosaic``): a Bayer RGGB mosaic, interpolated by the fixed 5 x 5 Malvar-He-Cutler
filters (MATLAB ``demosaic``'s gradient-corrected bilinear), which is what the official GRL code feeds its network
(``utils/utils_mosaic.py: dm_matlab``, applied in ``engines/base.py``; RGGB: R at (0, 0), G at (0, 1) and (1, 0),
B at (1, 1)).

Malvar, He and Cutler, "High-quality linear interpolation for demosaicing of Bayer-patterned color images", ICASSP
2004: each missing colour is the bilinear average of its neighbours of that colour plus a gradient correction from
the colour sampled at the pixel. The filters sum to one and are symmetric, so they reproduce constant and linear
images exactly; the mosaic is reflect-padded by 2 (as ``dm_matlab``), which keeps the Bayer phase at the borders.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .degradations import Degradation
from .metrics import quantize
from .task import RestorationTask

__all__ = ["BayerMosaic", "DemosaicTask", "bayer_mosaic", "malvar_demosaic"]

# Malvar-He-Cutler filters (x 1/8), ICASSP 2004 Fig. 2; the same values as MATLAB demosaic and dm_matlab.
_G_AT_RB = [[0, 0, -1, 0, 0],
            [0, 0, 2, 0, 0],
            [-1, 2, 4, 2, -1],
            [0, 0, 2, 0, 0],
            [0, 0, -1, 0, 0]]
_RB_AT_G_ROW = [[0, 0, 0.5, 0, 0],          # R (or B) at a green pixel whose row holds R (B): horizontal neighbours
                [0, -1, 0, -1, 0],
                [-1, 4, 5, 4, -1],
                [0, -1, 0, -1, 0],
                [0, 0, 0.5, 0, 0]]
_RB_AT_BR = [[0, 0, -1.5, 0, 0],            # R at a blue pixel, B at a red one: diagonal neighbours
             [0, 2, 0, 2, 0],
             [-1.5, 0, 6, 0, -1.5],
             [0, 2, 0, 2, 0],
             [0, 0, -1.5, 0, 0]]


def _check_even(H: int, W: int) -> None:
    if H % 2 or W % 2 or H < 4 or W < 4:
        raise ValueError(f"a Bayer RGGB mosaic is made of whole 2x2 cells and the 5x5 interpolation needs at least "
                         f"4x4 pixels: got {H}x{W}; crop the image to even sides")


def bayer_mosaic(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) RGGB colour filter array (R at even rows and columns, B at odd ones, G
    elsewhere). H and W must be even."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"a Bayer mosaic is made from (B, 3, H, W) RGB images, got {tuple(x.shape)}")
    _check_even(*x.shape[-2:])
    cfa = x[:, 1:2].clone()                                             # (B, 1, H, W), green everywhere
    cfa[..., 0::2, 0::2] = x[:, 0:1, 0::2, 0::2]
    cfa[..., 1::2, 1::2] = x[:, 2:3, 1::2, 1::2]
    return cfa


def malvar_demosaic(cfa: Tensor) -> Tensor:
    """Malvar-He-Cutler interpolation of a (B, 1, H, W) RGGB mosaic -> (B, 3, H, W) RGB, not clipped (the network
    input of the official code); the sampled values are kept as they are. H and W must be even."""
    if cfa.ndim != 4 or cfa.shape[1] != 1:
        raise ValueError(f"a mosaic is a (B, 1, H, W) colour filter array, got {tuple(cfa.shape)}")
    _check_even(*cfa.shape[-2:])
    row = torch.tensor(_RB_AT_G_ROW, dtype=torch.float64)
    k = torch.stack([torch.tensor(_G_AT_RB, dtype=torch.float64), row, row.T,   # row.T: R (B) in the column
                     torch.tensor(_RB_AT_BR, dtype=torch.float64)]) / 8
    k = k[:, None].to(cfa.device, cfa.dtype if cfa.is_floating_point() else torch.float32)   # (4, 1, 5, 5)
    c = F.conv2d(F.pad(cfa.to(k.dtype), (2, 2, 2, 2), mode="reflect"), k)   # (B, 4, H, W) the four estimates
    g_rb, rb_grow, rb_gcol, rb_br = c.unbind(1)
    m = cfa[:, 0].to(k.dtype)
    r, g, b = m.clone(), m.clone(), m.clone()                           # (B, H, W) each
    g[:, 0::2, 0::2], g[:, 1::2, 1::2] = g_rb[:, 0::2, 0::2], g_rb[:, 1::2, 1::2]
    r[:, 0::2, 1::2], r[:, 1::2, 0::2], r[:, 1::2, 1::2] = (rb_grow[:, 0::2, 1::2], rb_gcol[:, 1::2, 0::2],
                                                           rb_br[:, 1::2, 1::2])
    b[:, 1::2, 0::2], b[:, 0::2, 1::2], b[:, 0::2, 0::2] = (rb_grow[:, 1::2, 0::2], rb_gcol[:, 0::2, 1::2],
                                                           rb_br[:, 0::2, 0::2])
    return torch.stack([r, g, b], 1)                                    # (B, 3, H, W)


class BayerMosaic(Degradation):
    """Demosaicking: the RGGB mosaic of an RGB image, interpolated by :func:`malvar_demosaic` (the model input, not
    clipped, as the official code). Baseline: that interpolation rounded to 8 bits; PSNR / SSIM on RGB, no border.

    A degraded input file (a benchmark's, ``visattn restore``'s) is the mosaic: a one-channel image, or an RGB image
    whose R, G, B values are read at the R, G, B sites. Sides must be even (evaluation images and ``restore
    --degrade`` inputs are cropped to even sides; odd mosaics are refused).
    """

    name = "bayer_rggb"
    baseline_name = "malvar"
    metric_space = "rgb"
    clipped = False
    input_suffix = "_mosaic"
    size_multiple = 2
    single_channel_input = True

    def __call__(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        return malvar_demosaic(bayer_mosaic(clean)).to(clean.dtype)

    def baseline(self, degraded: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return quantize(degraded)

    def input_from_file(self, image: Tensor) -> Tensor:
        if image.shape[1] == 1:
            return malvar_demosaic(image).to(image.dtype)
        return malvar_demosaic(bayer_mosaic(image)).to(image.dtype)

    def input_to_file(self, x: Tensor) -> Tensor:
        return bayer_mosaic(x)        # the interpolation keeps the sampled values: the mosaic comes back exactly

    def check_channels(self, channels: int) -> None:
        if channels != 3:
            raise ValueError(f"demosaicking restores RGB images: the model needs in_chans=3, got {channels}")

    def params(self) -> dict[str, Any]:
        return {}

    @property
    def output_suffix(self) -> str:
        return "_demosaicked"

    def describe(self) -> str:
        return "Bayer RGGB mosaic + Malvar interpolation"


class DemosaicTask(RestorationTask):
    """``--task demosaic``: undo :class:`BayerMosaic` (PSNR / SSIM on RGB against the Malvar interpolation)."""
