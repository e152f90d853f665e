"""Few-shot data: volumes of 2-D slices, NIfTI reading, the built-in MNI152 volumes and directory scans.

Data sources (``--data``):

* ``mni152`` (built in): the MNI152 2009a T1 template and its grey/white-matter probability maps, which ship inside
  the nilearn wheel (read with nibabel; nothing is downloaded, nilearn itself is never imported). Five classes are
  derived from the maps at 2 mm: ``white_matter`` (WM > 0.5), ``cortex`` (GM > 0.5 outside the two regions below),
  ``cerebellum`` (brain below z = -20 mm, behind y = -40 mm), ``ventricles`` (CSF deep inside the brain, between
  the maps) and ``deep_grey_matter`` (GM > 0.5 in the basal ganglia / thalamus box). These are threshold-and-box
  regions, not an atlas. Eight volumes: the template itself and seven pseudo-subjects (random affine + smooth
  elastic warp, gamma, bias field and noise, fixed seeds). Volumes 0, 5, 6, 7 are the test volumes (0 is the
  support volume), 1-4 the training volumes; ``deep_grey_matter`` is the held-out test class.
* a directory in the layout of SSL-ALPNet / ADNet / Q-Net / CAT-Net preprocessing: ``image_<id>.nii.gz`` and
  ``label_<id>.nii.gz`` (integer labels), optionally ``supervoxel_<id>.nii.gz`` (pseudo-labels for
  self-supervised training) and ``classes.json`` (``{"1": "liver", ...}``). 2-D slices are cut along the last
  array axis. One fifth of the volumes (``fold`` 0-4) is the test split.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import DataError

__all__ = ["BUILTIN", "MNI152_CLASSES", "FewShotData", "Volume", "load_fewshot_data", "load_mni152", "read_nifti",
           "zscore"]

BUILTIN = ("mni152",)
MNI152_CLASSES = ("white_matter", "cortex", "cerebellum", "ventricles", "deep_grey_matter")
MNI152_TEST_CLASSES = ("deep_grey_matter",)
_MNI152_TEST_VOLUMES = (0, 5, 6, 7)
_MNI152_FILES = {n: f"mni_icbm152_{n}_tal_nlin_sym_09a_converted.nii.gz" for n in ("t1", "gm", "wm")}


@dataclass
class Volume:
    """One volume as 2-D slices: image (D, S, S) float32 (z-scored), label (D, S, S) uint8 class ids."""

    name: str
    image: Tensor
    label: Tensor
    supervoxel: Tensor | None = None

    def slices_with(self, class_id: int, min_pixels: int = 1) -> Tensor:
        """Indices of the slices holding at least ``min_pixels`` pixels of ``class_id``."""
        return ((self.label == class_id).flatten(1).sum(1) >= min_pixels).nonzero().flatten()


@dataclass
class FewShotData:
    """Training and test volumes, the class ids and which classes train / are held out; ``source`` is recorded in
    ``model.json`` (data source, fold, slice size, class split)."""

    train: list[Volume]
    test: list[Volume]
    classes: dict[str, int]           # name -> label id
    train_classes: list[str]
    test_classes: list[str]
    source: dict[str, Any]


# --- reading volumes -----------------------------------------------------------------------------------------------

def _nibabel() -> Any:
    try:
        import nibabel
    except ImportError:
        raise DataError("reading NIfTI volumes needs nibabel: pip install 'visattn[data]' (or pip install "
                        "nibabel)") from None
    return nibabel


def read_nifti(path: str | os.PathLike) -> Tensor:
    """A NIfTI file's voxel array as a float32 tensor in its stored axis order."""
    nib = _nibabel()
    try:
        image = nib.load(str(path))
        import numpy as np

        return torch.from_numpy(np.asarray(image.dataobj, dtype=np.float32).copy())
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except Exception as err:  # nibabel raises ImageFileError, EOFError, zlib errors for damaged files
        raise DataError(f"cannot read {path} as NIfTI ({type(err).__name__}: {err})") from err


