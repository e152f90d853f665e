"""Image classification data: the built-in datasets and ImageFolder directories.

Data sources (``--data``):

* a built-in dataset name (:data:`BUILTIN_DATASETS`): ``digits`` is scikit-learn's 1,797 handwritten 8x8 digits
  (the file ships inside the scikit-learn wheel; nothing is downloaded), upsampled to the model's input size, with
  a fixed stratified 20% held-out test split;
* a directory in ImageFolder layout, one sub-folder per class. If it has ``train/`` and ``val/`` (or ``test/``)
  sub-folders those are the splits; otherwise a stratified ``val_fraction`` of every class is held out with a fixed
  seed, so training and a later ``visattn eval`` see the same split.

Images are stored as uint8 (3, S, S) tensors, S = img_size / crop_pct; a training batch gets a random resized crop
and flip (``tasks/augment.py``), evaluation a centre crop of ``crop_pct``.

Files of an ImageFolder are checked when the folder is scanned (headers and chunks) and decoded when a batch needs
them. A file that passes the scan and still fails to decode (a JPEG truncated past its header) does not stop the
run: a dataset item carries the files it could not read (:class:`Unreadable`). In training the item is the next
readable file in dataset order instead (index i + 1, i + 2, ... wrapping), so every batch keeps its size and its
content depends only on the data, not on the number of processes or workers or on ``--resume``; in evaluation the
item has no image and the batch goes without it. The task counts them (see ``ClassificationTask``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import DataError
from ..image_io import IMAGE_EXTENSIONS, read_image

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "ClassificationData",
    "Unreadable",
    "load_classification_data",
    "read_image",
    "read_image_as_published",
    "map_folder_classes",
]

log = logging.getLogger("visattn")

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


@dataclass(frozen=True)
class Unreadable:
    """An image file that passed the folder scan but failed to decode when a batch needed it."""

    path: str
    reason: str


#: an item of a classification dataset: (uint8 (3, S, S) image or None if unreadable, label, files not read)
Item = tuple[Tensor | None, int, tuple[Unreadable, ...]]


class ImageTensorDataset(torch.utils.data.Dataset):
    """Images held in memory as one uint8 (N, 3, S, S) tensor."""

    def __init__(self, images: Tensor, labels: Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Item:
        return self.images[i], int(self.labels[i]), ()


class ImageFileDataset(torch.utils.data.Dataset):
    """Image files decoded on access (in DataLoader workers) and squashed to (3, size, size) uint8.

    Args:
        files, labels: the images and their class indices.
        size: the stored side S.
        substitute: training: an unreadable file's item is the next readable file's (index i + 1, i + 2, ...,
            wrapping; at most ``MAX_SUBSTITUTES`` tries); evaluation (False): its image is None.
    """

    #: consecutive unreadable files after which a training item gives up (the data is mostly broken)
    MAX_SUBSTITUTES = 32

    def __init__(self, files: Sequence[Path], labels: Sequence[int], size: int, *, substitute: bool = False):
        self.files, self.labels, self.size = list(files), torch.tensor(labels, dtype=torch.long), size
        self.substitute = substitute

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        failed: list[Unreadable] = []
        for j in range(i, i + (min(self.MAX_SUBSTITUTES, len(self.files)) if self.substitute else 1)):
            j %= len(self.files)
            try:
                return read_image(self.files[j], self.size), int(self.labels[j]), tuple(failed)
            except Exception as err:  # verified at scan time; a file can still be truncated past its header
                reason = str(err) if str(self.files[j]) in str(err) else f"{self.files[j]}: {err}"
                failed.append(Unreadable(str(self.files[j]), reason))
        if not self.substitute:
            return None, int(self.labels[i]), tuple(failed)
        names = ", ".join(f.path for f in failed[:3])
        raise DataError(f"{len(failed)} consecutive image files could not be decoded ({names}, ...); check the data")


_INTERPOLATIONS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "lanczos": 1, "box": 4, "hamming": 5}  # PIL codes


def read_image_as_published(path: str | os.PathLike, size: int, *, crop_pct: float, crop_mode: str = "center",
                            interpolation: str = "bicubic") -> Tensor:
    """Decode an image file with the evaluation preprocessing published with pretrained weights (timm's
    ``transforms_imagenet_eval``): resize to ``floor(size / crop_pct)`` (``center``: the shorter side, keeping the
    aspect ratio; ``squash``: both sides), then a centred ``size`` x ``size`` crop. Returns uint8 (3, size, size).
    """
    from PIL import Image

    if crop_mode not in ("center", "squash"):
        raise ValueError(f"crop_mode must be 'center' or 'squash', got {crop_mode!r}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {interpolation!r}")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    rgb = read_image(path)                                             # (3, H, W) uint8
    im = Image.fromarray(rgb.permute(1, 2, 0).numpy())
    scale = int(size / crop_pct)                                       # math.floor, as timm
    w, h = im.size
    if crop_mode == "squash":
        new_w, new_h = scale, scale
    elif w <= h:                                                       # torchvision Resize(int): the shorter side
        new_w, new_h = scale, int(scale * h / w)
    else:
        new_w, new_h = int(scale * w / h), scale
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), _INTERPOLATIONS[interpolation])
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # torchvision CenterCrop
    im = im.crop((left, top, left + size, top + size))
    data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).contiguous()      # (3, size, size)


class PublishedEvalDataset(torch.utils.data.Dataset):
    """Image files decoded on access with :func:`read_image_as_published` (already cropped to the model's size)."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], size: int, preprocessing: dict[str, Any]):
        self.files, self.labels, self.size = list(files), torch.tensor(labels, dtype=torch.long), size
        self.crop = {k: preprocessing[k] for k in ("crop_pct", "crop_mode", "interpolation")}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Item:
        try:
            image = read_image_as_published(self.files[i], self.size, **self.crop)
        except Exception as err:  # verified at scan time; a file can still be truncated past its header: evaluation
            reason = str(err) if str(self.files[i]) in str(err) else f"{self.files[i]}: {err}"   # leaves it out
            return None, int(self.labels[i]), (Unreadable(str(self.files[i]), reason),)
        return image, int(self.labels[i]), ()


def map_folder_classes(folders: Sequence[str], classes: Sequence[str], class_ids: Sequence[str] | None = None
                       ) -> list[int]:
    """The model's class index of each ImageFolder class folder, matched by class id (an ImageNet WordNet synset
    such as ``n01440764``), by the full label name (``tench, Tinca tinca``) or by its first name (``tench``),
    case-insensitively; a name two classes share matches neither.

    Raises:
        DataError: naming the folders that match no class, with examples of the names that would.
    """
    full: dict[str, list[int]] = {}
    first: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        full.setdefault(name.lower(), []).append(i)
        first.setdefault(name.split(",")[0].strip().lower(), []).append(i)
    # a name two classes share (ImageNet's two "crane"s, two "maillot"s) is ambiguous: only their ids match
    lookup = {name: idx[0] for name, idx in first.items() if len(idx) == 1}
    lookup.update({name: idx[0] for name, idx in full.items() if len(idx) == 1})
    lookup.update({cid.lower(): i for i, cid in enumerate(class_ids or [])})
    out, unknown = [], []
    for folder in folders:
        index = lookup.get(folder.lower())
        if index is None:
            unknown.append(folder)
        out.append(-1 if index is None else index)
    if unknown:
        examples = ", ".join(repr(n) for n in ([*(class_ids or [])[:2], *classes[:2]]))
        raise DataError(f"{len(unknown)} class folder(s) match none of the model's {len(classes)} classes: "
                        f"{', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''}; name each folder by a class "
                        f"id or label name, e.g. {examples} (`visattn list --pretrained` shows the label set)")
    return out


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
            train = ImageFileDataset(files, labels, stored, substitute=True)
            val = ImageFileDataset(val_files, val_labels, stored)
            record["split"] = f"train/ and {split_dirs[0].name}/"
        else:
            files, labels, classes, skipped = scan_image_folder(path)
            train_idx, val_idx = _stratified_split(torch.tensor(labels), val_fraction, split_seed)
            if len(val_idx) == 0:
                raise DataError(f"{path} has too few images per class to hold out a validation split; add images "
                                "or provide train/ and val/ sub-folders")
            train = ImageFileDataset([files[i] for i in train_idx], [labels[i] for i in train_idx], stored,
                                     substitute=True)
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
