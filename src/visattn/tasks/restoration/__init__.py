"""Image restoration as degradations: super-resolution (``--task sr``), denoising (``--task denoise``), JPEG
artefact removal (``--task jpeg``) and demosaicking (``--task demosaic``).

Every restoration task is one :class:`~visattn.tasks.restoration.task.RestorationTask` holding one
:class:`~visattn.tasks.restoration.degradations.Degradation` - what turns a clean image into the model input, the
classical baseline to beat, the metric colour space and border crop, the model's upscale factor. Training, evaluation,
``visattn eval`` and ``visattn restore`` ask the degradation and never the task's name. A new task (JPEG artefacts,
mosaic, blur) is therefore one small ``Degradation`` subclass in ``degradations.py`` and, here, an options dataclass
whose ``degradation()`` builds it plus one ``register_task`` call (with a two-line ``RestorationTask`` subclass in
``task.py``: the registry records the name and options on the class). JPEG (``jpeg.py``) and demosaicking
(``mosaic.py``) keep their degradation, task class and metric in their own module.

Files: ``degradations.py`` (the degradations), ``task.py`` (the task), ``data.py`` (photos, folders, paired folders,
benchmark folders, crops), ``metrics.py`` (MATLAB bicubic, PSNR, SSIM), ``tiling.py`` (tiled inference), ``blur.py``
and ``deblur.py`` (blur degradations, deblurring tasks), ``realsr.py`` (real-world SR); image files are read by
``tasks/image_io.py``. This module imports the standard library only (the command line builds its flags from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import register_task

if TYPE_CHECKING:
    from .degradations import Degradation

__all__ = ["DefocusDeblurOptions", "DemosaicOptions", "DenoiseOptions", "JpegOptions", "MotionDeblurOptions",
           "RealSROptions", "SROptions"]

_VAL_DATA_HELP = ("restoration: evaluation benchmark folder (Set5 layout: HR/ and optionally the given inputs, "
                  "e.g. LR_bicubic/X4/)")


@dataclass(frozen=True)
class SROptions:
    """Super-resolution settings."""

    scale: int = field(default=4, metadata={"help": "super-resolution factor (default 4)"})
    val_data: str | None = field(default=None, metadata={"help": _VAL_DATA_HELP})

    def degradation(self) -> Degradation:
        """MATLAB bicubic downscaling by ``scale`` (8-bit rounded)."""
        from .degradations import BicubicDownscale

        return BicubicDownscale(self.scale)

    @staticmethod
    def implied(meta: dict[str, Any], upscale: int | None) -> dict[str, Any]:
        """Options of a checkpoint that records none (older ``model.json`` or plain weights): its scale."""
        scale = meta.get("scale") or upscale
        return {"scale": int(scale)} if scale else {}


@dataclass(frozen=True)
class DenoiseOptions:
    """Denoising settings."""

    sigma: float = field(default=25.0, metadata={"flag": "--sigma",
                                                 "help": "Gaussian noise level on the 0-255 scale (default 25)"})
    val_data: str | None = field(default=None, metadata={"help": _VAL_DATA_HELP})

    def degradation(self) -> Degradation:
        """Additive Gaussian noise of ``sigma / 255``."""
        from .degradations import GaussianNoise

        return GaussianNoise(self.sigma)

    @staticmethod
    def implied(meta: dict[str, Any], upscale: int | None) -> dict[str, Any]:
        """Options of a checkpoint that records none (older ``model.json``): its noise level."""
        return {"sigma": float(meta["noise_sigma"])} if meta.get("noise_sigma") is not None else {}


register_task("sr", "visattn.tasks.restoration.task:SuperResolutionTask", options=SROptions,
              help="super-resolution: bicubic-downscaled photos back to full size (GRL)")
register_task("denoise", "visattn.tasks.restoration.task:DenoisingTask", options=DenoiseOptions,
              help="denoising of additive Gaussian noise (GRL)")


@dataclass(frozen=True)
class JpegOptions:
    """JPEG artefact removal settings."""

    quality: int = field(default=10, metadata={"help": "JPEG quality factor, 1-100 (default 10; the papers use "
                                                       "10, 20, 30, 40)"})
    encoder: str = field(default="pillow", metadata={"help": "JPEG encoder: pillow (default) or opencv (the "
                                                              "official code's; needs opencv-python-headless)"})
    val_data: str | None = field(default=None, metadata={"help": "restoration: evaluation folder (clean images "
                                                                  "such as LIVE1 / Classic5, or input/ + target/)"})

    def degradation(self) -> Degradation:
        """JPEG encoding and decoding at ``quality``."""
        from .jpeg import JpegCompression

        return JpegCompression(self.quality, self.encoder)

    @staticmethod
    def implied(meta: dict[str, Any], upscale: int | None) -> dict[str, Any]:
        """Options of a checkpoint that records none: its degradation's quality."""
        quality = (meta.get("degradation") or {}).get("quality")
        return {"quality": int(quality)} if quality is not None else {}


