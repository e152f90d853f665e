"""The restoration task: one :class:`RestorationTask` that holds a :class:`Degradation`, and its registered forms.

Training degrades random clean crops on the fly (one of 8 flips / rotations per sample, then the degradation with a
seed per sample drawn for the whole global batch, so any number of processes sees the same inputs), or crops real
pairs of paired folders (``data.py``); the loss is L1.
Evaluation restores whole images through :func:`tiled_forward` and reports PSNR / SSIM of the 8-bit output next to
the degradation's classical baseline, in the degradation's colour space with its border crop. Nothing here depends on
which degradation it is: ``sr`` and ``denoise`` are the same class with a different ``Options.degradation()``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...distributed import DistInfo, all_reduce_sum
from ..base import DataError, EvalContext, PredictRequest, RunSettings, Task
from .data import (
    PATCHES_PER_IMAGE,
    EvalImages,
    PatchDataset,
    RestorationData,
    builtin_eval_items,
    crop_items,
    load_benchmark,
    load_restoration_data,
)
from .degradations import Degradation
from .metrics import quantize
from .tiling import tiled_forward

__all__ = ["RESTORATION_DEFAULTS", "DenoisingTask", "RestorationTask", "SuperResolutionTask",
           "list_restoration_tasks", "scale_words"]

log = logging.getLogger("visattn")

#: what ``visattn train --task sr|denoise`` uses for the settings the user leaves out
RESTORATION_DEFAULTS = {"model": "grl_tiny", "data": "photos", "batch_size": 8, "lr": 5e-4, "min_lr": 1e-5,
                        "weight_decay": 0.0, "warmup_epochs": 0.2, "epochs": 5, "clip_grad": 0.0}


def scale_words(scale: int) -> str:
    """'upscales x4' / 'keeps the image size' (for messages about a model's output / input size ratio)."""
    return f"upscales x{scale}" if scale > 1 else "keeps the image size"


def _dihedral(x: Tensor, k: int) -> Tensor:
    # one of the 8 flips / 90-degree rotations of a (C, H, W) square patch
    if k & 4:
        x = x.flip(-1)
    return torch.rot90(x, k & 3, dims=(-2, -1))


class RestorationTask(Task):
    """Restoration of a degradation for the shared training loop, ``visattn eval`` and ``visattn restore``.

    Args:
        data: from :func:`load_restoration_data` (no training images: an evaluation-only task).
        degradation: what makes the model input, the baseline and the metric protocol.
        patch: clean training crop side (a multiple of the degradation's scale).
        channels: image channels (the model's ``in_chans``; a model fed several views, e.g. dual-pixel left and right,
            takes ``channels x degradation.views``).
        seed: seed of the crop positions.
        eval_tile: input tile side of the evaluation's tiled inference (0: whole images).
        options: the task's options (stored in ``model.json``).
    """

    model_task = "restoration"
    input_ndim = 4
    main_metric = "val_psnr"
    defaults = RESTORATION_DEFAULTS
    train_stat_names = ()

    def __init__(self, data: RestorationData, degradation: Degradation, *, patch: int = 128, channels: int = 3,
                 seed: int = 0, eval_tile: int = 0, options: Any = None):
        self.degradation = degradation
        self.scale = degradation.scale
        multiple = math.lcm(self.scale, degradation.size_multiple)
        if patch % multiple:
            raise ValueError(f"the clean patch {patch} must be a multiple of {multiple} ({degradation.describe()})")
        degradation.check_channels(channels)
        self.patch, self.channels, self.eval_tile, self.options = patch, channels, eval_tile, options
        self.data = data
        count = max(PATCHES_PER_IMAGE * len(data.train), 1)
        # paired training images (input/ + target/) are stored as input and target stacked on channels, cropped
        # on the grid of size_multiple (a Bayer mosaic keeps its phase)
        self.train_set = PatchDataset([x for _, x in data.train], patch, count, seed,
                                      align=degradation.size_multiple) if data.train else None
        self.val_set = EvalImages(crop_items(data.val, degradation.size_multiple, self.scale))
        self.img_size = patch // self.scale                                 # model input side in training
        self.eval_label = data.source.get("val_data") or data.source.get("source", "")

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def make_degradation(cls, options: Any) -> Degradation:
        """The degradation of ``options`` (their ``degradation()``)."""
        if not hasattr(options, "degradation"):
            raise TypeError(f"options of a restoration task need a degradation() method, got {type(options)}")
        return options.degradation()

    @classmethod
    def for_training(cls, run: RunSettings, options: Any) -> RestorationTask:
        """``run.img_size`` is the clean training patch (default max(64, 32 x scale))."""
        degradation = cls.make_degradation(options)
        scale = degradation.scale
        # image channels: a model fed several views (dual-pixel) takes RGB images stacked on channels
        channels = int(run.model_overrides.get("in_chans", 3)) if degradation.views == 1 else 3
        degradation.check_channels(channels)
        patch = run.img_size or max(64, 32 * scale)
        multiple = math.lcm(scale, degradation.size_multiple)
        if patch % multiple:
            raise DataError(f"--img-size {patch} (the clean training patch) must be a multiple of {multiple} "
                            f"({degradation.describe()})")
        data = load_restoration_data(run.data, scale=scale, channels=channels, patch=patch,
                                     input_dirs=degradation.given_inputs, views=degradation.views,
                                     val_data=options.val_data,
                                     val_fraction=run.val_fraction, train_limit=run.train_limit,
                                     val_limit=run.val_limit)
        return cls(data, degradation, patch=patch, channels=channels, seed=run.seed, options=options)

    @classmethod
    def resolve_options(cls, meta: dict[str, Any], options: Any, upscale: int | None) -> Any:
        """``options`` completed from a checkpoint that records no task options (an older ``model.json``, plain
        weights): fields left at their defaults take what the checkpoint implies (its scale, its noise level)."""
        if "task_options" in meta:
            return options
        defaults = cls.Options()
        implied = cls.Options.implied(meta, upscale)
        return dataclasses.replace(options, **{k: v for k, v in implied.items()
                                               if getattr(options, k) == getattr(defaults, k)})

    @classmethod
    def check_scale(cls, upscale: int, degradation: Degradation) -> None:
        """A clear error when a model's upscale factor cannot undo ``degradation``."""
        if int(upscale) != degradation.scale:
            raise ValueError(f"the checkpoint holds a model that {scale_words(int(upscale))}; --task {cls.name} "
                             f"({degradation.describe()}) needs one that {scale_words(degradation.scale)}")

    @classmethod
    def for_evaluation(cls, meta: dict[str, Any], options: Any, source: str | None = None, *,
                       limit: int | None = None, split: str = "val") -> RestorationTask:
        """The recorded evaluation images of the run, or ``source``: paired folders, a folder of clean images, a
        benchmark folder (with given inputs), or the built-in "photos"."""
        if split != "val":
            raise ValueError("restoration checkpoints are evaluated on their evaluation images only (--split val)")
        config = meta.get("config") or {}
        upscale = config.get("upscale")
        degradation = cls.make_degradation(cls.resolve_options(meta, options, upscale))
        if upscale is not None:
            cls.check_scale(upscale, degradation)
        scale, views = degradation.scale, degradation.views
        # image channels: the model's output (a dual-pixel model maps two RGB views, 6 channels, to RGB)
        channels = int(config.get("out_chans") or config.get("in_chans") or meta.get("in_chans") or 3)
        saved = meta.get("data") or {}
        if source:
            if Path(source).is_dir():
                items = load_benchmark(Path(source), channels, scale=scale, input_dirs=degradation.given_inputs,
                                       views=views)
            elif source == "photos":
                items = builtin_eval_items(scale, channels)
            else:
                raise DataError(f"--data {source}: not a folder of images or pairs (or the built-in 'photos')")
            label = source
        elif saved.get("source"):
            data = load_restoration_data(saved["source"], scale=scale, channels=channels,
                                         patch=int(meta.get("patch_size") or 8 * scale),
                                         input_dirs=degradation.given_inputs, views=views,
                                         val_data=saved.get("val_data"), val_fraction=saved.get("val_fraction", 0.1),
                                         split_seed=saved.get("split_seed", 0), eval_only=True)
            items, label = data.val, saved.get("val_data") or saved["source"]
        else:
            raise DataError("the checkpoint does not record its data; pass --data (a folder of images or pairs)")
        if limit is not None:
            items = items[:limit]
        if not items:
            raise DataError(f"{label}: no evaluation images")
        return cls(RestorationData(train=[], val=items, source={"source": label}), degradation,
                   patch=math.lcm(scale, degradation.size_multiple), channels=channels, options=options)

    # --- training hooks -----------------------------------------------------------------------------------------
    def model_overrides(self) -> dict[str, Any]:
        return {"in_chans": self.channels, **self.degradation.model_overrides()}   # dual-pixel: in_chans 6

    def model_meta(self) -> dict[str, Any]:
        return {"scale": self.scale, "degradation": self.degradation.meta(), "patch_size": self.patch,
                "in_chans": self.channels, "data": self.data.source}

    def describe(self) -> str:
        return (f"{len(self.data.train)} images ({len(self.train_set)} crops of {self.patch}px) / {len(self.val_set)} "
                f"evaluation images, {self.degradation.describe()}")

    def collate(self, items: list[tuple[Tensor, int]]) -> Tensor:
        return torch.stack([patch for patch, _ in items])                 # (B, C, patch, patch) uint8

    def augment(self, images: Tensor, generator: torch.Generator, global_batch: int,
                offset: int) -> tuple[Tensor, Tensor]:
        """(input, target) of this process's slice of a global batch of uint8 clean patches: a random flip /
        rotation, then the degradation with its own seed per sample (both drawn for the whole global batch).
        Paired patches (given input view(s) and target stacked on channels) take the given input through the
        degradation's ``input_from_file`` and then the same flip / rotation as their target; several views
        (dual-pixel) only get the flips that keep their horizontal disparity: vertical, and horizontal with the
        views swapped (the left view of a mirrored scene is the mirrored right view)."""
        n = images.shape[0]
        k = torch.randint(0, 8, (global_batch,), generator=generator)[offset:offset + n]
        seeds = torch.randint(0, 2 ** 62, (global_batch,), generator=generator)[offset:offset + n]
        images = images.float() / 255
        n_in = images.shape[1] - self.channels
        if n_in > 0:                                        # (B, C x views + C, p, p): given input view(s), target
            given, clean = images[:, :n_in], images[:, n_in:]
            inputs = torch.cat([self.degradation.input_from_file(g[None]) for g in given])
            if n_in == self.channels:
                inputs = torch.stack([_dihedral(im, int(t)) for im, t in zip(inputs, k)])
                clean = torch.stack([_dihedral(im, int(t)) for im, t in zip(clean, k)])
                return inputs, clean
            out_in, out_clean = [], []
            for x, y, t in zip(inputs, clean, k.tolist()):
                if t & 1:                                   # vertical flip
                    x, y = x.flip(-2), y.flip(-2)
                if t & 2:                                   # horizontal flip, the views in reverse order
                    x, y = torch.cat(x.split(self.channels)[::-1]).flip(-1), y.flip(-1)
                out_in.append(x)
                out_clean.append(y)
            return torch.stack(out_in), torch.stack(out_clean)
        clean = torch.stack([_dihedral(im, int(t)) for im, t in zip(images, k)])
        inputs = torch.cat([self.degradation(c[None], torch.Generator().manual_seed(int(s)))
                            for c, s in zip(clean, seeds)])
        return inputs, clean

    def prepare_eval(self, clean: Tensor, given: Tensor | None, index: int) -> Tensor:
        """The deterministic (1, C, h, w) model input of evaluation image ``index`` (uint8 (C, H, W) ``clean``; a
        benchmark's ``given`` input wins)."""
        if given is not None:
            return self.degradation.input_from_file(given.float()[None] / 255)
        return self.degradation.eval_input(clean.float()[None] / 255, index)

    def loss(self, out: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(out.float(), target)

    def check_model(self, model: nn.Module) -> None:
        config = getattr(model, "config", None)
        upscale = getattr(config, "upscale", None)
        if upscale is not None:
            self.check_scale(upscale, self.degradation)
        want = self.channels * self.degradation.views
        in_chans = getattr(config, "in_chans", want)
        if in_chans != want:
            raise ValueError(f"{self.degradation.describe()} feeds {want} channels; the model takes {in_chans}")

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: EvalContext | None = None) -> dict[str, Any]:
        """L1 and the degradation's metrics (PSNR, SSIM; JPEG adds PSNR-B) of 8-bit outputs over whole images, and the
        same for the degradation's baseline, in its colour space with its border crop; each process takes every
        world_size-th image and the sums are reduced. Besides the numbers: ``degradation`` (its parameters) and
        ``data`` (what was evaluated)."""
        ctx = ctx or EvalContext()
        self.check_model(model)
        ds = self.val_set if ctx.dataset is None else ctx.dataset
        dist_info = ctx.dist_info or DistInfo()
        d = self.degradation
        y = d.metric_space == "y"
        was_training = model.training
        model.eval()

        def run(t: Tensor) -> Tensor:
            with ctx.amp():
                return model(t.to(ctx.device)).float().cpu()

        metrics = d.metrics()
        m = len(metrics)
        sums = torch.zeros(2 + 2 * m, dtype=torch.float64)              # l1, model metrics, baseline metrics, n
        for i in range(dist_info.rank, len(ds), dist_info.world_size):
            _, clean_u8, given = ds[i]
            x = self.prepare_eval(clean_u8, given, i)
            clean = clean_u8.float()[None] / 255
            out = tiled_forward(run, x, scale=self.scale, tile=self.eval_tile, overlap=16)
            out = out[..., :clean.shape[-2], :clean.shape[-1]]
            base = d.baseline(x, tuple(clean.shape[-2:]))
            values = [f(a, clean, border=d.border, y_channel=y)[0]
                      for a in (quantize(out), base) for f in metrics.values()]
            sums += torch.tensor([float(F.l1_loss(out, clean)), *map(float, values), 1.0], dtype=torch.float64)
        model.train(was_training)
        sums = all_reduce_sum(sums, dist_info)
        n = max(float(sums[-1]), 1.0)
        b = d.baseline_name
        result = {"val_loss": float(sums[0]) / n}
        for j, name in enumerate(metrics):
            result[f"val_{name}"] = float(sums[1 + j]) / n
            result[f"val_{b}_{name}"] = float(sums[1 + m + j]) / n
        return {**result, "val_count": len(ds), "degradation": d.meta(), "data": self.eval_label}

    def _extra_metrics(self, row: dict[str, Any]) -> str:
        # metrics beyond PSNR / SSIM (PSNR-B), model then baseline
        b = self.degradation.baseline_name
        names = [n for n in self.degradation.metrics() if n not in ("psnr", "ssim") and f"val_{n}" in row]
        return "".join(f"  {n.upper()} {row[f'val_{n}']:.2f} ({b}: {row[f'val_{b}_{n}']:.2f})" for n in names)

    def epoch_summary(self, row: dict[str, Any]) -> str:
        b = self.degradation.baseline_name
        ema = f" (ema {row['ema_val_psnr']:.2f})" if "ema_val_psnr" in row else ""
        return (f"train_l1 {row['train_loss']:.4f}  val PSNR {row['val_psnr']:.2f} dB{ema}  SSIM "
                f"{row['val_ssim']:.4f}  ({b}: {row[f'val_{b}_psnr']:.2f} dB / {row[f'val_{b}_ssim']:.4f})"
                f"{self._extra_metrics(row)}")

    def write_plots(self, run: Path, rows: list[dict[str, Any]], result: dict[str, Any], title: str) -> list[str]:
        """``curves.png``: training L1 and validation PSNR (with the baseline) against steps."""
        from ...plots import _save, have_matplotlib

        if not have_matplotlib():
            return []
        import matplotlib.pyplot as plt

        b = self.degradation.baseline_name
        steps = [r for r in rows if r.get("kind") == "step"]
        epochs = [r for r in rows if r.get("kind") == "epoch"]
        fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(11, 4))
        if steps:
            ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, label="train L1 (step)")
        if epochs:
            x = [r["step"] for r in epochs]
            ax_loss.plot(x, [r["val_loss"] for r in epochs], "s-", label="validation L1")
            ax_psnr.plot(x, [r["val_psnr"] for r in epochs], "s-", label="model")
            ax_psnr.plot(x, [r[f"val_{b}_psnr"] for r in epochs], "--", label=b)
        ax_loss.set_xlabel("step")
        ax_loss.legend()
        ax_psnr.set_xlabel("step")
        ax_psnr.set_ylabel(f"PSNR (dB, {'Y' if self.degradation.metric_space == 'y' else 'RGB'})")
        ax_psnr.legend()
        fig.suptitle(title)
        return ["curves.png"] if _save(fig, run / "curves.png") else []

    # --- saved models -------------------------------------------------------------------------------------------
    def eval_report(self, result: dict[str, Any], out: Path, title: str) -> str:
        b = self.degradation.baseline_name
        return (f"PSNR {result['val_psnr']:.2f} dB  SSIM {result['val_ssim']:.4f}  ({b}: "
                f"{result[f'val_{b}_psnr']:.2f} dB / {result[f'val_{b}_ssim']:.4f}; {result['val_count']} images, "
                f"{self.eval_label}; {self.degradation.describe()}){self._extra_metrics(result)}")

    @classmethod
    def predict(cls, model: nn.Module, meta: dict[str, Any], options: Any, request: PredictRequest) -> int:
        suffix = cls.make_degradation(options).output_suffix
        raise ValueError(f"visattn predict does not restore images: use `visattn restore --checkpoint CKPT "
                         f"IMAGE...` (tiled inference; writes <stem>{suffix}.png)")


class SuperResolutionTask(RestorationTask):
    """``--task sr``: undo :class:`~.degradations.BicubicDownscale` by ``--scale`` (PSNR / SSIM on Y)."""


class DenoisingTask(RestorationTask):
    """``--task denoise``: undo :class:`~.degradations.GaussianNoise` of ``--sigma`` (PSNR / SSIM on all channels)."""


def list_restoration_tasks() -> list[str]:
    """The registered tasks whose class is a :class:`RestorationTask`."""
    from .. import get_task, list_tasks

    out = []
    for name in list_tasks():
        try:
            cls = get_task(name)
        except ImportError:   # a task whose optional dependencies are missing is not a restoration task to offer
            continue
        if isinstance(cls, type) and issubclass(cls, RestorationTask):
            out.append(name)
    return out
