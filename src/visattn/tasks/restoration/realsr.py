"""Real-world super-resolution: a randomised second-order degradation (BSRGAN-style, as GRL's ``bsr`` data).

The official GRL makes its real-SR inputs with BSRGAN's ``degradation_sr2`` (``utils/utils_bsr/utils_sisr.py``):
blur, downsampling, noise and JPEG, twice, in a shuffled order. :class:`SecondOrderDegradation` follows it:

1. with probability 0.1 the clean image is first halved (bicubic) and the later steps need only x2 (the target
   stays the clean image: the final resize always reaches ``size / scale``);
2. eight operations in a random order, the first downsampling always before the second:
   blur 1 and blur 2 (isotropic Gaussian, kernel 7-23 px, sigma up to 2 + 0.2 scale; or anisotropic, axis sigmas
   up to 4 + scale, random angle), downsampling 1 (by a random factor in [1, 2 scale] with bilinear, bicubic or
   area interpolation; or a shifted Gaussian blur and decimation by ``scale``, which jumps straight to the final
   size), downsampling 2 (to the final size, a random interpolation), Gaussian noise (sigma 2-25 on the 0-255
   scale: per channel, grey, or correlated across channels, probabilities 0.6 / 0.2 / 0.2), JPEG (quality 20-95,
   probability 0.9), speckle noise (probability 0.5) and Poisson noise (probability 0.5);
3. a last JPEG (quality 20-95).

Left out, and why: the camera ISP noise (it needs BSRGAN's camera colour matrices and tone curves), the colour
jitter and USM sharpening of the target (they change the target, and a degradation only makes the input: the loss
compares with the clean image as it is), and the 400 x 400 pad / crop of the clean image (the crop is the task's).
JPEG goes through Pillow (libjpeg, 4:2:0 chroma subsampling as OpenCV's default) instead of OpenCV.
"""

from __future__ import annotations

import io
import math
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .blur import blur
from .degradations import SRDegradation
from .metrics import imresize, quantize
from .task import RestorationTask

__all__ = ["RealSRTask", "SecondOrderDegradation", "gaussian_kernel", "jpeg"]

_MODES = ("bilinear", "bicubic", "area")


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float) -> Tensor:
    """A (size, size) Gaussian kernel with axis standard deviations ``sigma_x``, ``sigma_y`` (pixels) rotated by
    ``theta`` radians, summing to one."""
    if size % 2 == 0 or size < 1:
        raise ValueError(f"a Gaussian kernel needs an odd size, got {size}")
    if not (sigma_x > 0 and sigma_y > 0):
        raise ValueError(f"Gaussian kernel sigmas must be > 0, got {sigma_x}, {sigma_y}")
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    cov = rot @ torch.diag(torch.tensor([sigma_x ** 2, sigma_y ** 2], dtype=torch.float64)) @ rot.T
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    grid = torch.stack(torch.meshgrid(r, r, indexing="xy"), -1)                # (size, size, 2) (x, y)
    q = torch.einsum("hwi,ij,hwj->hw", grid, torch.linalg.inv(cov), grid)
    k = torch.exp(-0.5 * q)
    return (k / k.sum()).float()


