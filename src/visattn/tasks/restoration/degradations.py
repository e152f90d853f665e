"""Degradations: what turns a clean image into a restoration model's input, and the classical answer to beat.

A restoration task (``tasks/restoration/task.py``) is one :class:`Degradation` plus data: training degrades random
clean crops on the fly, evaluation degrades whole images with a seed per image (or reads the degraded inputs a
benchmark ships), and reports the model next to the degradation's ``baseline`` in the degradation's colour space
with its border crop. A new restoration task is one subclass (here, or in its own module as ``jpeg.py`` and
``mosaic.py``) and one registration in ``__init__.py``:

    class JpegDegradation(Degradation):
        name = "jpeg"; baseline_name = "jpeg"; metric_space = "rgb"
        def __init__(self, quality: int = 10): ...              # validate, then keep the parameters
        def __call__(self, clean, rng): ...                     # (B, C, H, W) in [0, 1] -> (B, C, H, W)
        def baseline(self, degraded, size=None): ...            # what the model must beat, at the clean size
        def params(self): return {"quality": self.quality}
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from .metrics import imresize, psnr, quantize, ssim

__all__ = ["BicubicDownscale", "Degradation", "GaussianNoise", "SRDegradation"]

#: evaluation image ``i`` is degraded with the generator seeded ``EVAL_SEED + i`` (identical on every run)
EVAL_SEED = 1000


class Degradation(ABC):
    """A clean (B, C, H, W) image in [0, 1] -> the model input, with the classical baseline and the metric protocol.

    Class attributes a degradation sets:
        name: a short identifier stored in ``model.json``.
        baseline_name: the name of the baseline in metric keys (``val_<baseline_name>_psnr``).
        metric_space: "y" (BT.601 luma, the SR benchmarks' protocol) or "rgb" (all channels).
        clipped: whether the output stays in [0, 1] (additive noise is fed unclipped, as the papers do).
        input_suffix: file-name suffix of a degraded input saved by ``visattn restore --degrade``.
        size_multiple: clean sides the degradation accepts are multiples of it (evaluation images and ``restore
            --degrade`` inputs are cropped to it).
        single_channel_input: degraded input files hold one channel whatever the model's (a Bayer mosaic), so a
            one-channel file is not a grey image to restore as grey.
        views: images of the scene stacked on channels in the model input (2: a dual-pixel sensor's left and right
            views, each its own file); the clean image and the output have the channels of one.

    Instance attributes:
        scale: output / input size ratio of the model that undoes it (``upscale`` of the model config).
        border: pixels cropped from each side of the clean-size image before PSNR / SSIM.
        given_inputs: benchmark sub-folders (relative to its root, first found wins) that hold this degradation's
            inputs, matched to the clean images by file stem; empty: inputs are always generated.
    """

    name: ClassVar[str] = ""
    baseline_name: ClassVar[str] = ""
    metric_space: ClassVar[str] = "rgb"
    clipped: ClassVar[bool] = True
    input_suffix: ClassVar[str] = "_degraded"
    size_multiple: ClassVar[int] = 1
    single_channel_input: ClassVar[bool] = False
    views: int = 1
    scale: int = 1
    border: int = 0
    given_inputs: tuple[str, ...] = ()

    @abstractmethod
    def __call__(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        """(B, C, H, W) clean images in [0, 1] -> (B, C, H / scale, W / scale) model inputs; random numbers come
        from ``rng`` only (a CPU generator)."""

    @abstractmethod
    def baseline(self, degraded: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """The classical restoration of ``degraded`` at the clean ``size`` (default: its size x ``scale``), as an
        8-bit image in [0, 1]."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The parameters that rebuild this degradation (JSON values)."""

    def metrics(self) -> dict[str, Callable[..., Tensor]]:
        """The evaluation's metrics by name (keys ``val_<name>``), each ``f(restored, clean, *, border, y_channel)``
        -> per-image values; PSNR and SSIM unless a degradation adds its own (JPEG: PSNR-B)."""
        return {"psnr": psnr, "ssim": ssim}

    def input_from_file(self, image: Tensor) -> Tensor:
        """A degraded input as stored in a file (a benchmark's given input, ``visattn restore``'s input), (B, C, h, w)
        in [0, 1] with the model's channels -> the model input. Default: the image itself."""
        return image

    def input_to_file(self, x: Tensor) -> Tensor:
        """A model input -> what ``visattn restore --degrade`` saves (the inverse of :meth:`input_from_file`)."""
        return x

    def check_channels(self, channels: int) -> None:
        """A clear error when a model of ``channels`` input channels cannot undo this degradation."""
        if channels not in (1, 3):
            raise ValueError(f"restoration models take 1 (grey) or 3 (RGB) channels, got in_chans={channels}")

    @property
    def output_suffix(self) -> str:
        """File-name suffix of a restored image (``visattn restore``)."""
        return "_restored"

    def describe(self) -> str:
        """A few words for messages, e.g. 'bicubic downscaling x4'."""
        return f"{self.name} {self.params()}"

    def eval_input(self, clean: Tensor, index: int) -> Tensor:
        """The deterministic model input of evaluation image ``index`` (its own seed, whatever the order)."""
        return self(clean, torch.Generator().manual_seed(EVAL_SEED + index))

    def model_overrides(self) -> dict[str, Any]:
        """Model config fields the degradation decides."""
        return {"upscale": self.scale}

    def meta(self) -> dict[str, Any]:
        """What ``model.json`` and ``eval.json`` record of the degradation."""
        return {"name": self.name, "scale": self.scale, **self.params()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"


class SRDegradation(Degradation):
    """A super-resolution degradation: the model input is ``1 / scale`` of the clean image. Baseline: MATLAB bicubic
    upscaling; metrics on Y with ``scale`` border pixels cropped (the SR papers' protocol); outputs named
    ``<stem>_x<scale>``. Subclasses validate ``scale`` and make the input.

    Args:
        scale: the integer factor.
    """

    baseline_name = "bicubic"
    metric_space = "y"

    def __init__(self, scale: int):
        self.scale = self.border = scale

    def baseline(self, degraded: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        size = size or (degraded.shape[-2] * self.scale, degraded.shape[-1] * self.scale)
        return quantize(imresize(degraded, size=size))

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale}

    @property
    def output_suffix(self) -> str:
        return f"_x{self.scale}"


class BicubicDownscale(SRDegradation):
    """Super-resolution: MATLAB's antialiased bicubic downscaling by ``scale``, rounded to 8 bits (how Set5, Set14,
    Urban100... make their LR images); the rest as :class:`SRDegradation`.

    Args:
        scale: the integer factor, at least 2.
    """

    name = "bicubic"
    input_suffix = "_lr"

    def __init__(self, scale: int = 4):
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 2:
            raise ValueError(f"super-resolution needs an integer scale of at least 2, got {scale!r}")
        super().__init__(scale)
        s = scale
        self.given_inputs = (f"LR_bicubic/X{s}", f"LR_bicubic/x{s}", f"LR/X{s}", f"LR/x{s}", f"LRbicx{s}", "LR")

    def __call__(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        return quantize(imresize(clean, 1 / self.scale))

    def describe(self) -> str:
        return f"bicubic downscaling x{self.scale}"


class GaussianNoise(Degradation):
    """Denoising: additive white Gaussian noise of standard deviation ``sigma / 255``, unclipped (SwinIR's and GRL's
    test protocol). Baseline: the noisy image itself (rounded to 8 bits); metrics on all channels, no border.

    Args:
        sigma: the noise level on the 0-255 scale, in (0, 255].
    """

    name = "gaussian_noise"
    baseline_name = "noisy"
    metric_space = "rgb"
    clipped = False
    input_suffix = "_noisy"

    def __init__(self, sigma: float = 25.0):
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) \
                or not 0 < sigma <= 255:
            raise ValueError(f"the noise level sigma must be a number in (0, 255] (0-255 scale), got {sigma!r}")
        self.sigma = float(sigma)

    def __call__(self, clean: Tensor, rng: torch.Generator) -> Tensor:
        noise = torch.randn(clean.shape, generator=rng, dtype=torch.float32).to(clean.device, clean.dtype)
        return clean + noise * (self.sigma / 255)

    def baseline(self, degraded: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        return quantize(degraded)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    @property
    def output_suffix(self) -> str:
        return "_denoised"

    def describe(self) -> str:
        return f"Gaussian noise of sigma {self.sigma:g}"
