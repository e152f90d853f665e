"""Restoration data: clean images for training crops and evaluation items, from the built-in photos or folders, and
paired folders (a degraded input and its clean target per file name) for every restoration task.

Data sources (``--data``):

* ``photos`` (built in): the colour photographs that ship inside the scikit-image wheel (nothing is downloaded);
  :data:`TRAIN_PHOTOS` are for training and :data:`EVAL_PHOTOS` - other scenes - are held out for evaluation.
* a folder of high-quality images (any depth of sub-folders), or one with ``train/`` and ``val/`` sub-folders.
  Without ``val/`` (and without ``--val-data``), ``val_fraction`` of the images is held out with a fixed seed.
* paired folders, found at any depth below the given folder (:func:`find_pair_groups`): a folder holding
  ``target/`` (or ``sharp/``, ``gt/``) beside ``input/`` (or ``blur/``, ``inputC/``, ``source/``) - a JPEG / mosaic
  pair folder, GoPro's ``train/GOPR0372_07_00/{blur,sharp}/``, Restormer's ``test/GoPro/{input,target}/``, RealBlur,
  HIDE, DPDD's ``<split>_c/{source,target}/``; for dual-pixel models (2 input views) ``inputL/`` + ``inputR/``
  beside ``target/`` (Restormer's DPDD layout) or DPDD's own ``<split>_c/target/`` with the views in
  ``<split>_l/source/`` and ``<split>_r/source/``. Files pair by their path inside the input and target folders
  without the extension (``a.jpg`` pairs with ``a.png``); a name present on one side only is an error listing them,
  and so is an input whose size is not its target's (``1 / scale`` of it). Folders whose path (below the given one)
  has a part starting with ``train`` hold training pairs, ``val`` / ``test`` ones evaluation pairs; with no such
  split a fixed share is held out (a ``val/`` folder of clean images beside paired ``train/`` folders also serves).
  Training crops are cut at the same place in input and target: the two are stacked on channels as one image.
* ``--val-data``: paired folders as above, or a benchmark folder laid out like Set5 / Set14 / Urban100: ``HR/`` (or
  the images directly) and optionally the degraded inputs in one of the degradation's ``given_inputs`` folders (for
  x4 SR ``LR_bicubic/X4/``, ``LR/X4/``, ``LRbicx4/`` or ``LR/``), matched by file stem with or without an ``x<s>``
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

__all__ = ["EVAL_PHOTOS", "TRAIN_PHOTOS", "EvalImages", "PairGroup", "PatchDataset", "RestorationData",
           "builtin_eval_items", "builtin_photos", "crop_items", "find_pair_groups", "load_benchmark", "load_pairs",
           "load_restoration_data", "match_pairs", "read_pairs", "scan_images"]

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


# --- paired folders ----------------------------------------------------------------------------------------------

#: a folder of clean targets, and beside it the folder of degraded inputs (the first found) or of dual-pixel views
TARGET_DIRS = ("target", "sharp", "gt")
INPUT_DIRS = ("input", "blur", "inputC", "source")
DUAL_DIRS = ("inputL", "inputR")
#: sub-folders of a data folder that hold its evaluation images
VAL_DIRS = ("val", "validation", "test")


@dataclass(frozen=True)
class PairGroup:
    """One folder of pairs: the target folder and the input folder(s) (one, or one per view: left and right)."""

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
    """The paired folders under ``root`` (itself included) for 1 input view or 2 (dual-pixel), sorted; none if
    ``root`` is not a folder."""
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
    # readable images by their path inside ``folder`` without the extension
    return {str(p.relative_to(folder).with_suffix("")): p for p in scan_images(folder)}


def _listed(names: list[str]) -> str:
    return (", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")) or "none"


def match_pairs(groups: Sequence[PairGroup], *, root: Path | None = None) -> list[tuple[str, Path, tuple[Path, ...]]]:
    """(name, target file, input file per view) of every pair in ``groups``, in order; names are the file's path
    without the extension, prefixed with its folder's path below ``root`` when that is not ``root`` itself.

    Raises:
        DataError: names found on one side only (listed, with both folders).
    """
    out = []
    for g in groups:
        targets = _keyed(g.target)
        inputs = [_keyed(folder) for folder in g.inputs]
        for folder, found in zip(g.inputs, inputs):
            only_in, only_t = sorted(set(found) - set(targets)), sorted(set(targets) - set(found))
            if only_in or only_t:
                raise DataError(f"{folder} and {g.target} must hold the same file names (pairs match by name "
                                f"without the extension): only in {folder.name}/: {_listed(only_in)}; only in "
                                f"{g.target.name}/: {_listed(only_t)}")
        prefix = g.target.parent.relative_to(root) if root is not None and g.target.parent != root else None
        for key in sorted(targets):
            name = f"{prefix.as_posix()}/{key}" if prefix is not None else key
            out.append((name, targets[key], tuple(found[key] for found in inputs)))
    return out


def read_pairs(matched: Sequence[tuple[str, Path, tuple[Path, ...]]], channels: int = 3, *,
               scale: int = 1) -> list[tuple[str, Tensor, Tensor]]:
    """(name, target uint8 (C, H, W), input uint8 (C x views, H / scale, W / scale)) of :func:`match_pairs` entries.

    Raises:
        DataError: an unreadable file, or an input that is not ``1 / scale`` of its target's size.
    """
    out = []
    for name, target, inputs in matched:
        loaded = _load_uint8([target, *inputs], channels)
        if len(loaded) != 1 + len(inputs):
            raise DataError(f"cannot read the pair {name} ({target} and {', '.join(map(str, inputs))})")
        clean, views = loaded[0][1], [x for _, x in loaded[1:]]
        H, W = clean.shape[-2:]
        want = (H // scale, W // scale)
        for path, v in zip(inputs, views):
            if tuple(v.shape[-2:]) != want or (H % scale, W % scale) != (0, 0):
                which = "differs from its target's" if scale == 1 else f"is not 1 / {scale} of its target's"
                raise DataError(f"{path}: input size {tuple(v.shape[-2:])} {which} {(H, W)}")
        out.append((name, clean, torch.cat(views)))                     # input (C x views, h, w): views stacked
    return out


def load_pairs(groups: Sequence[PairGroup], channels: int = 3, *, scale: int = 1,
               root: Path | None = None) -> list[tuple[str, Tensor, Tensor]]:
    """(name, target uint8, input uint8) of every pair in ``groups``: :func:`match_pairs`, then :func:`read_pairs`."""
    return read_pairs(match_pairs(groups, root=root), channels, scale=scale)


def _hold_out(items: list, fraction: float, seed: int) -> tuple[list, list]:
    # (kept, held out): a share ``fraction`` (at least one of two or more items) drawn with ``seed``, order kept
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    k = max(1, round(fraction * len(items))) if len(items) > 1 else 0
    held = set(order[:k])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def load_benchmark(root: Path, channels: int, *, scale: int = 1, input_dirs: Sequence[str] = (),
                   views: int = 1) -> list[tuple[str, Tensor, Tensor | None]]:
    """(name, clean uint8, given input uint8 or None) of an evaluation folder: paired folders (every input given),
    else a Set5-style folder.

    Args:
        root: the folder: paired folders at any depth (:func:`find_pair_groups`), or ``HR/`` (or the images
            directly) with optionally the given inputs in one of ``input_dirs``.
        channels: convert images to this many channels.
        scale: clean / input size ratio; clean images are cropped to a multiple of it, and a given input must be
            exactly ``1 / scale`` of its clean image (a Set5-style input that is not is generated, with a warning;
            a paired one is an error).
        input_dirs: sub-folders that may hold the given inputs (the degradation's ``given_inputs``).
        views: input views per pair (2: dual-pixel left and right).
    """
    groups = find_pair_groups(root, views)
    if groups:
        return list(load_pairs(groups, channels, scale=scale, root=root))
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
                          views: int = 1, val_data: str | None = None, val_fraction: float = 0.1,
                          split_seed: int = 0, train_limit: int | None = None, val_limit: int | None = None,
                          eval_only: bool = False) -> RestorationData:
    """Training images and evaluation items of a built-in name or a folder (see the module docstring).

    Args:
        source: "photos" or a folder (of clean images, or of paired folders).
        scale: clean / input size ratio (evaluation images are cropped to a multiple of it).
        channels: convert images to this many channels.
        patch: the clean training crop side (smaller training images are skipped).
        input_dirs: benchmark sub-folders of given degraded inputs (the degradation's ``given_inputs``).
        views: input views per pair of paired folders (2: dual-pixel left and right).
        val_data: a benchmark or paired folder for evaluation instead of the held-out images.
        val_fraction, split_seed: the held-out share of a folder without ``val/``, and its seed.
        train_limit, val_limit: keep only the first N training images / evaluation items.
        eval_only: the evaluation items only (what a saved run was validated on): no training image is read.

    Training items of paired folders are the input view(s) and the target stacked on channels,
    (C x views + C, H, W), so that one crop cuts both at the same place.
    """
    record: dict[str, Any] = {"source": source, "val_data": val_data, "val_fraction": val_fraction,
                              "split_seed": split_seed}
    path = Path(source)
    # evaluation items of a run validated on --val-data: the training folder is not read at all
    groups = [] if eval_only and val_data is not None else find_pair_groups(path, views)
    train: list[tuple[str, Tensor]] = []
    val: list[tuple[str, Tensor, Tensor | None]] = []
    record["paired"] = bool(groups)
    if eval_only and val_data is not None:
        pass                                                            # val_data is read below
    elif groups:
        if scale != 1:
            raise DataError(f"{source}: paired training folders need a task that keeps the image size (scale "
                            f"{scale})")
        pairs = match_pairs([g for g in groups if g.split != "val"], root=path)
        val_groups = [g for g in groups if g.split == "val"]
        clean_val = [path / n for n in VAL_DIRS if (path / n).is_dir()]
        if val_groups and val_data is None:
            val = load_pairs(val_groups, channels, root=path)
        elif clean_val and val_data is None and any(g.split == "train" for g in groups):
            val = load_benchmark(clean_val[0], channels, scale=scale, input_dirs=input_dirs, views=views)  # clean
        elif val_data is None:
            pairs, held = _hold_out(pairs, val_fraction, split_seed)
            val = read_pairs(held, channels)
        if not eval_only:
            train = [(n, torch.cat([x, c])) for n, c, x in read_pairs(pairs, channels)]   # (C x views + C, H, W)
    elif source == "photos" and not path.exists():
        train = [] if eval_only else builtin_photos(TRAIN_PHOTOS, channels)
        val = builtin_eval_items(scale, channels)
        record.update(builtin=True, train=list(TRAIN_PHOTOS), val=list(EVAL_PHOTOS))
    else:
        if not any(sep in source for sep in ("/", os.sep)) and not path.exists():
            raise DataError(f"data folder not found: {source} (built-in data: photos)")
        train_dir = path / "train" if (path / "train").is_dir() else path
        files = scan_images(train_dir)
        val_dirs = [path / n for n in VAL_DIRS if (path / n).is_dir()]
        if train_dir != path and val_dirs:
            files = [p for p in files if not any(v in p.parents for v in val_dirs)]
            if val_data is None:
                val = load_benchmark(val_dirs[0], channels, scale=scale, input_dirs=input_dirs, views=views)
        elif val_data is None:
            files, held = _hold_out(files, val_fraction, split_seed)
            val = [(n, _mod_crop(x, scale), None) for n, x in _load_uint8(held, channels)]
        train = [] if eval_only else _load_uint8(files, channels)
    if val_data is not None:
        val = load_benchmark(Path(val_data), channels, scale=scale, input_dirs=input_dirs, views=views)
    small = [n for n, x in train if min(x.shape[-2:]) < patch]
    what = "pair" if groups else "image"
    if small:
        log.warning("skipping %d training %s(s) smaller than the %d px patch: %s", len(small), what, patch,
                    ", ".join(small[:5]))
        train = [(n, x) for n, x in train if min(x.shape[-2:]) >= patch]
    if train_limit is not None:
        train = train[:train_limit]
    if val_limit is not None:
        val = val[:val_limit]
    if not train and not eval_only:
        raise DataError(f"{source}: no training {what} of at least {patch}x{patch} pixels")
    if not val:
        raise DataError(f"{source}: no evaluation images (add a val/ or test/ folder or pass --val-data)")
    return RestorationData(train=train, val=val, source=record)
