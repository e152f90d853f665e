"""Paired restoration data (a degraded input and its clean target per file name) and the deblurring tasks.

Layouts read (``--data`` for training, ``--val-data`` / ``visattn eval --data`` for evaluation), found at any depth
below the given folder:

* GoPro / HIDE / RealBlur style: a folder holding ``target/`` (or ``sharp/``, ``gt/``) beside ``input/`` (or
  ``blur/``, ``inputC/``, ``source/``), e.g. GoPro's ``train/GOPR0372_07_00/{blur,sharp}/`` or Restormer's
  ``test/GoPro/{input,target}/``;
* dual-pixel (``--dual-pixel``): ``inputL/`` + ``inputR/`` beside ``target/`` (Restormer's DPDD layout), or DPDD's
  own ``<split>_c/target/`` with the views in ``<split>_l/source/`` and ``<split>_r/source/`` (its
  ``<split>_c/source/`` is the combined image the single-image task reads).

Files pair by their path inside the input and target folders without the extension; a name present on one side
only, or two sizes that differ, is an error naming the files. Folders whose path (below the given one) has a part
starting with ``train`` are training pairs, ``val`` / ``test`` ones evaluation pairs; with no such split a fixed
share is held out. Training crops are taken at the same place in input and target (the two are stacked as one image
for cropping) and get the same flip / rotation - for dual-pixel views only the flips that keep the views' horizontal
disparity, a horizontal flip swapping left and right. Without paired folders (the built-in photos, a folder of clean
images) the task's degradation synthesises the input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..base import DataError, EvalContext, RunSettings
from .data import RestorationData, builtin_eval_items, load_benchmark, load_restoration_data, scan_images
from .task import RestorationTask

__all__ = ["DefocusDeblurTask", "MotionDeblurTask", "PairGroup", "PairedRestorationTask", "find_pair_groups",
           "load_pairs"]

log = logging.getLogger("visattn")

TARGET_DIRS = ("target", "sharp", "gt")
INPUT_DIRS = ("input", "blur", "inputC", "source")
DUAL_DIRS = ("inputL", "inputR")


@dataclass(frozen=True)
class PairGroup:
    """One folder of pairs: the target folder and the input folder(s) (one, or the left and right views)."""

    target: Path
    inputs: tuple[Path, ...]
    split: str                                      # "train", "val" or "" (no split named)


def _split_of(path: Path, root: Path) -> str:
    for part in path.relative_to(root).parts:
        low = part.lower()
        if low.startswith("train"):
            return "train"
        if low.startswith(("val", "test")):
            return "val"
    return ""


def find_pair_groups(root: Path, views: int = 1) -> list[PairGroup]:
    """The paired folders under ``root`` (itself included) for 1 input view or 2 (dual-pixel), sorted."""
    if not root.is_dir():
        return []
    groups = []
    for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        target = next((folder / n for n in TARGET_DIRS if (folder / n).is_dir()), None)
        if target is None:
            continue
        if views == 1:
            inputs = tuple(folder / n for n in INPUT_DIRS if (folder / n).is_dir())[:1]
        elif all((folder / n).is_dir() for n in DUAL_DIRS):
            inputs = tuple(folder / n for n in DUAL_DIRS)
        elif folder.name.lower().endswith("_c"):                        # DPDD: <split>_c/target, <split>_{l,r}/source
            stem = folder.name[:-2]
            inputs = tuple(folder.parent / f"{stem}{s}" / "source" for s in ("_l", "_r"))
            inputs = inputs if all(p.is_dir() for p in inputs) else ()
        else:
            inputs = ()
        if not inputs:
            log.warning("%s has no %s beside it; skipped", target,
                        " or ".join(INPUT_DIRS) if views == 1 else "inputL/ + inputR/ (or DPDD _l/_r folders)")
            continue
        groups.append(PairGroup(target, inputs, _split_of(folder, root)))
    return groups


def _keyed(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder).with_suffix("")): p for p in scan_images(folder)}


def load_pairs(groups: list[PairGroup], channels: int = 3, *,
               root: Path | None = None) -> list[tuple[str, Tensor, Tensor]]:
    """(name, target uint8 (C, H, W), input uint8 (C x views, H, W)) of every pair in ``groups``.

    Raises:
        DataError: a file on one side only, or an input whose size differs from its target's.
    """
    from .data import _load_uint8

    out = []
    for g in groups:
        targets = _keyed(g.target)
        inputs = [_keyed(folder) for folder in g.inputs]
        for folder, found in zip(g.inputs, inputs):
            only_in, only_t = sorted(set(found) - set(targets)), sorted(set(targets) - set(found))
            if only_in or only_t:
                raise DataError(f"paired folders {folder} and {g.target} do not hold the same file names: "
                                f"only in the input: {only_in[:5] or 'none'}; only in the target: "
                                f"{only_t[:5] or 'none'}")
        prefix = g.target.parent.relative_to(root) if root is not None and g.target.parent != root else None
        for key in sorted(targets):
            _, clean = _load_uint8([targets[key]], channels)[0]
            views = [_load_uint8([found[key]], channels)[0][1] for found in inputs]
            for folder, v in zip(g.inputs, views):
                if v.shape[-2:] != clean.shape[-2:]:
                    raise DataError(f"{folder / key}: input size {tuple(v.shape[-2:])} differs from its target's "
                                    f"{tuple(clean.shape[-2:])}")
            name = f"{prefix.as_posix()}/{key}" if prefix is not None else key
            out.append((name, clean, torch.cat(views)))
    return out


def _hold_out(items: list, fraction: float, seed: int) -> tuple[list, list]:
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, round(fraction * len(items))) if len(items) > 1 else 0
    held = set(order[:k])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


class PairedRestorationTask(RestorationTask):
    """A restoration task that trains and evaluates on real pairs when the data are paired folders (see the module
    docstring), and on the degradation's synthetic inputs otherwise."""

    @classmethod
    def _views(cls, degradation: Any) -> int:
        return getattr(degradation, "input_channels", 3) // 3

    @classmethod
    def _paired(cls, source: str | None, views: int) -> list[PairGroup]:
        if not source or source == "photos" or not Path(source).is_dir():
            return []
        return find_pair_groups(Path(source), views)

    @classmethod
    def for_training(cls, run: RunSettings, options: Any) -> RestorationTask:
        degradation = cls.make_degradation(options)
        views = cls._views(degradation)
        channels = 3 if views > 1 else int(run.model_overrides.get("in_chans", 3))
        patch = run.img_size or 64
        train_groups = cls._paired(run.data, views)
        val_groups = cls._paired(options.val_data, views)
        record: dict[str, Any] = {"source": run.data, "val_data": options.val_data, "val_fraction": run.val_fraction,
                                  "split_seed": 0, "paired": bool(train_groups)}
        if train_groups:
            root = Path(run.data)
            pairs = load_pairs([g for g in train_groups if g.split != "val"], channels, root=root)
            val = [] if val_groups else load_pairs([g for g in train_groups if g.split == "val"], channels,
                                                   root=root)
            if not val and not val_groups:
                pairs, val = _hold_out(pairs, run.val_fraction, 0)
            small = [n for n, c, _ in pairs if min(c.shape[-2:]) < patch]
            if small:
                log.warning("skipping %d training pair(s) smaller than the %d px patch: %s", len(small), patch,
                            ", ".join(small[:5]))
            train = [(n, torch.cat([x, c])) for n, c, x in pairs if min(c.shape[-2:]) >= patch]   # (Cin + C, H, W)
            data = RestorationData(train=train, val=list(val), source=record)
        else:
            data = load_restoration_data(run.data, scale=1, channels=channels, patch=patch,
                                         val_data=None if val_groups else options.val_data,
                                         val_fraction=run.val_fraction, train_limit=run.train_limit,
                                         val_limit=run.val_limit)
            data.source.update(paired=False)
        if val_groups:
            data.val = load_pairs(val_groups, channels, root=Path(options.val_data))
        if train_groups:
            data.train = data.train[:run.train_limit] if run.train_limit is not None else data.train
            data.val = data.val[:run.val_limit] if run.val_limit is not None else data.val
            if not data.train:
                raise DataError(f"{run.data}: no training pair of at least {patch}x{patch} pixels")
            if not data.val:
                raise DataError(f"{run.data}: no evaluation pairs (add a val/ or test/ folder or pass --val-data)")
        return cls(data, degradation, patch=patch, channels=channels, seed=run.seed, options=options)

    @classmethod
    def for_evaluation(cls, meta: dict[str, Any], options: Any, source: str | None = None, *,
                       limit: int | None = None, split: str = "val") -> RestorationTask:
        """The recorded evaluation pairs / images of the run, or ``source``: paired folders, a folder of clean
        images (inputs synthesised with a seed per image), or the built-in "photos"."""
        if split != "val":
            raise ValueError("restoration checkpoints are evaluated on their evaluation images only (--split val)")
        config = meta.get("config") or {}
        degradation = cls.make_degradation(cls.resolve_options(meta, options, config.get("upscale")))
        if config.get("upscale") is not None:
            cls.check_scale(config["upscale"], degradation)
        views = cls._views(degradation)
        channels = int(config.get("out_chans") or config.get("in_chans") or 3) if views == 1 else 3
        saved = meta.get("data") or {}
        if source is None:
            source = saved.get("val_data") or saved.get("source")
            if source is None:
                raise DataError("the checkpoint does not record its data; pass --data (paired folders or images)")
            recorded = True
        else:
            recorded = False
        groups = cls._paired(source, views)
        if groups:
            held_out = recorded and not saved.get("val_data")      # the run's own evaluation share of its data
            val_groups = [g for g in groups if g.split == "val"]
            items = load_pairs(val_groups if held_out and val_groups else groups, channels, root=Path(source))
            if held_out and not val_groups:
                items = _hold_out(items, saved.get("val_fraction", 0.1), 0)[1]
        elif source == "photos":
            items = builtin_eval_items(1, channels)
        elif Path(source).is_dir() and recorded and not saved.get("val_data"):
            items = load_restoration_data(source, scale=1, channels=channels, patch=1,
                                          val_fraction=saved.get("val_fraction", 0.1),
                                          split_seed=saved.get("split_seed", 0)).val
        elif Path(source).is_dir():
            items = load_benchmark(Path(source), channels)
        else:
            raise DataError(f"--data {source}: not a folder of images or pairs (or the built-in 'photos')")
        if limit is not None:
            items = items[:limit]
        if not items:
            raise DataError(f"{source}: no evaluation images")
        return cls(RestorationData(train=[], val=items, source={"source": source}), degradation, patch=1,
                   channels=channels, options=options)

    # --- training hooks -----------------------------------------------------------------------------------------
    def model_overrides(self) -> dict[str, Any]:
        overrides = self.degradation.model_overrides()
        return overrides if "in_chans" in overrides else {**overrides, "in_chans": self.channels}

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        config = getattr(model, "config", None)
        want = getattr(self.degradation, "input_channels", None)
        if want is not None and config is not None and getattr(config, "in_chans", want) != want:
            raise ValueError(f"{self.degradation.describe()} feeds {want} channels; the model takes "
                             f"{config.in_chans} (dual-pixel models: --dual-pixel)")

    def augment(self, images: Tensor, generator: torch.Generator, global_batch: int,
                offset: int) -> tuple[Tensor, Tensor]:
        """Synthetic inputs (clean patches) as :class:`RestorationTask`; stacked pairs (input channels, then the
        target's) get one flip / rotation each, shared by input and target."""
        if images.shape[1] == self.channels:
            return super().augment(images, generator, global_batch, offset)
        n = images.shape[0]
        k = torch.randint(0, 8, (global_batch,), generator=generator)[offset:offset + n]
        torch.randint(0, 2 ** 62, (global_batch,), generator=generator)          # the same stream as synthetic
        x = images.float() / 255
        n_in = x.shape[1] - self.channels
        views = n_in // self.channels
        out = []
        for im, t in zip(x, k.tolist()):
            if views == 1:
                out.append(_dihedral_any(im, t))
            else:                                 # vertical flip; horizontal flip swapping the left / right views
                if t & 1:
                    im = im.flip(-2)
                if t & 2:
                    c = self.channels
                    im = torch.cat([im[c:2 * c], im[:c], im[2 * c:]]).flip(-1)   # (R, L, target) mirrored
                out.append(im)
        x = torch.stack(out)
        return x[:, :n_in], x[:, n_in:]

    def evaluate(self, model: nn.Module, ctx: EvalContext | None = None) -> dict[str, Any]:
        """:meth:`RestorationTask.evaluate` plus MAE (mean absolute error in [0, 1] of the output, and of the
        baseline)."""
        from ...distributed import DistInfo, all_reduce_sum

        result = super().evaluate(model, ctx)
        ctx = ctx or EvalContext()
        ds = self.val_set if ctx.dataset is None else ctx.dataset
        info = ctx.dist_info or DistInfo()
        sums = torch.zeros(2, dtype=torch.float64)
        for i in range(info.rank, len(ds), info.world_size):
            _, clean_u8, given = ds[i]
            x = self.prepare_eval(clean_u8, given, i)
            clean = clean_u8.float()[None] / 255
            sums += torch.tensor([float((self.degradation.baseline(x, tuple(clean.shape[-2:])) - clean).abs().mean()),
                                  1.0], dtype=torch.float64)
        sums = all_reduce_sum(sums, info)
        result["val_mae"] = result["val_loss"]
        result[f"val_{self.degradation.baseline_name}_mae"] = float(sums[0]) / max(float(sums[1]), 1.0)
        return result


def _dihedral_any(x: Tensor, k: int) -> Tensor:
    # one of the 8 flips / 90-degree rotations of a (C, H, W) square patch
    if k & 4:
        x = x.flip(-1)
    return torch.rot90(x, k & 3, dims=(-2, -1))


class MotionDeblurTask(PairedRestorationTask):
    """``--task deblur-motion``: undo :class:`~.blur.MotionBlur` (or real blur of paired folders, GoPro style)."""


class DefocusDeblurTask(PairedRestorationTask):
    """``--task deblur-defocus``: undo :class:`~.blur.DefocusBlur`, single image or dual-pixel views (or real pairs,
    DPDD style)."""
