"""Blur degradations: random camera-shake (motion) kernels and defocus disks, single image or dual-pixel.

Motion kernels follow Boracchi and Foi's random camera trajectories (*Modeling the performance of image restoration
from motion blur*, IEEE TIP 2012; the generator DeblurGAN trains with): a particle moves with inertia, each step's
velocity is perturbed by Gaussian shake and pulled back towards the origin, and with a small probability an abrupt
shake turns it around; the trajectory, rescaled to a random length, is sampled at uniform time steps and splatted
bilinearly into the kernel (the sensor integrates the scene along the path while the shutter is open). Defocus
kernels are disks of a random radius, anti-aliased by 8 x 8 supersampling of each kernel pixel. Dual-pixel sensors
see the two halves of the aperture: the left view is blurred by the left half of the disk, the right view by the
right half, and their average is the full-disk (combined) image.

The official GRL trains both deblurring tasks on real pairs (GoPro, RealBlur, DPDD, read by
``restoration_paired_dataset.py``) and synthesises no blur; these degradations let the tasks train on any clean
photos, and ``tasks/restoration/data.py`` reads the real pairs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .degradations import Degradation
from .metrics import quantize

__all__ = ["DefocusBlur", "MotionBlur", "blur", "disk_kernel", "half_disk_kernels", "motion_kernel"]


def _uniform(rng: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=rng, dtype=torch.float64))


def motion_kernel(size: int, rng: torch.Generator, *, length: float | None = None, steps: int = 256,
                  anxiety: float | None = None) -> Tensor:
    """A random camera-shake kernel (Boracchi-Foi trajectory), (size, size) float32, summing to one.

    Args:
        size: odd kernel side.
        rng: the random numbers.
        length: path length in pixels (default: uniform in [size / 4, size - 3]).
        steps: trajectory samples.
        anxiety: probability scale of abrupt shakes and strength of the Gaussian shake (default uniform in
            [0, 0.005], as DeblurGAN's generator).
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"a motion kernel needs an odd size of at least 3, got {size}")
    length = _uniform(rng, size / 4, size - 3) if length is None else float(length)
    if not 0 <= length <= size - 3:
        raise ValueError(f"the motion length must be in [0, {size - 3}] for a {size}-pixel kernel, got {length}")
    anxiety = _uniform(rng, 0.0, 0.005) if anxiety is None else anxiety
    u = torch.rand(steps, 3, generator=rng, dtype=torch.float64).tolist()      # abrupt-shake draws, angle jitter
    n = torch.randn(steps, 2, generator=rng, dtype=torch.float64).tolist()     # Gaussian shake
    centripetal, shake, big_shakes = _uniform(rng, 0, 0.7), _uniform(rng, 0, 10), _uniform(rng, 0, 0.2)
    step = 1.0 / (steps - 1)
    angle = _uniform(rng, 0, 2 * math.pi)
    v = complex(math.cos(angle), math.sin(angle)) * step
    pos = [0j]
    for t in range(1, steps):
        turn = 0j
        if u[t][0] < big_shakes * anxiety:                                      # an abrupt shake turns it around
            turn = 2 * v * complex(math.cos(math.pi + u[t][1] - 0.5), math.sin(math.pi + u[t][1] - 0.5))
        dv = turn + anxiety * (shake * complex(n[t][0], n[t][1]) - centripetal * pos[-1]) * step
        v += dv
        v = v / (abs(v) or 1.0) * step
        pos.append(pos[-1] + v)
    xy = torch.tensor([[p.real, p.imag] for p in pos], dtype=torch.float64)     # (steps, 2)
    extent = float(torch.linalg.vector_norm(xy[1:] - xy[:-1], dim=1).sum())     # ~1: unit-speed path
    xy = (xy - xy.mean(0)) * (length / max(extent, 1e-12))
    # keep the path inside the kernel (a tight spiral can exceed the half-size after centring)
    half = (size - 1) / 2 - 1
    reach = float(xy.abs().max())
    if reach > half:
        xy = xy * (half / reach)
    return _splat(xy + (size - 1) / 2, size)


def _splat(xy: Tensor, size: int) -> Tensor:
    """Bilinear splat of (N, 2) (x, y) points inside [0, size - 1]^2 into a normalised (size, size) kernel."""
    x0, y0 = xy[:, 0].floor(), xy[:, 1].floor()
    fx, fy = xy[:, 0] - x0, xy[:, 1] - y0
    k = torch.zeros(size * size, dtype=torch.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = (x0 + dx).long().clamp(0, size - 1)
        yi = (y0 + dy).long().clamp(0, size - 1)
        k.index_add_(0, yi * size + xi, w)
    k = k.view(size, size)                                                      # (size, size), rows are y
    return (k / k.sum()).float()


def _disk_coverage(radius: float, size: int, sub: int = 8) -> Tensor:
    # (size, size) share of each pixel inside the centred circle, by sub x sub supersampling
    c = (size - 1) / 2
    offsets = (torch.arange(sub, dtype=torch.float64) + 0.5) / sub - 0.5
    coords = (torch.arange(size, dtype=torch.float64)[:, None] + offsets[None, :]).reshape(-1) - c   # (size * sub,)
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2) <= radius ** 2                 # (size*sub, size*sub)
    return inside.double().view(size, sub, size, sub).mean((1, 3))                        # (size, size)


