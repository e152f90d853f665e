"""JPEG artefact removal (``--task jpeg``): the JPEG degradation and PSNR-B, the blocking-aware PSNR of the JPEG
artefact literature.

The official GRL code (``data/datasets/restoration_jpeg.py``) makes its inputs with OpenCV: ``cv2.imencode(".jpg",
image, [IMWRITE_JPEG_QUALITY, q])`` then ``cv2.imdecode`` (colour images go through BGR and back). Here the default
encoder is Pillow's (libjpeg-turbo, 4:2:0 chroma subsampling like OpenCV's default); ``encoder="opencv"`` uses
OpenCV when ``opencv-python-headless`` is installed. Both quantise with the standard IJG tables scaled by the
quality; docs/grl.md gives the measured difference between the two.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .degradations import Degradation
from .metrics import psnr, quantize, rgb_to_y, ssim
from .task import RestorationTask

__all__ = ["ENCODERS", "JpegArtifactTask", "JpegCompression", "blocking_effect_factor", "jpeg_roundtrip", "psnr_b"]

#: JPEG encoders :func:`jpeg_roundtrip` knows
ENCODERS = ("pillow", "opencv")


def _encode_pillow(image: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image, mode="L" if image.shape[-1] == 1 else "RGB")
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=quality, subsampling=2)    # 2: 4:2:0, OpenCV's default sampling
    buf.seek(0)
    with Image.open(buf) as decoded:
        out = np.asarray(decoded.convert(pil.mode))
    return out.reshape(image.shape)                                 # (H, W, C)


def _encode_opencv(image: np.ndarray, quality: int) -> np.ndarray:
    try:
        import cv2
    except ImportError as err:
        raise ValueError("the opencv JPEG encoder needs opencv-python-headless (pip install "
                         "opencv-python-headless), or use encoder 'pillow'") from err
    # as restoration_jpeg.py: colour goes RGB -> BGR -> JPEG -> BGR -> RGB, grey is encoded as one channel
    if image.shape[-1] == 3:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    else:
        ok, buf = cv2.imencode(".jpg", image[..., 0], [int(cv2.IMWRITE_JPEG_QUALITY), quality])
        out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    if not ok:
        raise ValueError("OpenCV failed to encode the image as JPEG")
    return out.reshape(image.shape)                                 # (H, W, C)


def jpeg_roundtrip(x: Tensor, quality: int, encoder: str = "pillow") -> Tensor:
    """Encode (B, C, H, W) images in [0, 1] (C = 1 grey or 3 RGB) as JPEG at ``quality`` and decode them: the
    decoded 8-bit images in [0, 1], same shape, dtype and device."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"JPEG needs (B, C, H, W) images with 1 (grey) or 3 (RGB) channels, got {tuple(x.shape)}")
    encode = {"pillow": _encode_pillow, "opencv": _encode_opencv}[encoder]
    u8 = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([encode(np.ascontiguousarray(im), quality) for im in u8])   # (B, H, W, C)
    return (torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255).to(x.device, x.dtype)


