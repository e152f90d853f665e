"""Restoration data: clean images for training crops and evaluation items, from the built-in photos or folders.

Data sources (``--data``):

* ``photos`` (built in): the colour photographs that ship inside the scikit-image wheel (nothing is downloaded);
  :data:`TRAIN_PHOTOS` are for training and :data:`EVAL_PHOTOS` - other scenes - are held out for evaluation.
* a folder of high-quality images (any depth of sub-folders), or one with ``train/`` and ``val/`` sub-folders.
  Without ``val/`` (and without ``--val-data``), ``val_fraction`` of the images is held out with a fixed seed.
* a paired folder: ``input/`` (degraded images, e.g. JPEGs or mosaics) and ``target/`` (their clean images) with the
  same file names (stems); training crops are cut at the same place in both (inputs the size of their targets), and
  a name found on one side only is an error listing them. ``train/`` and ``val/`` may each be such a pair of folders.
* ``--val-data``: a benchmark folder laid out like Set5 / Set14 / Urban100: ``HR/`` (or the images directly) and
  optionally the degraded inputs in one of the degradation's ``given_inputs`` folders (for x4 SR
  ``LR_bicubic/X4/``, ``LR/X4/``, ``LRbicx4/`` or ``LR/``), matched by file stem with or without an ``x<s>``
  suffix. Missing inputs are generated from the clean image.

Training samples are random crops of ``patch`` clean pixels (positions drawn once per run from the seed,
:class:`PatchDataset`); evaluation items are whole images (:class:`EvalImages`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..base import DataError
from ..image_io import IMAGE_EXTENSIONS, read_image_float

__all__ = ["EVAL_PHOTOS", "TRAIN_PHOTOS", "EvalImages", "PatchDataset", "RestorationData", "builtin_eval_items",
           "builtin_photos", "crop_items", "is_paired", "load_benchmark", "load_pairs", "load_restoration_data",
           "scan_images"]

log = logging.getLogger("visattn")

# Photographs and textures for training (grayscale ones are replicated to RGB for RGB models), other scenes held out.
TRAIN_PHOTOS = ("astronaut", "coffee", "motorcycle_left", "ihc", "retina", "hubble_deep_field", "brick", "grass",
                "gravel", "moon", "coins")
EVAL_PHOTOS = ("chelsea", "rocket", "camera")
_PHOTO_FILES = {"astronaut": "astronaut.png", "coffee": "coffee.png", "motorcycle_left": "motorcycle_left.png",
                "ihc": "ihc.png", "retina": "retina.jpg", "hubble_deep_field": "hubble_deep_field.jpg",
                "brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png", "moon": "moon.png",
                "coins": "coins.png", "chelsea": "chelsea.png", "rocket": "rocket.jpg", "camera": "camera.png"}
#: training crops per image and epoch
PATCHES_PER_IMAGE = 100


def _verify(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types for bad files
        return f"{type(err).__name__}: {err}"
    return None


def scan_images(root: Path) -> list[Path]:
    """Readable image files under ``root`` (recursively, sorted); bad or non-image files are skipped with a warning."""
    if not root.exists():
        raise DataError(f"data directory not found: {root}")
    if root.is_file():
        raise DataError(f"expected a folder of images, got a file: {root}")
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        reason = _verify(path)
        if reason:
            log.warning("skipping %s: %s", path, reason)
            continue
        files.append(path)
    return files


def _skimage_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in 'photos' ship inside scikit-image: pip install 'visattn[data]'")
    return Path(spec.submodule_search_locations[0]) / "data"


def builtin_photos(names: Sequence[str], channels: int) -> list[tuple[str, Tensor]]:
    """scikit-image sample photographs as uint8 (C, H, W) tensors."""
    folder = _skimage_data_dir()
    out = []
    for name in names:
        x, _ = read_image_float(folder / _PHOTO_FILES[name], channels)
        out.append((name, (x * 255).round().to(torch.uint8)))
    return out


def builtin_eval_items(scale: int, channels: int) -> list[tuple[str, Tensor, None]]:
    """The built-in evaluation photos as (name, HR cropped to a multiple of ``scale``, no given LR) items."""
    return [(n, _mod_crop(x, scale), None) for n, x in builtin_photos(EVAL_PHOTOS, channels)]


def _load_uint8(files: Sequence[Path], channels: int) -> list[tuple[str, Tensor]]:
    out = []
    for path in files:
        try:
            x, _ = read_image_float(path, channels)
        except Exception as err:  # verified at scan time; a file can still be truncated past its header
            log.warning("skipping %s: %s", path, err)
            continue
        out.append((path.stem, (x * 255).round().to(torch.uint8)))
    return out


def _find_input_folder(root: Path, candidates: Sequence[str]) -> Path | None:
    for rel in candidates:
        if (root / rel).is_dir():
            return root / rel
    return None


def is_paired(root: Path) -> bool:
    """Whether ``root`` holds a paired dataset: ``input/`` and ``target/`` sub-folders."""
    return (root / "input").is_dir() and (root / "target").is_dir()


def load_pairs(root: Path, channels: int, *, scale: int = 1) -> list[tuple[str, Tensor, Tensor]]:
    """(name, target uint8, input uint8) of a paired folder: ``input/`` and ``target/`` holding the same file names
    (matched by stem, so ``a.jpg`` pairs with ``a.png``); each input is ``1 / scale`` of its target's size.

    Raises:
        DataError: names found on one side only (listed), or an input of the wrong size.
    """
    inputs = {p.stem: p for p in scan_images(root / "input")}
    targets = {p.stem: p for p in scan_images(root / "target")}
    only_in, only_tg = sorted(set(inputs) - set(targets)), sorted(set(targets) - set(inputs))
    if only_in or only_tg:
        raise DataError(f"{root}: input/ and target/ must hold the same file names; only in input/: "
                        f"{', '.join(only_in) or '-'}; only in target/: {', '.join(only_tg) or '-'}")
    if not inputs:
        raise DataError(f"{root}: no image pairs in input/ and target/")
    out = []
    for name in sorted(inputs):
        loaded = _load_uint8([targets[name], inputs[name]], channels)
        if len(loaded) != 2:
            raise DataError(f"{root}: cannot read the pair {name}")
        (_, tg), (_, lq) = loaded
        want = (tg.shape[-2] // scale, tg.shape[-1] // scale)
        if scale * want[0] != tg.shape[-2] or scale * want[1] != tg.shape[-1] or tuple(lq.shape[-2:]) != want:
            raise DataError(f"{root}: input {name} is {tuple(lq.shape[-2:])} but its target "
                            f"{tuple(tg.shape[-2:])} needs {want}")
        out.append((name, tg, lq))
    return out


def load_benchmark(root: Path, channels: int, *, scale: int = 1,
                   input_dirs: Sequence[str] = ()) -> list[tuple[str, Tensor, Tensor | None]]:
    """(name, clean uint8, given input uint8 or None) of a Set5-style folder.

    Args:
        root: the benchmark folder (``HR/`` or the images directly).
        channels: convert images to this many channels.
        scale: clean / input size ratio; clean images are cropped to a multiple of it, and a given input must be
            exactly ``1 / scale`` of its clean image (otherwise it is generated, with a warning).
        input_dirs: sub-folders that may hold the given inputs (the degradation's ``given_inputs``).

    A paired folder (``input/`` + ``target/``, :func:`load_pairs`) gives every input.
    """
    if is_paired(root):
        return [(name, _mod_crop(tg, scale), lq) for name, tg, lq in load_pairs(root, channels, scale=scale)]
    hr_dir = root / "HR" if (root / "HR").is_dir() else root
    lr_dir = _find_input_folder(root, input_dirs)
    hr_files = [p for p in scan_images(hr_dir) if lr_dir is None or lr_dir not in p.parents]
    if hr_dir == root:
        hr_files = [p for p in hr_files if p.parent == root]
    if not hr_files:
        raise DataError(f"no HR images in {hr_dir}")
    lr_files = {}
    if lr_dir is not None:
        for p in scan_images(lr_dir):
            stem = p.stem
            for suffix in (f"x{scale}", f"X{scale}", f"_x{scale}", f"_X{scale}") if scale > 1 else ():
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
            lr_files[stem] = p
    out = []
    for name, hr in _load_uint8(hr_files, channels):
        lr = None
        if name in lr_files:                       # an unreadable given input is generated instead
            lr = next((x for _, x in _load_uint8([lr_files[name]], channels)), None)
        hr = _mod_crop(hr, scale)
        if lr is not None and tuple(lr.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
            log.warning("%s: given input %s does not match the clean %s / %d; generating it", name,
                        tuple(lr.shape[-2:]), tuple(hr.shape[-2:]), scale)
            lr = None
        out.append((name, hr, lr))
    return out


def _mod_crop(x: Tensor, scale: int) -> Tensor:
    H, W = x.shape[-2:]
    return x[..., : H - H % scale, : W - W % scale]


def crop_items(items: Sequence[tuple[str, Tensor, Tensor | None]], multiple: int,
               scale: int = 1) -> list[tuple[str, Tensor, Tensor | None]]:
    """Evaluation items with their clean images cropped to a multiple of ``multiple`` (bottom / right) and their
    given inputs to the matching ``1 / scale`` size (a Bayer mosaic needs even sides)."""
    if multiple <= 1:
        return list(items)
    out = []
    for name, clean, given in items:
        clean = _mod_crop(clean, multiple)
        if given is not None:
            given = given[..., : clean.shape[-2] // scale, : clean.shape[-1] // scale]
        out.append((name, clean, given))
    return out


# --- datasets ------------------------------------------------------------------------------------------------------

class PatchDataset(torch.utils.data.Dataset):
    """``count`` HR crops of ``patch`` pixels from in-memory images, positions drawn once from ``seed``.

    Item: (uint8 (C, patch, patch), image index). Every image gets the same share of crops (weighting by area would
    let one large, mostly flat image - retina, the Hubble field - dominate the photos). ``align``: corners on a grid
    of that step (paired mosaics keep their Bayer phase).
    """

    def __init__(self, images: Sequence[Tensor], patch: int, count: int, seed: int, *, align: int = 1):
        self.images, self.patch = list(images), patch
        g = torch.Generator().manual_seed(seed)
        self.which = torch.randint(0, len(self.images), (count,), generator=g)
        u = torch.rand(count, 2, generator=g, dtype=torch.float64)
        sizes = torch.tensor([list(self.images[i].shape[-2:]) for i in self.which.tolist()], dtype=torch.float64)
        corners = (u * (sizes - patch + 1)).floor().long()                  # (count, 2) top-left corners
        self.corners = corners - corners % align

    def __len__(self) -> int:
        return len(self.which)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        k = int(self.which[i])
        y, x = self.corners[i].tolist()
        return self.images[k][:, y:y + self.patch, x:x + self.patch], k


class EvalImages(torch.utils.data.Dataset):
    """Evaluation images: (name, clean uint8, given degraded input uint8 or None) per item."""

    def __init__(self, items: Sequence[tuple[str, Tensor, Tensor | None]]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, Tensor, Tensor | None]:
        return self.items[i]

@dataclass
class RestorationData:
    """Training images (name, clean uint8) and evaluation items (name, clean uint8, given input or None)."""

    train: list[tuple[str, Tensor]]
    val: list[tuple[str, Tensor, Tensor | None]]
    source: dict[str, Any]


def load_restoration_data(source: str, *, scale: int, channels: int, patch: int, input_dirs: Sequence[str] = (),
                          val_data: str | None = None, val_fraction: float = 0.1, split_seed: int = 0,
                          train_limit: int | None = None, val_limit: int | None = None) -> RestorationData:
    """Training images and evaluation items of a built-in name or a folder (see the module docstring).

    Args:
        source: "photos" or a folder.
        scale: clean / input size ratio (evaluation images are cropped to a multiple of it).
        channels: convert images to this many channels.
        patch: the clean training crop side (smaller training images are skipped).
        input_dirs: benchmark sub-folders of given degraded inputs (the degradation's ``given_inputs``).
        val_data: a benchmark folder for evaluation instead of the held-out images.
        val_fraction, split_seed: the held-out share of a folder without ``val/``, and its seed.
        train_limit, val_limit: keep only the first N training images / evaluation items.
    """
    record: dict[str, Any] = {"source": source, "val_data": val_data, "val_fraction": val_fraction,
                              "split_seed": split_seed}
    path = Path(source)
    train_root = path / "train" if is_paired(path / "train") else path
    if is_paired(train_root):
        if scale != 1:
            raise DataError(f"{source}: paired training folders need a task that keeps the image size (scale "
                            f"{scale})")
        pairs = load_pairs(train_root, channels)
        val_dirs = [path / n for n in ("val", "validation", "test") if (path / n).is_dir()]
        if train_root != path and val_dirs:
            val = load_benchmark(val_dirs[0], channels, scale=scale, input_dirs=input_dirs)
        elif val_data is None:
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(split_seed)).tolist()
            k = max(1, round(val_fraction * len(pairs))) if len(pairs) > 1 else 0
            held = set(order[:k])
            val = [p for i, p in enumerate(pairs) if i in held]
            pairs = [p for i, p in enumerate(pairs) if i not in held]
        else:
            val = []
        # input and target stacked on channels: (2C, H, W), cropped together
        train = [(n, torch.cat([lq, tg])) for n, tg, lq in pairs]
        record["paired"] = True
    elif source == "photos" and not path.exists():
        train = builtin_photos(TRAIN_PHOTOS, channels)
        val = builtin_eval_items(scale, channels)
        record.update(builtin=True, train=list(TRAIN_PHOTOS), val=list(EVAL_PHOTOS))
    else:
        if not any(sep in source for sep in ("/", os.sep)) and not path.exists():
            raise DataError(f"data folder not found: {source} (built-in data: photos)")
        train_dir = path / "train" if (path / "train").is_dir() else path
        files = scan_images(train_dir)
        val = []
        val_dirs = [path / n for n in ("val", "validation", "test") if (path / n).is_dir()]
        if train_dir != path and val_dirs:
            files = [p for p in files if not any(v in p.parents for v in val_dirs)]
            val = load_benchmark(val_dirs[0], channels, scale=scale, input_dirs=input_dirs)
        elif val_data is None:
            order = torch.randperm(len(files), generator=torch.Generator().manual_seed(split_seed)).tolist()
            k = max(1, round(val_fraction * len(files))) if len(files) > 1 else 0
            held = sorted(order[:k])
            val = [(n, _mod_crop(x, scale), None) for n, x in _load_uint8([files[i] for i in held], channels)]
            files = [f for i, f in enumerate(files) if i not in set(held)]
        train = _load_uint8(files, channels)
    if val_data is not None:
        val = load_benchmark(Path(val_data), channels, scale=scale, input_dirs=input_dirs)
    small = [n for n, x in train if min(x.shape[-2:]) < patch]
    if small:
        log.warning("skipping %d training image(s) smaller than the %d px HR patch: %s", len(small), patch,
                    ", ".join(small[:5]))
        train = [(n, x) for n, x in train if min(x.shape[-2:]) >= patch]
    if train_limit is not None:
        train = train[:train_limit]
    if val_limit is not None:
        val = val[:val_limit]
    if not train:
        raise DataError(f"{source}: no training image of at least {patch}x{patch} pixels")
    if not val:
        raise DataError(f"{source}: no evaluation images (add a val/ folder or pass --val-data)")
    return RestorationData(train=train, val=val, source=record)
