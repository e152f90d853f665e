"""Image classification for the shared training loop: label-smoothed cross entropy, random resized crop + flip,
top-1 / top-5 accuracy and a confusion matrix; ``visattn predict`` prints the top-k classes of image files.

Unreadable images (files that pass the folder scan and fail to decode, see ``data.py``) are skipped and counted:
in training a readable image stands in for each (the batch keeps its size), a warning names each file once, a
warning at the end of each epoch says how many were skipped and which, and more than ``max_bad_fraction`` of the
training set stops the run with the files' names; evaluation leaves them out and reports ``val_skipped``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...distributed import DistInfo, all_reduce_sum
from ..augment import apply_crops, center_crops, normalize, sample_crops
from ..base import DataError, EvalContext, PredictRequest, RunSettings, Task
from ..topk import class_names, finish_predictions, format_top, top_classes, topk_correct
from . import ClassificationOptions
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassificationData,
    DataDefaults,
    Item,
    PublishedEvalDataset,
    Unreadable,
    _limit,
    load_classification_data,
    map_folder_classes,
    read_image,
    read_image_as_published,
    scan_image_folder,
)

__all__ = ["ClassificationTask", "collate", "collate_readable", "topk_correct"]

log = logging.getLogger("visattn")


def collate(batch: list[Item]) -> tuple[Tensor, Tensor, tuple[Unreadable, ...]]:
    """Training items -> (uint8 images (B, 3, S, S), labels (B,), the unreadable files the items stand in for)."""
    images = torch.stack([b[0] for b in batch])                        # (B, 3, S, S) uint8
    return images, torch.tensor([b[1] for b in batch], dtype=torch.long), tuple(u for b in batch for u in b[2])


def collate_readable(batch: list[Item]) -> tuple[Tensor, Tensor, tuple[Unreadable, ...]]:
    """Evaluation items -> the batch of the readable ones only (B may be 0), and the unreadable files left out."""
    kept = [b for b in batch if not b[2]]
    images = torch.stack([b[0] for b in kept]) if kept else torch.empty(0, dtype=torch.uint8)  # (B, 3, S, S)
    return images, torch.tensor([b[1] for b in kept], dtype=torch.long), tuple(u for b in batch for u in b[2])


class ClassificationTask(Task):
    """Image classification with label-smoothed cross entropy; top-1 / top-5 accuracy and a confusion matrix.

    Args:
        data: the splits from :func:`load_classification_data`.
        img_size: model input size (None: the data source's default).
        options: preprocessing and loss settings (None fields: the data source's defaults).
    """

    model_task = "classification"
    input_ndim = 4
    main_metric = "val_top1"
    train_stat_names = ("top1",)

    def __init__(self, data: ClassificationData, *, img_size: int | None = None,
                 options: ClassificationOptions | None = None):
        o = options or ClassificationOptions()
        d = data.defaults
        self.data, self.options = data, o
        self.train_set, self.val_set, self.classes = data.train, data.val, data.classes
        self.img_size = img_size or d.img_size
        self.crop_pct = o.crop_pct or d.crop_pct
        self.crop_scale = tuple(o.crop_scale or d.crop_scale)
        self.hflip = d.hflip if o.hflip is None else o.hflip
        self.mean, self.std = tuple(o.mean or d.mean), tuple(o.std or d.std)
        self.label_smoothing = o.label_smoothing
        if not 0 <= o.max_bad_fraction <= 1:
            raise ValueError(f"--max-bad-fraction must be in [0, 1], got {o.max_bad_fraction}")
        self.max_bad_fraction = o.max_bad_fraction
        self.eval_label = data.source.get("source", "")
        self.unreadable: dict[str, str] = {}           # training files that failed to decode in this run: reason
        self.epoch_unreadable: list[str] = []          # ... and each time one did in the current epoch

    @classmethod
    def for_training(cls, run: RunSettings, options: ClassificationOptions) -> ClassificationTask:
        data = load_classification_data(run.data, img_size=run.img_size, crop_pct=options.crop_pct,
                                        val_fraction=run.val_fraction, train_limit=run.train_limit,
                                        val_limit=run.val_limit)
        return cls(data, img_size=run.img_size, options=options)

    @classmethod
    def for_evaluation(cls, meta: dict[str, Any], options: ClassificationOptions, source: str | None = None, *,
                       limit: int | None = None, split: str = "val") -> ClassificationTask:
        if "weights" in meta and "data" not in meta:
            return cls._for_published_weights(meta, options, source, limit=limit, split=split)
        saved = meta.get("data", {})
        source = source or saved.get("source")
        if not source:
            raise ValueError("the checkpoint does not record its data; pass --data")
        limits = {"val_limit": limit} if split == "val" else {"train_limit": limit}
        data = load_classification_data(source, img_size=meta.get("img_size"), crop_pct=meta.get("crop_pct"),
                                        val_fraction=saved.get("val_fraction", 0.1),
                                        split_seed=saved.get("split_seed", 0), **limits)
        classes = meta.get("classes") or data.classes
        if list(classes) != list(data.classes):
            raise ValueError(f"the data's classes {data.classes[:5]}... differ from the model's {classes[:5]}...")
        saved_options = {"crop_pct": meta.get("crop_pct"), "mean": meta.get("mean"), "std": meta.get("std")}
        options = ClassificationOptions(**{**{k: tuple(v) if isinstance(v, list) else v
                                              for k, v in saved_options.items() if v is not None},
                                           **{k: v for k, v in vars(options).items()
                                              if v is not None and k in saved_options}})
        task = cls(data, img_size=meta.get("img_size"), options=options)
        split_name = "test" if split == "val" and data.source.get("builtin") else split
        task.eval_label = f"{source} {split_name} split"
        return task

    @classmethod
    def _for_published_weights(cls, meta: dict[str, Any], options: ClassificationOptions, source: str | None, *,
                               limit: int | None, split: str) -> ClassificationTask:
        """Evaluation of published weights (``meta`` from :func:`visattn.checkpoint.load_published_model`) on an
        ImageFolder whose class folders are named by class id (ImageNet synset) or label name: every image of the
        folder (or of its ``val/`` / ``train/`` sub-folder), with the publisher's preprocessing."""
        if not source:
            raise DataError(f"evaluating the published weights {meta['weights']} needs --data: an ImageFolder "
                            "directory with one sub-folder per class, named by class id (n01440764) or label name")
        path = Path(source)
        if not path.is_dir():
            raise DataError(f"--data {source}: evaluating published weights needs an ImageFolder directory (one "
                            "sub-folder per class, named by class id or label name)")
        if not meta.get("classes"):
            raise DataError(f"the published weights {meta['weights']} come without label names: their class folders "
                            "cannot be mapped onto the classifier")
        names = ("train",) if split == "train" else ("val", "validation", "test")
        folder = next((path / n for n in names if (path / n).is_dir()), path)
        files, labels, folders, skipped = scan_image_folder(folder)
        if skipped:
            log.warning("skipped %d unreadable or non-image file(s) in %s", skipped, folder)
        index = map_folder_classes(folders, meta["classes"], meta.get("class_ids"))
        size = int(meta["img_size"])
        crop_pct = options.crop_pct or meta["crop_pct"]
        dataset = _limit(PublishedEvalDataset(files, [index[label] for label in labels], size,
                                              {**meta, "crop_pct": crop_pct}), limit, seed=2)
        data = ClassificationData(train=dataset, val=dataset, classes=list(meta["classes"]), defaults=DataDefaults(),
                                  source={"source": source})
        # the images arrive cropped to the model's size: the eval crop is the identity
        task = cls(data, img_size=size, options=ClassificationOptions(crop_pct=1.0, mean=tuple(options.mean or
                                                                                               meta["mean"]),
                                                                      std=tuple(options.std or meta["std"])))
        task.eval_label = f"{folder}, {len(folders)} class folder(s), {meta['weights']} preprocessing"
        return task

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    # --- training hooks -----------------------------------------------------------------------------------------
    def model_overrides(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def model_meta(self) -> dict[str, Any]:
        return {"classes": self.classes, "img_size": self.img_size, "crop_pct": self.crop_pct,
                "mean": list(self.mean), "std": list(self.std), "data": self.data.source}

    def describe(self) -> str:
        return f"{len(self.train_set)} train / {len(self.val_set)} val images at {self.img_size}px"

    def collate(self, items: list[Item]) -> tuple[Tensor, Tensor, tuple[Unreadable, ...]]:
        return collate(items)

    def augment(self, batch: tuple[Tensor, Tensor, tuple[Unreadable, ...]], generator: torch.Generator,
                global_batch: int, offset: int) -> tuple[Tensor, Tensor]:
        """Random resized crop + flip of this process's slice [offset, offset + B) of a global batch; the
        unreadable files its items stand in for are counted against ``max_bad_fraction``."""
        images, targets, unreadable = batch
        if unreadable:
            self._count_unreadable(unreadable)
        theta = sample_crops(global_batch, generator, scale=self.crop_scale, hflip=self.hflip)
        theta = theta[offset:offset + images.shape[0]]
        return normalize(apply_crops(images, theta, self.img_size), self.mean, self.std), targets

    def _count_unreadable(self, files: tuple[Unreadable, ...]) -> None:
        """Record files a training batch skipped; stop once more than ``max_bad_fraction`` of the set are bad."""
        for u in files:
            if u.path not in self.unreadable:
                log.warning("%s; skipped: the next readable image stands in for it", u.reason)
                self.unreadable[u.path] = u.reason
            self.epoch_unreadable.append(u.path)
        total = len(self.train_set)
        if len(self.unreadable) > self.max_bad_fraction * total:
            names = ", ".join(sorted(self.unreadable))
            raise DataError(f"{len(self.unreadable)} of {total} training images could not be decoded, more than "
                            f"--max-bad-fraction {self.max_bad_fraction:g} allows: {names}; remove or replace "
                            f"them (or raise --max-bad-fraction) and resume the run")

    def prepare_eval(self, images: Tensor) -> Tensor:
        theta = center_crops(images.shape[0], self.crop_pct)
        return normalize(apply_crops(images, theta, self.img_size), self.mean, self.std)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def train_stats(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        return {"top1": 100.0 * float((logits.argmax(-1) == targets).sum())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, ctx: EvalContext) -> dict[str, Any]:
        """Loss (no smoothing), top-1 / top-5 accuracy (%) and the confusion matrix (rows: truth) on the split;
        each process evaluates a strided shard and the counts are summed."""
        ds = self.val_set if ctx.dataset is None else ctx.dataset
        dist_info = ctx.dist_info or DistInfo()
        shard = list(range(dist_info.rank, len(ds), dist_info.world_size))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, shard), batch_size=ctx.batch_size,
                                             num_workers=ctx.workers, shuffle=False, generator=torch.Generator(),
                                             collate_fn=collate_readable)
        was_training = model.training
        model.eval()
        n = self.num_classes
        confusion = torch.zeros(n * n, dtype=torch.float64)
        totals = torch.zeros(5, dtype=torch.float64)       # loss sum, top-1 hits, top-5 hits, images, unreadable
        skipped: list[str] = []
        for images, targets, unreadable in loader:
            skipped += [u.path for u in unreadable]
            totals[4] += len(unreadable)
            if len(targets) == 0:
                continue
            totals[3] += len(targets)
            x = self.prepare_eval(images).to(ctx.device)
            with ctx.amp():
                logits = model(x)
            logits, targets = logits.float().cpu(), targets.cpu()
            totals[0] += float(F.cross_entropy(logits, targets, reduction="sum"))
            top1, top5 = topk_correct(logits, targets, (1, 5))
            totals[1] += top1
            totals[2] += top5
            confusion += torch.bincount(targets * n + logits.argmax(-1), minlength=n * n).double()
        model.train(was_training)
        if skipped:
            log.warning("skipped %d unreadable image(s) in evaluation: %s", len(skipped), ", ".join(skipped))
        totals = all_reduce_sum(totals, dist_info)
        confusion = all_reduce_sum(confusion, dist_info).view(n, n).long()
        count = max(1.0, float(totals[3]))
        return {"val_loss": float(totals[0]) / count, "val_top1": 100 * float(totals[1]) / count,
                "val_top5": 100 * float(totals[2]) / count, "val_count": int(totals[3]),
                "val_skipped": int(totals[4]), "confusion": confusion}

    def epoch_summary(self, row: dict[str, Any]) -> str:
        """The epoch's metrics, and the unreadable images its training batches skipped (the count starts anew)."""
        ema = f"  ema {row['ema_val_top1']:.2f}" if "ema_val_top1" in row else ""
        line = (f"train_loss {row['train_loss']:.4f}  val_loss {row['val_loss']:.4f}  val_top1 "
                f"{row['val_top1']:.2f}{ema}  val_top5 {row['val_top5']:.2f}")
        if row.get("val_skipped"):
            line += f"  ({row['val_skipped']} unreadable val images skipped)"
        if self.epoch_unreadable:
            log.warning("skipped %d unreadable images this epoch: %s", len(self.epoch_unreadable),
                        ", ".join(sorted(set(self.epoch_unreadable))))
            self.epoch_unreadable = []
        return line

    def write_plots(self, run: Path, rows: list[dict[str, Any]], result: dict[str, Any], title: str) -> list[str]:
        from ...plots import plot_confusion

        written = super().write_plots(run, rows, result, title)
        if "confusion" in result and plot_confusion(result["confusion"].tolist(), self.classes, run / "confusion.png",
                                                    title=f"{title}: validation top-1 {result['val_top1']:.2f}%"):
            written.append("confusion.png")
        return written

    # --- saved models -------------------------------------------------------------------------------------------
    def eval_report(self, result: dict[str, Any], out: Path, title: str) -> str:
        from ...plots import plot_confusion

        png = plot_confusion(result["confusion"].tolist(), self.classes, out / "confusion.png",
                             title=f"{title}: top-1 {result['val_top1']:.2f}%")
        skipped = f", {result['val_skipped']} unreadable skipped" if result.get("val_skipped") else ""
        line = (f"top-1 {result['val_top1']:.2f}%  top-5 {result['val_top5']:.2f}%  loss {result['val_loss']:.4f}  "
                f"({result['val_count']} images{skipped}, {self.eval_label})")
        return line + (f"\nwrote {png}" if png else "")

    @classmethod
    def predict(cls, model: nn.Module, meta: dict[str, Any], options: ClassificationOptions,
                request: PredictRequest) -> int:
        """Top-k classes with probabilities of each image file (the model's own preprocessing: for published
        weights, ``meta`` from :func:`visattn.checkpoint.load_published_model`, the publisher's resize, crop and
        interpolation)."""
        if not request.inputs:
            raise ValueError("no IMAGE given")
        size = int(meta.get("img_size") or 224)
        crop_pct = float(options.crop_pct or meta.get("crop_pct") or 0.875)
        mean = options.mean or meta.get("mean") or IMAGENET_MEAN
        std = options.std or meta.get("std") or IMAGENET_STD
        classes = class_names(meta, model.config.num_classes)
        published = "interpolation" in meta                            # published weights: timm's eval transform
        results, skipped = [], 0
        for path in request.inputs:
            try:
                if published:
                    image = read_image_as_published(path, size, crop_pct=crop_pct, crop_mode=meta.get("crop_mode",
                                                    "center"), interpolation=meta["interpolation"])[None]
                else:
                    image = read_image(path, round(size / crop_pct))[None]  # (1, 3, S, S) uint8
            except Exception as err:  # missing, corrupt or non-image file: skip it and say which
                log.warning("skipping %s: %s", path, err)
                skipped += 1
                continue
            if published:                                              # already (1, 3, size, size)
                x = normalize(image.float(), mean, std).to(request.device)
            else:
                x = normalize(apply_crops(image, center_crops(1, crop_pct), size), mean, std).to(request.device)
            with torch.no_grad():
                probs = model(x).float().softmax(-1)[0].cpu()
            preds = top_classes(probs, classes, request.topk)
            results.append({"image": path, "top": preds})
            if not request.json:
                print(f"{path}: {format_top(preds)}")
        return finish_predictions(results, skipped, request, "image")