def blocking_effect_factor(x: Tensor, block: int = 8) -> Tensor:
    """Blocking effect factor (Yim & Bovik 2011, eq. 12-14) of (B, C, H, W) images, per image and channel: (B, C).

    BEF = eta * max(D_B - D_Bc, 0), where D_B is the mean squared difference of neighbouring pixels across the
    8 x 8 block boundaries (columns / rows 7|8, 15|16, ...), D_Bc the same across all other neighbouring pairs, and
    eta = log2(8) / log2(min(H, W)). The boundary-pair counts follow the reference implementations (BasicSR,
    FBCNN, GRL ``utils/metrics/psnrb.py``): H * (W // 8 - 1) horizontal and W * (H // 8 - 1) vertical boundary pairs,
    which is the number of boundaries summed when H and W are multiples of 8 (one fewer per row / column otherwise).
    """
    B, C, H, W = x.shape
    x = x.double()
    col = torch.arange(block - 1, W - 1, block, device=x.device)      # left pixel of each boundary pair
    row = torch.arange(block - 1, H - 1, block, device=x.device)
    dh = (x[..., :, 1:] - x[..., :, :-1]).square()                      # (B, C, H, W-1) horizontal neighbours
    dv = (x[..., 1:, :] - x[..., :-1, :]).square()                      # (B, C, H-1, W) vertical neighbours
    d_boundary = dh[..., col].sum((-2, -1)) + dv[..., row, :].sum((-2, -1))
    d_other = dh.sum((-2, -1)) + dv.sum((-2, -1)) - d_boundary
    n_boundary = H * (W // block - 1) + W * (H // block - 1)
    n_other = H * (W - 1) + W * (H - 1) - n_boundary
    mean_boundary = d_boundary / max(n_boundary, 1)
    mean_other = d_other / max(n_other, 1)
    eta = math.log2(block) / math.log2(min(H, W))
    return eta * (mean_boundary - mean_other).clamp(min=0)


def psnr_b(a: Tensor, b: Tensor, *, border: int = 0, y_channel: bool = False) -> Tensor:
    """PSNR-B (dB, 8-bit peak 255) per image of the restored ``a`` against the clean ``b``, (B, C, H, W) in [0, 1].

    Per channel, 10 log10(255^2 / (MSE + BEF(a))) with :func:`blocking_effect_factor` of the restored image on the
    0-255 scale; the channels' values are averaged (GRL's and BasicSR's ``psnrb``). On all channels by default;
    ``y_channel`` uses BT.601 luma. ``border`` pixels are cropped from each side first.
    """
    a, b = a.double(), b.double()
    a, b = (rgb_to_y(a), rgb_to_y(b)) if y_channel else (a * 255, b * 255)
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    if min(a.shape[-2:]) < 2:
        raise ValueError(f"PSNR-B needs images of at least 2x2 pixels, got {tuple(a.shape[-2:])}")
    mse = (a - b).square().mean((-2, -1))                               # (B, C)
    return (10 * torch.log10(255.0 ** 2 / (mse + blocking_effect_factor(a)))).mean(1)


class JpegCompression(Degradation):
    """JPEG artefact removal: encode and decode at ``quality``. Baseline: the decoded JPEG itself; metrics PSNR, SSIM
    and PSNR-B on all channels (grey models: the one channel), no border.

    Args:
        quality: the JPEG quality factor, an integer in 1-100 (the papers use 10, 20, 30, 40).
        encoder: "pillow" (libjpeg-turbo through Pillow) or "opencv" (the official code's; needs OpenCV).
    """

    name = "jpeg"
    baseline_name = "jpeg"
    metric_space = "rgb"
    input_suffix = "_jpeg"

    def __init__(self, quality: int = 10, encoder: str = "pillow"):
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise ValueError(f"the JPEG quality must be an integer in 1-100, got {quality!r}")
        if encoder not in ENCODERS:
            raise ValueError(f"the JPEG encoder must be one of {', '.join(ENCODERS)}, got {encoder!r}")
        self.quality, self.encoder = quality, encoder

    def __call__(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        return jpeg_roundtrip(clean, self.quality, self.encoder)

    def baseline(self, degraded: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return quantize(degraded)

    def metrics(self) -> dict[str, Callable[..., Tensor]]:
        return {"psnr": psnr, "ssim": ssim, "psnrb": psnr_b}

    def params(self) -> dict[str, Any]:
        return {"quality": self.quality, "encoder": self.encoder}

    @property
    def output_suffix(self) -> str:
        return "_dejpeg"

    def describe(self) -> str:
        return f"JPEG quality {self.quality} ({self.encoder})"


class JpegArtifactTask(RestorationTask):
    """``--task jpeg``: undo :class:`JpegCompression` at ``--quality`` (PSNR / SSIM / PSNR-B on all channels)."""
