"""Resampling and image-quality metrics of the restoration benchmarks: MATLAB-compatible bicubic resize
(:func:`imresize`), 8-bit rounding, BT.601 luma, PSNR and SSIM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["imresize", "psnr", "quantize", "rgb_to_y", "ssim"]

def _cubic(x: Tensor) -> Tensor:
    # Keys' cubic convolution kernel with a = -0.5 (MATLAB imresize, PIL, OpenCV INTER_CUBIC)
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))).to(x.dtype)


def _resize_matrix(in_len: int, out_len: int, scale: float) -> Tensor:
    """(out_len, in_len) weights of MATLAB ``imresize(..., 'bicubic')`` along one axis (antialiased when shrinking).

    Output pixel i (1-based) sits at u = i / scale + (1 - 1 / scale) / 2 in input pixels; when shrinking, the
    kernel is stretched by 1 / scale (antialiasing); taps past the border are mirrored (symmetric padding).
    """
    shrink = scale < 1
    width = 4.0 / scale if shrink else 4.0
    i = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = i / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None]    # (out, taps), 1-based
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if shrink else _cubic(dist)
    w = w / w.sum(1, keepdim=True)
    # symmetric mirroring of 1-based indices: ..., 2, 1, 1, 2, ..., n, n, n-1, ...
    j = (idx - 1).long() % (2 * in_len)
    j = torch.where(j >= in_len, 2 * in_len - 1 - j, j)
    mat = torch.zeros(out_len, in_len, dtype=torch.float64)
    mat.scatter_add_(1, j, w)
    return mat


def imresize(x: Tensor, scale: float | None = None, *, size: tuple[int, int] | None = None) -> Tensor:
    """MATLAB-compatible bicubic resize of (..., H, W) float images, antialiased when downscaling.

    Args:
        x: images, any leading dimensions.
        scale: factor (0.25 shrinks 4x); the output size is ceil(scale * size), as in MATLAB.
        size: output (height, width) instead of ``scale`` (both axes then use their own factor).
    """
    H, W = x.shape[-2:]
    if size is None:
        if scale is None:
            raise ValueError("imresize needs scale or size")
        size = (math.ceil(H * scale), math.ceil(W * scale))
        sh = sw = scale
    else:
        sh, sw = size[0] / H, size[1] / W
    mh = _resize_matrix(H, size[0], sh).to(x.device, torch.float32 if x.dtype != torch.float64 else x.dtype)
    mw = _resize_matrix(W, size[1], sw).to(mh.device, mh.dtype)
    out = torch.einsum("oh,...hw,pw->...op", mh, x.to(mh.dtype), mw)
    return out.to(x.dtype)


def quantize(x: Tensor) -> Tensor:
    """Round [0, 1] images to 8-bit levels (what saving a PNG does), staying in float."""
    return (x.clamp(0, 1) * 255).round() / 255


def rgb_to_y(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma in [16, 235] (MATLAB ``rgb2ycbcr``); 1 channel:
    x * 255."""
    if x.shape[1] == 1:
        return x * 255
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) + 16


def _crop(x: Tensor, border: int) -> Tensor:
    return x[..., border:x.shape[-2] - border, border:x.shape[-1] - border] if border else x


def psnr(a: Tensor, b: Tensor, *, border: int = 0, y_channel: bool = True) -> Tensor:
    """PSNR (dB, 8-bit peak 255) per image of (B, C, H, W) images in [0, 1], on Y by default, borders cropped."""
    a, b = a.double(), b.double()
    a, b = (rgb_to_y(a), rgb_to_y(b)) if y_channel else (a * 255, b * 255)
    mse = (_crop(a, border) - _crop(b, border)).square().mean((1, 2, 3))
    return 10 * torch.log10(255.0 ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]                                      # (size, size)


def ssim(a: Tensor, b: Tensor, *, border: int = 0, y_channel: bool = True) -> Tensor:
    """SSIM per image (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 8-bit range), on Y
    by default, over the window positions that fit inside the cropped image ("valid"), averaged over channels."""
    a, b = a.double(), b.double()
    a, b = (rgb_to_y(a), rgb_to_y(b)) if y_channel else (a * 255, b * 255)
    a, b = _crop(a, border), _crop(b, border)
    C = a.shape[1]
    win = _gaussian_window().to(a.device).expand(C, 1, 11, 11)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels after cropping, got {tuple(a.shape[-2:])}")

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, win, groups=C)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = filt(a), filt(b)
    var_a, var_b = filt(a * a) - mu_a ** 2, filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean((1, 2, 3))