def disk_kernel(radius: float, size: int | None = None) -> Tensor:
    """A defocus (pillbox) kernel of ``radius`` pixels, anti-aliased, (size, size) float32 summing to one.

    Args:
        radius: disk radius in pixels (> 0; below 0.5 the disk covers the centre pixel only).
        size: odd kernel side (default 2 ceil(radius) + 1).
    """
    if not radius > 0:
        raise ValueError(f"a disk kernel needs a radius > 0, got {radius}")
    size = 2 * math.ceil(radius) + 1 if size is None else size
    if size % 2 == 0 or size < 2 * radius:
        raise ValueError(f"a disk of radius {radius} needs an odd kernel side of at least {2 * radius}, got {size}")
    k = _disk_coverage(radius, size)
    return (k / k.sum()).float()


def half_disk_kernels(radius: float, size: int | None = None) -> tuple[Tensor, Tensor]:
    """The left and right half-aperture kernels of a dual-pixel sensor: a disk split at its vertical centre line
    (the centre column shared equally), each normalised; their average is :func:`disk_kernel`."""
    size = 2 * math.ceil(radius) + 1 if size is None else size
    k = disk_kernel(radius, size).double()
    col = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    left_mask = (col < 0).double() + 0.5 * (col == 0).double()                 # (size,) per column
    left, right = k * left_mask[None, :], k * (1 - left_mask)[None, :]
    return (left / left.sum()).float(), (right / right.sum()).float()


def blur(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve (B, C, H, W) images with one (k, k) kernel, replicate-padded to keep the size (a true convolution:
    the kernel is flipped)."""
    k = kernel.shape[-1]
    p = k // 2
    weight = kernel.flip(-2, -1).to(x.dtype).to(x.device).expand(x.shape[1], 1, k, k)   # (C, 1, k, k) depthwise
    return F.conv2d(F.pad(x, (p, p, p, p), mode="replicate"), weight, groups=x.shape[1])


class MotionBlur(Degradation):
    """Motion deblurring: a random camera-shake kernel per image (:func:`motion_kernel`), 8-bit rounded. Baseline:
    the blurred input; metrics on RGB, no border.

    Args:
        kernel_size: odd kernel side (paths up to ``kernel_size - 3`` pixels long).
    """

    name = "motion_blur"
    baseline_name = "blurred"
    metric_space = "rgb"
    input_suffix = "_blurred"

    def __init__(self, kernel_size: int = 21):
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 5 \
                or kernel_size % 2 == 0:
            raise ValueError(f"the motion kernel size must be an odd integer of at least 5, got {kernel_size!r}")
        self.kernel_size = kernel_size

    def kernel(self, rng: torch.Generator) -> Tensor:
        return motion_kernel(self.kernel_size, rng)

    def __call__(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        return torch.cat([quantize(blur(c[None], self.kernel(rng))) for c in clean])

    def baseline(self, degraded: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return quantize(degraded)

    def params(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size}

    @property
    def output_suffix(self) -> str:
        return "_deblurred"

    def describe(self) -> str:
        return f"random motion blur (kernels up to {self.kernel_size} px)"


class DefocusBlur(Degradation):
    """Defocus deblurring: a disk of random radius in [``min_radius``, ``max_radius``] per image, 8-bit rounded.
    With ``dual_pixel`` the input is the left and right half-aperture views stacked as 6 channels (the model then
    maps 6 channels to 3). Baseline: the blurred (combined) image; metrics on RGB, no border, plus MAE.

    Args:
        max_radius: largest disk radius in pixels.
        min_radius: smallest disk radius.
        dual_pixel: 6-channel left / right views instead of the 3-channel combined image.
    """

    name = "defocus_blur"
    baseline_name = "blurred"
    metric_space = "rgb"
    input_suffix = "_blurred"

    def __init__(self, max_radius: float = 6.0, min_radius: float = 1.0, dual_pixel: bool = False):
        for what, v in (("max_radius", max_radius), ("min_radius", min_radius)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 64:
                raise ValueError(f"the defocus {what} must be a number in (0, 64] pixels, got {v!r}")
        if min_radius > max_radius:
            raise ValueError(f"the defocus min_radius {min_radius} exceeds max_radius {max_radius}")
        self.max_radius, self.min_radius, self.dual_pixel = float(max_radius), float(min_radius), bool(dual_pixel)
        self.size = 2 * math.ceil(self.max_radius) + 1

    @property
    def views(self) -> int:
        """Images stacked in the model input: the left and right views (dual-pixel), or the one blurred image."""
        return 2 if self.dual_pixel else 1

    def radius(self, rng: torch.Generator) -> float:
        return _uniform(rng, self.min_radius, self.max_radius)

    def __call__(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        out = []
        for c in clean:
            r = self.radius(rng)
            if self.dual_pixel:
                left, right = half_disk_kernels(r, self.size)
                out.append(torch.cat([quantize(blur(c[None], left)), quantize(blur(c[None], right))], 1))
            else:
                out.append(quantize(blur(c[None], disk_kernel(r, self.size))))
        return torch.cat(out)                                                   # (B, 3 or 6, H, W)

    def baseline(self, degraded: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """The blurred image itself; dual-pixel: the average of the two views (the combined image)."""
        if self.dual_pixel:
            left, right = degraded.chunk(2, dim=1)                              # 2 x (B, C, H, W)
            return quantize((left + right) / 2)
        return quantize(degraded)

    def model_overrides(self) -> dict[str, Any]:
        overrides: dict[str, Any] = {"upscale": 1}
        if self.dual_pixel:
            overrides.update(in_chans=6, out_chans=3)
        return overrides

    def params(self) -> dict[str, Any]:
        return {"max_radius": self.max_radius, "min_radius": self.min_radius, "dual_pixel": self.dual_pixel}

    @property
    def output_suffix(self) -> str:
        return "_deblurred"

    def describe(self) -> str:
        views = "dual-pixel views" if self.dual_pixel else "single image"
        return f"defocus disks of radius {self.min_radius:g}-{self.max_radius:g} px ({views})"
