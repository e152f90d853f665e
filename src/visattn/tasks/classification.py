"""Image classification: the built-in datasets, ImageFolder directories, augmentation, loss and metrics.

Data sources (``--data``):

* a built-in dataset name (:data:`BUILTIN_DATASETS`): ``digits`` is scikit-learn's 1,797 handwritten 8x8 digits
  (the file ships inside the scikit-learn wheel; nothing is downloaded), upsampled to the model's input size, with
  a fixed stratified 20% held-out test split;
* a directory in ImageFolder layout, one sub-folder per class. If it has ``train/`` and ``val/`` (or ``test/``)
  sub-folders those are the splits; otherwise a stratified ``val_fraction`` of every class is held out with a fixed
  seed, so training and a later ``visattn eval`` see the same split.

Images are stored as uint8 (3, S, S) tensors, S = img_size / crop_pct; a training batch gets a random resized crop
and flip (``tasks/augment.py``), evaluation a centre crop of ``crop_pct``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import DistInfo, all_reduce_sum
from .augment import apply_crops, center_crops, normalize, sample_crops
from .base import DataError
from .image_io import read_image

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "ClassificationData",
    "ClassificationTask",
    "collate",
    "load_classification_data",
    "read_image",
    "topk_correct",
]

log = logging.getLogger("visattn")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataDefaults:
    """Augmentation and preprocessing defaults a data source recommends (CLI flags override them)."""

    img_size: int = 224
    crop_pct: float = 0.875
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


class ImageTensorDataset(torch.utils.data.Dataset):
    """Images held in memory as one uint8 (N, 3, S, S) tensor."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


class ImageFileDataset(torch.utils.data.Dataset):
    """Image files decoded on access (in DataLoader workers) and squashed to (3, size, size) uint8."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], size: int):
        self.files, self.labels, self.size = list(files), torch.tensor(labels, dtype=torch.long), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        try:
            image = read_image(self.files[i], self.size)
        except Exception as err:  # verified at scan time; a file can still be truncated past its header
            raise DataError(f"cannot decode {self.files[i]} ({err}); remove or replace the file") from err
        return image, int(self.labels[i])


@dataclass
class ClassificationData:
    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    classes: list[str]
    defaults: DataDefaults
    source: dict[str, Any]  # how to rebuild the same split later (recorded in model.json)


# --- built-in data -----------------------------------------------------------------------------------------------

def _stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices (train, held_out) holding out ``fraction`` of every class (at least one image of classes with >= 2)."""
    g = torch.Generator().manual_seed(seed)
    train, held = [], []
    for c in labels.unique(sorted=True).tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) >= 2 else 0
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


def _sklearn_data_file(name: str) -> Path:
    # Locate the file without importing scikit-learn (its import costs seconds; we only read a csv).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in 'digits' dataset ships inside scikit-learn: pip install 'visattn[data]'")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