def jpeg(x: Tensor, quality: int) -> Tensor:
    """JPEG-compress (B, C, H, W) images in [0, 1] (C = 1 or 3) with Pillow at ``quality``; 8-bit float result."""
    from PIL import Image

    out = []
    for im in x:
        arr = (im.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (H, W, C)
        pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as dec:
            dec_arr = np.asarray(dec.convert(pil.mode), dtype=np.uint8).copy()
        t = torch.from_numpy(dec_arr).float() / 255
        out.append(t[None] if t.ndim == 2 else t.permute(2, 0, 1))               # (C, H, W)
    return torch.stack(out).to(x.device, x.dtype)


class SecondOrderDegradation(SRDegradation):
    """Real-world SR x``scale``: the randomised second-order pipeline above. Baseline, metrics and output names as
    bicubic SR (:class:`~.degradations.SRDegradation`), so the two tasks compare.

    Args:
        scale: the integer factor (2 or 4).
    """

    name = "second_order"
    input_suffix = "_lq"

    def __init__(self, scale: int = 4):
        if isinstance(scale, bool) or scale not in (2, 4):
            raise ValueError(f"real-world super-resolution needs scale 2 or 4, got {scale!r}")
        super().__init__(scale)
        self.given_inputs = (f"LR/X{scale}", f"LR/x{scale}", "LR", "LQ")

    # --- the steps -------------------------------------------------------------------------------------------------
    def _blur(self, x: Tensor, r: random.Random) -> Tensor:
        size = 2 * r.randint(2, 11) + 3
        if r.random() < 0.5:
            sigma = r.uniform(0.1, 2 + 0.2 * self.scale)
            k = gaussian_kernel(size, sigma, sigma, 0.0)
        else:
            hi = 4 + self.scale
            k = gaussian_kernel(size, r.uniform(0.1, hi), r.uniform(0.1, hi), r.uniform(0, math.pi))
        return blur(x, k)

    @staticmethod
    def _resize(x: Tensor, size: tuple[int, int], r: random.Random) -> Tensor:
        mode = r.choice(_MODES)
        size = (max(1, size[0]), max(1, size[1]))
        if mode == "area" and (size[0] > x.shape[-2] or size[1] > x.shape[-1]):
            mode = "bilinear"                                                   # area only shrinks
        if mode == "area":
            return F.interpolate(x, size=size, mode="area")
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)

    def _shifted_decimation(self, x: Tensor, final: tuple[int, int], r: random.Random) -> Tensor:
        # a Gaussian blur whose centre is shifted by (scale - 1) / 2, then every scale-th pixel (BSRGAN's
        # shifted_blur + decimation keeps the LR pixel grid centred on the HR one)
        sigma = r.uniform(0.1, 0.6 * self.scale)
        size = 2 * math.ceil(3 * sigma) + 1 + 2 * self.scale
        k = gaussian_kernel(size, sigma, sigma, 0.0)
        shift = (self.scale - 1) / 2
        k = _shift_kernel(k, shift)
        y = blur(x, k)[..., ::self.scale, ::self.scale]
        return self._resize(y, final, r) if tuple(y.shape[-2:]) != final else y

    def _gaussian_noise(self, x: Tensor, rng: torch.Generator, r: random.Random) -> Tensor:
        sigma = r.uniform(2, 25) / 255
        u = r.random()
        B, C, H, W = x.shape
        if u < 0.6 or C == 1:
            noise = torch.randn(x.shape, generator=rng)
        elif u < 0.8:
            noise = torch.randn(B, 1, H, W, generator=rng).expand(B, C, H, W)
        else:                                   # correlated across channels: a random covariance U D U^T
            q, _ = torch.linalg.qr(torch.randn(C, C, generator=rng, dtype=torch.float64))
            mix = (q * torch.rand(C, generator=rng, dtype=torch.float64).sqrt()).float()    # (C, C) = U D^1/2
            noise = torch.einsum("ij,bjhw->bihw", mix, torch.randn(x.shape, generator=rng))
        return (x + noise.to(x.device, x.dtype) * sigma).clamp(0, 1)

    @staticmethod
    def _speckle(x: Tensor, rng: torch.Generator, r: random.Random) -> Tensor:
        sigma = r.uniform(2, 25) / 255
        return (x + x * torch.randn(x.shape, generator=rng).to(x.device, x.dtype) * sigma).clamp(0, 1)

    @staticmethod
    def _poisson(x: Tensor, rng: torch.Generator, r: random.Random) -> Tensor:
        vals = 10 ** r.uniform(2, 4)                   # photons per unit intensity
        x = quantize(x)
        if r.random() < 0.5 and x.shape[1] == 3:       # on luma only, the difference added to every channel
            gray = (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
            noisy = torch.poisson((gray * vals).double().cpu(), generator=rng).to(x.device, x.dtype) / vals
            return (x + noisy - gray).clamp(0, 1)
        return (torch.poisson((x * vals).double().cpu(), generator=rng).to(x.device, x.dtype) / vals).clamp(0, 1)

    # --- the pipeline ----------------------------------------------------------------------------------------------
    def __call__(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        return torch.cat([self._one(c[None], rng) for c in clean])

    def _one(self, x: Tensor, rng: torch.Generator) -> Tensor:
        r = random.Random(int(torch.randint(0, 2 ** 62, (), generator=rng)))   # scalar choices; tensors use rng
        H, W = x.shape[-2:]
        final = (math.ceil(H / self.scale), math.ceil(W / self.scale))
        sf = self.scale
        if sf == 4 and r.random() < 0.1:                # pre-halving: the rest is a x2 problem
            x = imresize(x, size=(math.ceil(H / 2), math.ceil(W / 2))).clamp(0, 1)
            sf = 2
        ops = list(range(8))
        r.shuffle(ops)
        if ops.index(2) > ops.index(3):                 # downsampling 1 before downsampling 2
            i, j = ops.index(2), ops.index(3)
            ops[i], ops[j] = ops[j], ops[i]
        for op in ops:
            if op in (0, 1):
                x = self._blur(x, r).clamp(0, 1)
            elif op == 2:
                if r.random() < 0.75:
                    f = r.uniform(1, 2 * sf)
                    x = self._resize(x, (round(x.shape[-2] / f), round(x.shape[-1] / f)), r).clamp(0, 1)
                else:
                    x = self._shifted_decimation(x, final, r).clamp(0, 1)
            elif op == 3:
                if tuple(x.shape[-2:]) != final:
                    x = self._resize(x, final, r).clamp(0, 1)
            elif op == 4:
                x = self._gaussian_noise(x, rng, r)
            elif op == 5:
                if r.random() < 0.9:
                    x = jpeg(x, r.randint(20, 95))
            elif op == 6:
                if r.random() < 0.5:
                    x = self._speckle(x, rng, r)
            elif r.random() < 0.5:                      # op 7
                x = self._poisson(x, rng, r)
        return jpeg(x, r.randint(20, 95))

    def describe(self) -> str:
        return f"second-order real-world degradation x{self.scale} (blur, resize, noise, JPEG)"


def _shift_kernel(k: Tensor, shift: float) -> Tensor:
    # move the kernel's centre by ``shift`` pixels right and down (bilinear resampling of the kernel)
    size = k.shape[-1]
    theta = torch.tensor([[[1.0, 0.0, -2 * shift / size], [0.0, 1.0, -2 * shift / size]]])
    grid = F.affine_grid(theta, (1, 1, size, size), align_corners=False)
    out = F.grid_sample(k[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
    return out / out.sum()


class RealSRTask(RestorationTask):
    """``--task real-sr``: undo :class:`SecondOrderDegradation` (L1 training, as the official PSNR stage; PSNR /
    SSIM on Y against bicubic)."""