def zscore(x: Tensor) -> Tensor:
    """Standardise by the mean and std of the foreground (voxels above the minimum: MRI background is ~0)."""
    lo, hi = float(x.min()), float(x.max())
    fg = x[x > lo + 1e-3 * (hi - lo)]
    fg = fg if fg.numel() > 1 else x.flatten()
    return (x - fg.mean()) / (fg.std() + 1e-6)


def _resize_slices(image: Tensor, label: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """(D, H, W) image (bilinear) and integer label (nearest) -> (D, size, size)."""
    img = F.interpolate(image[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    lab = F.interpolate(label[:, None].float(), size=(size, size), mode="nearest")[:, 0]
    return img, lab.to(torch.uint8)


def _nilearn_data_dir() -> Path:
    # Locate nilearn's data folder without importing nilearn (slow, and we only read three files).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the built-in 'mni152' data ships inside nilearn: pip install 'visattn[data]' (or pip "
                        "install nilearn nibabel)")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def _dilate(mask: Tensor, r: int) -> Tensor:
    """Dilation by a (2r+1)^3 cube, as three 1-D max pools (a cube's max is separable; 40x faster than 3-D)."""
    x = mask[None, None].float()
    for kernel in ((2 * r + 1, 1, 1), (1, 2 * r + 1, 1), (1, 1, 2 * r + 1)):
        x = F.max_pool3d(x, kernel, 1, tuple(k // 2 for k in kernel))
    return x[0, 0] > 0


def _erode(mask: Tensor, r: int) -> Tensor:
    return ~_dilate(~mask, r)


def _mni152_template() -> tuple[Tensor, Tensor]:
    """T1 (X, Y, Z) in [0, 1] at 2 mm and the label volume of :data:`MNI152_CLASSES` (ids 1..5)."""
    folder = _nilearn_data_dir()
    maps = {}
    for key, name in _MNI152_FILES.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path} is missing: this nilearn version does not ship the MNI152 2009a maps")
        maps[key] = F.avg_pool3d(read_nifti(path)[None, None] / 255, 2)[0, 0]   # 1 mm -> 2 mm
    t1, gm, wm = maps["t1"], maps["gm"], maps["wm"]
    X, Y, Z = t1.shape
    # World coordinates (mm) of the 2 mm voxel centres; the files' affine is diag(1) with origin (-98, -134, -72).
    x, y, z = torch.meshgrid(torch.arange(X) * 2 - 97.5, torch.arange(Y) * 2 - 133.5, torch.arange(Z) * 2 - 71.5,
                             indexing="ij")
    head = t1 > 0.02
    brain = (gm + wm) > 0.5
    cerebellum = brain & (z < -20) & (y < -40)
    ventricles = _erode(head, 5) & ((gm + wm) < 0.35) & (x.abs() < 30) & (y > -45) & (y < 30) & (z > -8) & (z < 30)
    deep = ((gm > 0.5) & _erode(head, 6) & (x.abs() < 32) & (x.abs() > 2) & (y > -38) & (y < 24) & (z > -14)
            & (z < 22))
    cortex = (gm > 0.5) & ~deep & ~cerebellum
    white = (wm > 0.5) & ~cerebellum
    label = torch.zeros(t1.shape, dtype=torch.uint8)
    for i, region in enumerate((white, cortex, cerebellum, ventricles, deep), start=1):
        label[region] = i
    return t1, label


def _pseudo_subject(t1: Tensor, label: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """A random affine + smooth elastic warp of the template, with gamma, a bias field and noise."""
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g)

    angle = float(u(-0.14, 0.14, 1))                                   # about +-8 degrees around the z axis
    scale = u(0.9, 1.1, 3)
    rot = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0],
                        [0.0, 0.0, 1.0]])
    theta = torch.cat([rot * scale[None], u(-0.05, 0.05, 3, 1)], dim=1)[None]  # (1, 3, 4)
    D = t1.permute(2, 1, 0)[None, None]                                # (1, 1, Z, Y, X): grid_sample's (D, H, W)
    grid = F.affine_grid(theta, list(D.shape), align_corners=False)   # (1, Z, Y, X, 3)
    coarse = torch.randn(1, 3, 4, 5, 4, generator=g) * 0.03            # elastic offsets, normalised units
    grid = grid + F.interpolate(coarse, size=D.shape[2:], mode="trilinear", align_corners=True).permute(0, 2, 3, 4, 1)
    image = F.grid_sample(D, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0, 0]
    lab = label.permute(2, 1, 0)[None, None].float()                   # (1, 1, Z, Y, X)
    new_label = F.grid_sample(lab, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    new_label = new_label.to(torch.uint8)
    bias = F.interpolate(torch.randn(1, 1, 3, 3, 3, generator=g) * 0.1, size=D.shape[2:], mode="trilinear",
                         align_corners=True)[0, 0].exp()
    image = image.clamp_min(0) ** float(u(0.7, 1.4, 1)) * bias
    image = (image + 0.02 * torch.randn(image.shape, generator=g) * (image > 0.02)).clamp_min(0)  # background stays 0
    return image.permute(2, 1, 0).contiguous(), new_label.permute(2, 1, 0).contiguous()  # back to (X, Y, Z)


def _axial_slices(t1: Tensor, label: Tensor, box: tuple[slice, slice], size: int) -> tuple[Tensor, Tensor]:
    """(X, Y, Z) -> (Z, size, size) axial slices of the head box, anterior up, z-scored."""
    image = t1[box[0], box[1]].permute(2, 1, 0).flip(1)                # (Z, Y, X), row 0 = anterior
    lab = label[box[0], box[1]].permute(2, 1, 0).flip(1)
    image, lab = _resize_slices(image.contiguous(), lab.contiguous(), size)
    return zscore(image), lab


def load_mni152(img_size: int = 96, num_volumes: int = 8) -> list[Volume]:
    """The built-in volumes: the template (volume 0) and ``num_volumes - 1`` seeded pseudo-subjects."""
    t1, label = _mni152_template()
    nz = (t1 > 0.02).nonzero()
    lo, hi = nz.amin(0), nz.amax(0)
    side = int(max(hi[0] - lo[0], hi[1] - lo[1])) + 9                  # a square in-plane box with a margin
    box = tuple(slice(max(0, int(c) - side // 2), int(c) - side // 2 + side)
                for c in ((lo[:2] + hi[:2]) // 2))
    volumes = []
    for i in range(num_volumes):
        img, lab = (t1, label) if i == 0 else _pseudo_subject(t1, label, seed=1000 + i)
        pad = [0, 0, side, side, side, side]                           # the box may reach past the volume edge
        img, lab = F.pad(img, pad), F.pad(lab, pad)
        shifted = tuple(slice(s.start + side, s.stop + side) for s in box)
        image, slices = _axial_slices(img, lab, shifted, img_size)
        volumes.append(Volume(name=f"mni152_{i}", image=image, label=slices))
    return volumes


def _scan_nifti_dir(root: Path) -> list[tuple[str, Path, Path, Path | None]]:
    if not root.is_dir():
        raise DataError(f"data directory not found: {root} (built-in data: {', '.join(BUILTIN)})")
    found = []
    for image in sorted(root.glob("image_*.nii*")):
        key = re.sub(r"\.nii(\.gz)?$", "", image.name)[len("image_"):]
        label = next(iter(sorted(root.glob(f"label_{key}.nii*"))), None)
        if label is None:
            raise DataError(f"{image} has no matching label_{key}.nii.gz in {root}")
        sv = next(iter(sorted(root.glob(f"supervoxel_{key}.nii*"))), None)
        found.append((key, image, label, sv))
    if not found:
        raise DataError(f"no image_*.nii.gz volumes in {root} (expected image_<id>.nii.gz + label_<id>.nii.gz)")
    return found


def _read_volume(key: str, image_path: Path, label_path: Path, sv_path: Path | None, size: int) -> Volume:
    image, label = read_nifti(image_path), read_nifti(label_path)
    if image.shape != label.shape:
        raise DataError(f"{image_path.name} is {tuple(image.shape)} but {label_path.name} is {tuple(label.shape)}: "
                        "image and label volumes must have the same size")
    if image.ndim != 3:
        raise DataError(f"{image_path} is {image.ndim}-D; expected a 3-D volume")
    if bool((label != label.round()).any()) or float(label.min()) < 0 or float(label.max()) > 255:
        raise DataError(f"{label_path} must hold integer class ids 0..255")
    image, label = image.permute(2, 0, 1).contiguous(), label.permute(2, 0, 1).contiguous()  # slices on axis 0
    image, lab = _resize_slices(zscore(image), label.to(torch.uint8), size)
    supervoxel = None
    if sv_path is not None:
        sv = read_nifti(sv_path).permute(2, 0, 1).contiguous()
        if sv.shape != label.shape:
            raise DataError(f"{sv_path.name} does not match the size of {label_path.name}")
        supervoxel = F.interpolate(sv[:, None], size=(size, size), mode="nearest")[:, 0].to(torch.int32)
    return Volume(name=key, image=image, label=lab, supervoxel=supervoxel)


def load_fewshot_data(source: str, *, img_size: int | None = None, train_classes: Sequence[str] | None = None,
                      test_classes: Sequence[str] | None = None, fold: int = 0) -> FewShotData:
    """Volumes split into train / test volumes, with training and held-out test classes.

    Args:
        source: ``mni152`` or a directory of ``image_*.nii.gz`` / ``label_*.nii.gz`` volumes.
        img_size: slice size (default 96 for mni152, 256 for directories, SSL-ALPNet's).
        train_classes, test_classes: class names (default: mni152's split; for a directory the last class is the
            test class and the others train).
        fold: which fifth of a directory's volumes is the test split (0-4).
    """
    if source in BUILTIN and not Path(source).exists():
        size = img_size or 96
        volumes = load_mni152(size)
        classes = {n: i for i, n in enumerate(MNI152_CLASSES, start=1)}
        test = [volumes[i] for i in _MNI152_TEST_VOLUMES]
        train = [v for i, v in enumerate(volumes) if i not in _MNI152_TEST_VOLUMES]
        default_test = list(MNI152_TEST_CLASSES)
        record: dict[str, Any] = {"source": source, "builtin": True}
    else:
        root = Path(source)
        size = img_size or 256
        entries = _scan_nifti_dir(root)
        volumes = [_read_volume(*entry, size) for entry in entries]
        names_file = root / "classes.json"
        if names_file.is_file():
            classes = {str(n): int(i) for i, n in json.loads(names_file.read_text()).items()}
        else:
            ids = sorted({int(i) for v in volumes for i in v.label.unique().tolist()} - {0})
            classes = {f"label_{i}": i for i in ids}
        if not 0 <= fold < 5:
            raise DataError(f"--fold must be 0..4, got {fold}")
        n_test = max(1, math.ceil(len(volumes) / 5))
        if len(volumes) < 2 or len(volumes) - n_test < 1:
            raise DataError(f"{root} has {len(volumes)} volume(s); few-shot training and testing need at least 3")
        start = (fold * n_test) % len(volumes)
        test_idx = {(start + i) % len(volumes) for i in range(n_test)}
        test = [v for i, v in enumerate(volumes) if i in test_idx]
        train = [v for i, v in enumerate(volumes) if i not in test_idx]
        default_test = [list(classes)[-1]]
        record = {"source": str(root), "fold": fold}
    test_classes = list(test_classes or default_test)
    train_classes = list(train_classes or [c for c in classes if c not in test_classes])
    for name in (*train_classes, *test_classes):
        if name not in classes:
            raise DataError(f"unknown class {name!r}; the data has {', '.join(classes)}")
    if set(train_classes) & set(test_classes):
        raise DataError(f"classes {sorted(set(train_classes) & set(test_classes))} are both trained and held out")
    record.update(img_size=size, train_classes=train_classes, test_classes=test_classes)
    return FewShotData(train=train, test=test, classes=classes, train_classes=train_classes,
                       test_classes=test_classes, source=record)