def load_digits(img_size: int) -> tuple[Tensor, Tensor, list[str]]:
    """scikit-learn's 8x8 digits (values 0-16) as uint8 (N, 3, img_size, img_size) images and labels."""
    import numpy as np

    table = np.loadtxt(_sklearn_data_file("digits.csv.gz"), delimiter=",", dtype=np.float32)  # (1797, 65)
    pixels = torch.from_numpy(table[:, :-1]).view(-1, 1, 8, 8)         # (N, 1, 8, 8) in [0, 16]
    labels = torch.from_numpy(table[:, -1]).long()
    images = F.interpolate(pixels, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = (images * (255 / 16)).round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, labels, [str(d) for d in range(10)]


BUILTIN_DATASETS: dict[str, Callable[[int], tuple[Tensor, Tensor, list[str]]]] = {"digits": load_digits}
_BUILTIN_DEFAULTS = {
    # Digits are centred and not mirror-symmetric: mild crops, no flips; 32 px is MaxViT's minimum input.
    "digits": DataDefaults(img_size=32, crop_pct=1.0, crop_scale=(0.6, 1.0), hflip=0.0, mean=(0.5,) * 3,
                           std=(0.5,) * 3),
}
_BUILTIN_TEST_FRACTION = 0.2


# --- ImageFolder ---------------------------------------------------------------------------------------------------

def _verify_image(path: Path) -> str | None:
    """None if PIL can parse the file's structure, else the reason (verify() reads headers and chunks only)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types for bad files (UnidentifiedImageError, SyntaxError, OSError)
        return f"{type(err).__name__}: {err}"
    return None


def scan_image_folder(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str], int]:
    """Files and labels of a class-per-subfolder directory.

    Unreadable or non-image files are skipped with a warning naming each; the count is returned.

    Returns:
        files, labels, class names (sorted sub-folder names, or ``classes`` if given), number skipped.
    """
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if not root.is_dir():
        raise DataError(f"--data must be a directory of class sub-folders, got a file: {root}")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        log.warning("ignoring %d file(s) directly in %s: images must sit in one sub-folder per class (e.g. %s)",
                    len(loose), root, loose[0].name)
    files: list[Path] = []
    labels: list[int] = []
    skipped = 0
    found: list[str] = []
    for sub in subdirs:
        good = []
        for path in sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith(".")):
            reason = (None if path.suffix.lower() in IMAGE_EXTENSIONS else "not an image file extension")
            reason = reason or _verify_image(path)
            if reason:
                log.warning("skipping %s: %s", path, reason)
                skipped += 1
                continue
            good.append(path)
        if not good:
            log.warning("class folder %s has no readable images; ignoring it", sub)
            continue
        found.append(sub.name)
        if classes is not None and sub.name not in classes:
            raise DataError(f"class folder {sub} is not among the training classes {classes}")
        label = (classes or []).index(sub.name) if classes is not None else len(found) - 1
        files += good
        labels += [label] * len(good)
    if not files:
        raise DataError(f"no images found in {root}: expected one sub-folder per class holding "
                        f"{', '.join(IMAGE_EXTENSIONS[:4])}... files")
    return files, labels, (classes if classes is not None else found), skipped


def load_classification_data(source: str, *, img_size: int | None = None, crop_pct: float | None = None,
                             val_fraction: float = 0.1, split_seed: int = 0, train_limit: int | None = None,
                             val_limit: int | None = None) -> ClassificationData:
    """The train and validation/test splits of a built-in dataset name or an ImageFolder directory.

    Args:
        source: a name from :data:`BUILTIN_DATASETS` or a directory path.
        img_size: model input size; default from the data source.
        crop_pct: fraction of the stored image kept by the eval centre crop; default from the data source.
        val_fraction: held-out fraction per class when a directory has no train/val sub-folders.
        split_seed: seed of that split.
        train_limit: keep only the first N training images of a fixed shuffle (quick runs and tests).
        val_limit: same for the validation split.
    """
    record: dict[str, Any] = {"source": source, "val_fraction": val_fraction, "split_seed": split_seed}
    path = Path(source)
    if source in BUILTIN_DATASETS and not path.exists():
        defaults = _BUILTIN_DEFAULTS[source]
        size = img_size or defaults.img_size
        images, labels, classes = BUILTIN_DATASETS[source](round(size / (crop_pct or defaults.crop_pct)))
        train_idx, test_idx = _stratified_split(labels, _BUILTIN_TEST_FRACTION, seed=0)
        train = ImageTensorDataset(images[train_idx], labels[train_idx])
        val = ImageTensorDataset(images[test_idx], labels[test_idx])
        record = {"source": source, "builtin": True}
    else:
        if not any(sep in source for sep in ("/", os.sep)) and not path.exists():
            raise DataError(f"data directory not found: {source} (built-in datasets: {', '.join(BUILTIN_DATASETS)})")
        defaults = DataDefaults()
        size = img_size or defaults.img_size
        stored = round(size / (crop_pct or defaults.crop_pct))
        split_dirs = [path / n for n in ("val", "validation", "test") if (path / n).is_dir()]
        skipped = 0
        if (path / "train").is_dir() and split_dirs:
            files, labels, classes, n = scan_image_folder(path / "train")
            val_files, val_labels, _, m = scan_image_folder(split_dirs[0], classes)
            skipped = n + m
            train = ImageFileDataset(files, labels, stored)
            val = ImageFileDataset(val_files, val_labels, stored)
            record["split"] = f"train/ and {split_dirs[0].name}/"
        else:
            files, labels, classes, skipped = scan_image_folder(path)
            train_idx, val_idx = _stratified_split(torch.tensor(labels), val_fraction, split_seed)
            if len(val_idx) == 0:
                raise DataError(f"{path} has too few images per class to hold out a validation split; add images "
                                "or provide train/ and val/ sub-folders")
            train = ImageFileDataset([files[i] for i in train_idx], [labels[i] for i in train_idx], stored)
            val = ImageFileDataset([files[i] for i in val_idx], [labels[i] for i in val_idx], stored)
        if skipped:
            log.warning("skipped %d unreadable or non-image file(s) in %s", skipped, path)
        record["skipped_files"] = skipped
    train = _limit(train, train_limit, seed=1)
    val = _limit(val, val_limit, seed=2)
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{source}: empty {'training' if len(train) == 0 else 'validation'} split")
    return ClassificationData(train=train, val=val, classes=classes, defaults=defaults, source=record)


def _limit(ds: torch.utils.data.Dataset, n: int | None, seed: int) -> torch.utils.data.Dataset:
    if n is None or n >= len(ds):
        return ds
    keep = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return torch.utils.data.Subset(ds, keep.tolist())


def dataset_labels(ds: torch.utils.data.Dataset) -> Tensor:
    if isinstance(ds, torch.utils.data.Subset):
        return dataset_labels(ds.dataset)[torch.tensor(ds.indices, dtype=torch.long)]
    return ds.labels


# --- the task ------------------------------------------------------------------------------------------------------

def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int]) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices  # (B, kmax)
    hit = top == targets[:, None]
    return [int(hit[:, :k].any(dim=-1).sum()) for k in ks]


class ClassificationTask:
    """Image classification with label-smoothed cross entropy; top-1 / top-5 accuracy and a confusion matrix.

    Args:
        data: the splits from :func:`load_classification_data`.
        img_size: model input size.
        crop_pct, crop_scale, hflip, mean, std: preprocessing (None: the data source's default).
        label_smoothing: cross-entropy label smoothing.
    """

    name = "classification"
    main_metric = "val_top1"

    def __init__(self, data: ClassificationData, *, img_size: int | None = None, crop_pct: float | None = None,
                 crop_scale: tuple[float, float] | None = None, hflip: float | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 label_smoothing: float = 0.1):
        d = data.defaults
        self.data = data
        self.train_set, self.val_set, self.classes = data.train, data.val, data.classes
        self.img_size = img_size or d.img_size
        self.crop_pct = crop_pct or d.crop_pct
        self.crop_scale = tuple(crop_scale or d.crop_scale)
        self.hflip = d.hflip if hflip is None else hflip
        self.mean, self.std = tuple(mean or d.mean), tuple(std or d.std)
        self.label_smoothing = label_smoothing

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def model_overrides(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def model_meta(self) -> dict[str, Any]:
        return {"task": self.name, "classes": self.classes, "img_size": self.img_size, "crop_pct": self.crop_pct,
                "mean": list(self.mean), "std": list(self.std), "data": self.data.source}

    def augment(self, images: Tensor, generator: torch.Generator, global_batch: int, offset: int) -> Tensor:
        """Random resized crop + flip of this process's slice [offset, offset + B) of a global batch."""
        theta = sample_crops(global_batch, generator, scale=self.crop_scale, hflip=self.hflip)
        theta = theta[offset:offset + images.shape[0]]
        return normalize(apply_crops(images, theta, self.img_size), self.mean, self.std)

    def prepare_eval(self, images: Tensor) -> Tensor:
        theta = center_crops(images.shape[0], self.crop_pct)
        return normalize(apply_crops(images, theta, self.img_size), self.mean, self.std)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

    def train_stats(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        return {"correct": float((logits.argmax(-1) == targets).sum())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, *, batch_size: int, device: torch.device, dist_info: DistInfo | None = None,
                 autocast: Callable[[], Any] | None = None, workers: int = 0,
                 dataset: torch.utils.data.Dataset | None = None) -> dict[str, Any]:
        """Loss (no smoothing), top-1 / top-5 accuracy (%) and the confusion matrix (rows: truth) on ``dataset``
        (default the validation split); each process evaluates a strided shard and the counts are summed."""
        ds = self.val_set if dataset is None else dataset
        dist_info = dist_info or DistInfo()
        shard = list(range(dist_info.rank, len(ds), dist_info.world_size))
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, shard), batch_size=batch_size,
                                             num_workers=workers, shuffle=False,
                                             generator=torch.Generator())
        was_training = model.training
        model.eval()
        n = self.num_classes
        confusion = torch.zeros(n * n, dtype=torch.float64)
        totals = torch.zeros(3, dtype=torch.float64)                   # loss sum, top-1 hits, top-5 hits
        for images, targets in loader:
            x = self.prepare_eval(images).to(device)
            with autocast() if autocast else contextlib.nullcontext():
                logits = model(x)
            logits, targets = logits.float().cpu(), targets.cpu()
            totals[0] += float(F.cross_entropy(logits, targets, reduction="sum"))
            top1, top5 = topk_correct(logits, targets, (1, 5))
            totals[1] += top1
            totals[2] += top5
            confusion += torch.bincount(targets * n + logits.argmax(-1), minlength=n * n).double()
        model.train(was_training)
        totals = all_reduce_sum(totals, dist_info)
        confusion = all_reduce_sum(confusion, dist_info).view(n, n).long()
        count = max(1, len(ds))
        return {"val_loss": float(totals[0]) / count, "val_top1": 100 * float(totals[1]) / count,
                "val_top5": 100 * float(totals[2]) / count, "val_count": len(ds), "confusion": confusion}


def collate(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    images = torch.stack([b[0] for b in batch])                        # (B, 3, S, S) uint8
    return images, torch.tensor([b[1] for b in batch], dtype=torch.long)