@dataclass(frozen=True)
class DemosaicOptions:
    """Demosaicking settings (the Bayer pattern is RGGB)."""

    val_data: str | None = field(default=None, metadata={"help": "restoration: evaluation folder (clean images "
                                                                  "such as Kodak24 / McMaster, or input/ + target/)"})

    def degradation(self) -> Degradation:
        """The RGGB mosaic interpolated by Malvar-He-Cutler."""
        from .mosaic import BayerMosaic

        return BayerMosaic()

    @staticmethod
    def implied(meta: dict[str, Any], upscale: int | None) -> dict[str, Any]:
        """Nothing to recover: the mosaic has no parameters."""
        return {}


register_task("jpeg", "visattn.tasks.restoration.jpeg:JpegArtifactTask", options=JpegOptions,
              help="JPEG artefact removal at --quality (GRL)")
register_task("demosaic", "visattn.tasks.restoration.mosaic:DemosaicTask", options=DemosaicOptions,
              help="demosaicking of a Bayer RGGB mosaic (GRL)")
# --- deblurring and real-world super-resolution (tasks/restoration/blur.py, deblur.py, realsr.py) ---------------

_PAIRED_VAL_HELP = ("restoration: evaluation folder: pairs (input/ or blur/ beside target/ or sharp/; dual-pixel "
                    "inputL/ + inputR/ or DPDD's _l/_r/_c folders) or clean images")


@dataclass(frozen=True)
class MotionDeblurOptions:
    """Motion deblurring settings."""

    kernel_size: int = field(default=21, metadata={"help": "deblur-motion: largest random motion kernel, odd "
                                                           "(default 21)"})
    val_data: str | None = field(default=None, metadata={"help": _PAIRED_VAL_HELP})

    def degradation(self) -> Degradation:
        """Random camera-shake kernels (Boracchi-Foi trajectories) up to ``kernel_size`` pixels."""
        from .blur import MotionBlur

        return MotionBlur(self.kernel_size)

    @staticmethod
    def implied(meta: dict[str, Any], upscale: int | None) -> dict[str, Any]:
        """Nothing to infer from a checkpoint without options."""
        return {}


@dataclass(frozen=True)
class DefocusDeblurOptions:
    """Defocus deblurring settings."""

    max_radius: float = field(default=6.0, metadata={"help": "deblur-defocus: largest disk radius in pixels "
                                                             "(default 6)"})
    min_radius: float = field(default=1.0, metadata={"help": "deblur-defocus: smallest disk radius (default 1)"})
    dual_pixel: bool = field(default=False, metadata={"help": "deblur-defocus: 6-channel left / right dual-pixel "
                                                              "views as input (model in_chans 6, out_chans 3)"})
    val_data: str | None = field(default=None, metadata={"help": _PAIRED_VAL_HELP})

    def degradation(self) -> Degradation:
        """Disks of a random radius; dual-pixel: the two half-aperture views."""
        from .blur import DefocusBlur

        return DefocusBlur(self.max_radius, self.min_radius, self.dual_pixel)

    @staticmethod
    def implied(meta: dict[str, Any], upscale: int | None) -> dict[str, Any]:
        """A checkpoint without options whose model takes 6 channels is a dual-pixel one."""
        config = meta.get("config") or {}
        return {"dual_pixel": True} if config.get("in_chans") == 6 else {}


@dataclass(frozen=True)
class RealSROptions:
    """Real-world super-resolution settings."""

    scale: int = field(default=4, metadata={"help": "super-resolution factor (default 4)"})
    val_data: str | None = field(default=None, metadata={"help": _VAL_DATA_HELP})

    def degradation(self) -> Degradation:
        """The randomised second-order degradation (blur, resize, noise, JPEG, twice)."""
        from .realsr import SecondOrderDegradation

        return SecondOrderDegradation(self.scale)

    @staticmethod
    def implied(meta: dict[str, Any], upscale: int | None) -> dict[str, Any]:
        """Options of a checkpoint that records none: its scale."""
        scale = meta.get("scale") or upscale
        return {"scale": int(scale)} if scale else {}


register_task("deblur-motion", "visattn.tasks.restoration.deblur:MotionDeblurTask", options=MotionDeblurOptions,
              help="motion deblurring: random camera-shake blur or GoPro-style pairs (GRL)")
register_task("deblur-defocus", "visattn.tasks.restoration.deblur:DefocusDeblurTask", options=DefocusDeblurOptions,
              help="defocus deblurring: random disk blur or DPDD pairs, single image or dual-pixel (GRL)")
register_task("real-sr", "visattn.tasks.restoration.realsr:RealSRTask", options=RealSROptions,
              help="real-world super-resolution: randomised second-order degradation, L1 (GRL)")
