"""Few-shot segmentation (1-way K-shot): volumes, episodes, the per-iteration loss, Dice and the evaluation protocol.

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

The evaluation follows SSL-ALPNet (Ouyang et al. 2020) and CAT-Net: for a test class, the slices of the support
volume that contain it are cut into ``n_part`` equal chunks and the middle slice of chunk i supports every query
slice in chunk i of each query volume's labelled range (relative positions match); Dice is computed in 3-D over
that range, averaged over query volumes, then over classes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DataError

__all__ = [
    "Volume",
    "FewShotData",
    "FewShotConfig",
    "load_fewshot_data",
    "load_mni152",
    "read_nifti",
    "sample_episodes",
    "sample_pseudo_episodes",
    "iteration_losses",
    "dice_score",
    "evaluate_fewshot",
    "train_fewshot",
    "read_mask",
    "predict_files",
]

log = logging.getLogger("visattn")

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


def _zscore(x: Tensor) -> Tensor:
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
    return _zscore(image), lab


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
    image, lab = _resize_slices(_zscore(image), label.to(torch.uint8), size)
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


# --- episodes --------------------------------------------------------------------------------------------------------

def _augment(images: Tensor, masks: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random affine (rotation +-10 deg, scale 0.9-1.1, shift +-5%) and gamma on (N, S, S) slices and masks."""
    N = images.shape[0]
    angle = (torch.rand(N, generator=g) - 0.5) * 0.35
    scale = 0.9 + 0.2 * torch.rand(N, generator=g)
    shift = (torch.rand(N, 2, generator=g) - 0.5) * 0.1
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, [N, 1, *images.shape[-2:]], align_corners=False)
    lo = images.flatten(1).amin(1)[:, None, None]
    img = F.grid_sample((images - lo)[:, None], grid, align_corners=False, padding_mode="zeros")[:, 0] + lo
    msk = F.grid_sample(masks[:, None].float(), grid, align_corners=False)[:, 0] > 0.5
    gamma = (0.8 + 0.4 * torch.rand(N, 1, 1, generator=g))
    span = img.flatten(1).amax(1)[:, None, None] - lo
    img = ((img - lo) / (span + 1e-6)).clamp(0, 1) ** gamma * span + lo
    return img, msk


def _pick(indices: Tensor, position: float, g: torch.Generator, jitter: int = 1) -> int:
    """The index at relative ``position`` in ``indices``, moved by up to +-jitter places."""
    i = round(position * (len(indices) - 1)) + int(torch.randint(-jitter, jitter + 1, (1,), generator=g))
    return int(indices[min(max(i, 0), len(indices) - 1)])


def sample_episodes(volumes: Sequence[Volume], class_ids: Sequence[int], n: int, shots: int, g: torch.Generator, *,
                    min_pixels: int = 10, augment: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n`` training episodes: a class, a query slice of it, and ``shots`` support slices of another volume at the
    same relative position in the class's range (SSL-ALPNet's alignment, jittered).

    Returns:
        query (n, 3, S, S), query mask (n, S, S), support (n, K, 3, S, S), support mask (n, K, S, S).
    """
    queries, qmasks, supports, smasks = [], [], [], []
    for _ in range(n):
        for _attempt in range(100):
            c = class_ids[int(torch.randint(len(class_ids), (1,), generator=g))]
            qv, sv = (volumes[int(i)] for i in torch.randperm(len(volumes), generator=g)[:2]) \
                if len(volumes) > 1 else (volumes[0], volumes[0])
            q_idx, s_idx = qv.slices_with(c, min_pixels), sv.slices_with(c, min_pixels)
            if len(q_idx) and len(s_idx):
                break
        else:
            raise DataError(f"no training slices with >= {min_pixels} pixels of classes {list(class_ids)}")
        z = int(q_idx[int(torch.randint(len(q_idx), (1,), generator=g))])
        pos = float((q_idx == z).nonzero()[0, 0]) / max(1, len(q_idx) - 1)
        zs = [_pick(s_idx, pos, g, jitter=2) for _ in range(shots)]
        queries.append(qv.image[z])
        qmasks.append(qv.label[z] == c)
        supports.append(sv.image[zs])
        smasks.append(sv.label[zs] == c)
    return _finish_episodes(queries, qmasks, supports, smasks, g, augment)


def sample_pseudo_episodes(volumes: Sequence[Volume], n: int, shots: int, g: torch.Generator, *,
                           min_pixels: int = 10) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Self-supervised episodes (SSL-ALPNet): a random supervoxel of a random slice is the class; query and the K
    supports are independently augmented copies of that slice. Needs ``supervoxel_*.nii.gz`` volumes."""
    pool = [v for v in volumes if v.supervoxel is not None]
    if not pool:
        raise DataError("self-supervised training needs supervoxel_<id>.nii.gz pseudo-labels beside the volumes")
    queries, qmasks, supports, smasks = [], [], [], []
    for _ in range(n):
        for _attempt in range(100):
            v = pool[int(torch.randint(len(pool), (1,), generator=g))]
            z = int(torch.randint(v.supervoxel.shape[0], (1,), generator=g))
            ids, counts = v.supervoxel[z].unique(return_counts=True)
            ids = ids[(counts >= min_pixels) & (ids > 0)]
            if len(ids):
                break
        else:
            raise DataError(f"no supervoxel with >= {min_pixels} pixels in the training volumes")
        mask = v.supervoxel[z] == ids[int(torch.randint(len(ids), (1,), generator=g))]
        queries.append(v.image[z])
        qmasks.append(mask)
        supports.append(v.image[z][None].expand(shots, -1, -1))
        smasks.append(mask[None].expand(shots, -1, -1))
    return _finish_episodes(queries, qmasks, supports, smasks, g, True)


def _finish_episodes(queries: list[Tensor], qmasks: list[Tensor], supports: list[Tensor], smasks: list[Tensor],
                     g: torch.Generator, augment: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    q, qm = torch.stack(queries), torch.stack(qmasks)
    s, sm = torch.stack(supports), torch.stack(smasks)                 # (n, K, S, S)
    if augment:
        q, qm = _augment(q, qm, g)
        s2, sm2 = _augment(s.flatten(0, 1), sm.flatten(0, 1), g)
        s, sm = s2.view_as(s), sm2.view_as(sm)
        empty = sm.flatten(2).sum(-1) == 0                             # the warp pushed a small structure out
        if bool(empty.any()):
            keep = torch.stack(smasks).to(sm.dtype)
            sm = torch.where(empty[..., None, None], keep, sm)
            s = torch.where(empty[..., None, None], torch.stack(supports), s)
    return (q[:, None].expand(-1, 3, -1, -1), qm.float(), s[:, :, None].expand(-1, -1, 3, -1, -1), sm.float())


# --- loss and metrics ------------------------------------------------------------------------------------------------

def iteration_losses(logits: Tensor, target: Tensor, bg_weight: float = 0.1) -> Tensor:
    """Class-weighted binary cross entropy of every prediction (M_0, then one per CMAT module).

    The weights are those of the official config (``NLLLoss(weight=[bg_weight, 1.0])``), normalised like NLLLoss by
    the weight sum. Shape: logits (B, S, H, W), target (B, H, W) in {0, 1} -> (S,).
    """
    target = target[:, None].expand_as(logits).to(logits.dtype)
    weight = bg_weight + (1 - bg_weight) * target
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    return (bce * weight).flatten(2).sum(-1).sum(0) / weight.flatten(2).sum(-1).sum(0)


def dice_score(pred: Tensor, target: Tensor) -> float:
    """2|P n G| / (|P| + |G|) of two boolean tensors (1.0 when both are empty)."""
    inter = float((pred & target).sum())
    total = float(pred.sum() + target.sum())
    return 1.0 if total == 0 else 2 * inter / total


def _chunk_supports(volume: Volume, class_id: int, n_part: int, shots: int) -> list[list[int]]:
    """SSL-ALPNet: the labelled slices cut into n_part chunks; K evenly spaced slices of each (K = 1: the middle)."""
    idx = volume.slices_with(class_id)
    if len(idx) == 0:
        raise DataError(f"support volume {volume.name} has no slice of the class (id {class_id}); pick another "
                        "--support-volume")
    per = len(idx) / n_part
    chunks = []
    for part in range(n_part):
        picks = [min(len(idx) - 1, int(per * part + per * (k + 0.5) / shots)) for k in range(shots)]
        chunks.append([int(idx[p]) for p in picks])
    return chunks


@torch.no_grad()
def evaluate_fewshot(model: nn.Module, volumes: Sequence[Volume], classes: dict[str, int], test_classes: Sequence[str],
                     *, support_volume: int = 0, n_part: int = 3, shots: int = 1, batch_size: int = 16,
                     device: torch.device | str = "cpu") -> dict[str, Any]:
    """Dice per held-out class and its mean, with the SSL-ALPNet protocol (see the module docstring)."""
    if not 0 <= support_volume < len(volumes):
        raise DataError(f"--support-volume {support_volume} is out of range: the test split has {len(volumes)} volumes")
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {}
    support = volumes[support_volume]
    queries = [v for i, v in enumerate(volumes) if i != support_volume]
    if not queries:
        raise DataError("the test split needs at least two volumes (one support, one query)")
    for name in test_classes:
        c = classes[name]
        chunks = _chunk_supports(support, c, n_part, shots)
        dices = []
        for qv in queries:
            idx = qv.slices_with(c)
            if len(idx) == 0:
                log.warning("query volume %s has no slice of %s; skipped", qv.name, name)
                continue
            lo, hi = int(idx.min()), int(idx.max())
            span = hi - lo + 1
            preds = []
            for start in range(lo, hi + 1, batch_size):
                zs = list(range(start, min(hi + 1, start + batch_size)))
                parts = [min(n_part - 1, int((z - lo) / (span / n_part))) for z in zs]
                q = qv.image[zs][:, None].expand(-1, 3, -1, -1)
                s = torch.stack([support.image[chunks[p]] for p in parts])[:, :, None].expand(-1, -1, 3, -1, -1)
                sm = torch.stack([(support.label[chunks[p]] == c).float() for p in parts])
                logits = model(q.to(device), support=s.to(device), support_mask=sm.to(device))[:, -1]
                preds.append(logits.cpu() > 0)
            pred = torch.cat(preds)
            dices.append(dice_score(pred, qv.label[lo:hi + 1] == c))
        if not dices:
            raise DataError(f"no query volume of the test split contains {name}")
        result[f"dice_{name}"] = sum(dices) / len(dices)
    result["mean_dice"] = sum(result[f"dice_{n}"] for n in test_classes) / len(test_classes)
    model.train(was_training)
    return result


# --- training --------------------------------------------------------------------------------------------------------

@dataclass
class FewShotConfig:
    """An episodic training run (stored in every checkpoint)."""

    model: str = "catnet_r50"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: str = "mni152"
    img_size: int | None = None
    train_classes: tuple[str, ...] | None = None
    test_classes: tuple[str, ...] | None = None
    fold: int = 0
    shots: int = 1
    steps: int = 1000
    batch_size: int = 4                   # episodes per step
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    bg_weight: float = 0.1
    clip_grad: float = 1.0
    n_part: int = 3
    support_volume: int = 0
    eval_every: int = 0                   # 0: evaluate at the end only
    self_supervised: bool = False         # train on supervoxel pseudo-labels (SSL-ALPNet) instead of classes
    backbone_weights: str | None = None   # a torchvision ResNet checkpoint for the MIFE backbone
    pretrained: str | None = None         # a visattn checkpoint of the whole model
    seed: int = 0
    out: str = "runs/fewshot"
    keep: int = 2
    log_every: int = 10
    device: str = "auto"
    threads: int | None = None


def build_fewshot_model(cfg: FewShotConfig) -> nn.Module:
    from ..checkpoint import load_model
    from ..registry import create_model, get_model_class
    from ..weights import load_pretrained

    cls = get_model_class(cfg.model)
    if getattr(cls, "task", "classification") != "fewshot":
        raise ValueError(f"{cfg.model} is not a few-shot model (try catnet_r50 or catnet_r101)")
    if cfg.pretrained:
        model, _ = load_model(cfg.pretrained, model_name=cfg.model)
    else:
        model = create_model(cfg.model, **cfg.model_overrides)
    if cfg.backbone_weights:
        load_pretrained(model.backbone, cfg.backbone_weights)
    return model.train()


def train_fewshot(cfg: FewShotConfig, *, data: FewShotData | None = None) -> dict[str, Any]:
    """Episodic training on the training classes and volumes; Dice on the held-out classes of the test volumes.

    Writes ``metrics.jsonl``, ``checkpoints/`` (at each evaluation), ``model.safetensors`` + ``model.json`` and
    ``summary.json`` to ``cfg.out``. Returns the summary.
    """
    from ..checkpoint import export_model, model_meta, optimizer_state_to_flat, save_checkpoint, write_json_atomic
    from ..train import lr_at

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from ..train import resolve_device  # lazily, like train.py imports the tasks, so neither import pulls the other

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = data or load_fewshot_data(cfg.data, img_size=cfg.img_size, train_classes=cfg.train_classes,
                                     test_classes=cfg.test_classes, fold=cfg.fold)
    model = build_fewshot_model(cfg).to(device)
    train_ids = [data.classes[n] for n in data.train_classes]
    meta = model_meta(model, task="fewshot", img_size=data.source["img_size"], classes=list(data.classes),
                      train_classes=data.train_classes, test_classes=data.test_classes, shots=cfg.shots,
                      n_part=cfg.n_part, support_volume=cfg.support_volume, data=data.source,
                      normalization="per-volume z-score of the foreground, 3 channels")
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    run = Path(cfg.out)
    run.mkdir(parents=True, exist_ok=True)
    metrics_path = run / "metrics.jsonl"
    metrics_path.write_text("")
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def evaluate(step: int) -> dict[str, Any]:
        res = evaluate_fewshot(model, data.test, data.classes, data.test_classes, support_volume=cfg.support_volume,
                               n_part=cfg.n_part, shots=cfg.shots, device=device)
        add({"kind": "eval", "step": step, **res})
        tensors, opt_meta = optimizer_state_to_flat(optimizer.state_dict())
        save_checkpoint(run, f"step{step:08d}", model_state=model.state_dict(), model_meta=meta,
                        train_tensors=tensors or {"step": torch.tensor(step)},
                        train_meta={"step": step, "optimizer": opt_meta, "config": asdict(cfg), "eval": res},
                        keep=cfg.keep)
        return res

    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {cfg.model} ({n_params / 1e6:.2f}M parameters), {cfg.shots}-shot episodes on {cfg.data}: "
          f"classes {', '.join(data.train_classes)} on {len(data.train)} volumes; held out "
          f"{', '.join(data.test_classes)} on {len(data.test)} volumes; {cfg.steps} steps x {cfg.batch_size} "
          f"episodes, device {device.type}", flush=True)
    start, window = time.perf_counter(), []
    result: dict[str, Any] = {}
    for step in range(cfg.steps):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        if cfg.self_supervised:
            q, qm, s, sm = sample_pseudo_episodes(data.train, cfg.batch_size, cfg.shots, g)
        else:
            q, qm, s, sm = sample_episodes(data.train, train_ids, cfg.batch_size, cfg.shots, g)
        lr = lr_at(step, total=cfg.steps, warmup=cfg.warmup_steps, base=cfg.lr, minimum=cfg.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = model(q.to(device), support=s.to(device), support_mask=sm.to(device))
        losses = iteration_losses(logits, qm.to(device), cfg.bg_weight)
        loss = losses.mean()
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss is {float(loss)} at step {step + 1}: training diverged; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        window.append(float(loss.detach()))
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            add({"kind": "step", "step": step + 1, "loss": sum(window) / len(window), "lr": lr,
                 "losses": [round(float(v), 5) for v in losses.detach()]})
            print(f"step {step + 1}/{cfg.steps}  loss {sum(window) / len(window):.4f}  lr {lr:.2e}  "
                  f"{(step + 1) / (time.perf_counter() - start):.2f} steps/s", flush=True)
            window = []
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            result = evaluate(step + 1)
            print(f"step {step + 1}: held-out mean Dice {result['mean_dice']:.4f}", flush=True)
    result = evaluate(cfg.steps)
    export_model(run, model.state_dict(), {**meta, "step": cfg.steps})
    summary = {"model": cfg.model, "out": str(run), "steps": cfg.steps, "train_time_s": time.perf_counter() - start,
               **result, "test_classes": data.test_classes, "train_classes": data.train_classes}
    write_json_atomic(run / "summary.json", summary)
    print("held-out Dice: " + ", ".join(f"{n} {result[f'dice_{n}']:.4f}" for n in data.test_classes)
          + f"  (mean {result['mean_dice']:.4f}); saved {run / 'model.safetensors'}", flush=True)
    return summary


# --- prediction on image files ---------------------------------------------------------------------------------------

def _read_gray(path: str | os.PathLike) -> Tensor:
    """An image file as a float32 (H, W) grey-level tensor (PIL; colour images are converted to luminance)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("F") if im.mode in ("I", "I;16", "F") else im.convert("L")
            h, w = im.size[1], im.size[0]
            return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.float32 if im.mode == "F" else torch.uint8
                                    ).view(h, w).float()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot read {path} as an image ({err})") from err


def read_mask(path: str | os.PathLike, size: tuple[int, int]) -> Tensor:
    """A binary mask file ({0, 1} or {0, 255}) of the given (H, W) as a bool tensor; clear errors otherwise."""
    mask = _read_gray(path)
    if tuple(mask.shape) != tuple(size):
        raise DataError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}: "
                        "a mask must have its image's size")
    values = set(mask.unique().tolist())
    if not values <= {0.0, 1.0} and not values <= {0.0, 255.0}:
        shown = sorted(values)[:6]
        raise DataError(f"mask {path} is not binary: values {shown}{' ...' if len(values) > 6 else ''}; save it "
                        "with only 0 (background) and 1 or 255 (foreground), without antialiasing")
    if not values - {0.0}:
        raise DataError(f"mask {path} is empty: a support mask needs foreground pixels")
    return mask > 0


def _prepare(image: Tensor, size: int) -> Tensor:
    """(H, W) grey image -> (3, size, size), z-scored like the training volumes."""
    x = F.interpolate(image[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return _zscore(x)[None].expand(3, -1, -1)


def predict_files(model: nn.Module, supports: Sequence[tuple[str, str]], query: str, out_dir: Path, *,
                  img_size: int | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Segment ``query`` from K (image, mask) support files; write ``<query>_mask.png`` (0/255, the query's size)
    and ``<query>_overlay.png``. Every input is read and checked first, and both files are renamed into place only
    after both are written, so a bad input leaves nothing behind."""
    from PIL import Image

    size = int(img_size or 256)
    q_img = _read_gray(query)
    shots, masks = [], []
    for image_path, mask_path in supports:
        img = _read_gray(image_path)
        masks.append(F.interpolate(read_mask(mask_path, tuple(img.shape))[None, None].float(), size=(size, size),
                                   mode="area")[0, 0].clamp(0, 1))
        shots.append(_prepare(img, size))
    for m, (_, mask_path) in zip(masks, supports):
        if float(m.max()) == 0:
            raise DataError(f"mask {mask_path} has no foreground left at {size}x{size}")
    x = _prepare(q_img, size)[None].to(device)
    s = torch.stack(shots)[None].to(device)
    sm = torch.stack(masks)[None].to(device)
    model.eval()
    with torch.no_grad():
        logits = model(x, support=s, support_mask=sm)[:, -1:]         # (1, 1, size, size)
        prob = F.interpolate(logits.float().cpu(), size=tuple(q_img.shape), mode="bilinear",
                             align_corners=False)[0, 0].sigmoid()
    pred = prob > 0.5
    gray = q_img - q_img.min()
    gray = (gray / (gray.max() + 1e-6) * 255).round().to(torch.uint8)
    rgb = gray[..., None].expand(-1, -1, 3).clone()
    red = torch.tensor([255, 0, 0], dtype=torch.float32)
    rgb[pred] = (0.55 * rgb[pred].float() + 0.45 * red).round().to(torch.uint8)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(query).stem
    targets = {"mask": out_dir / f"{stem}_mask.png", "overlay": out_dir / f"{stem}_overlay.png"}
    arrays = {"mask": (pred.to(torch.uint8) * 255).numpy(), "overlay": rgb.numpy()}
    temps = {}
    try:
        for key, path in targets.items():
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            Image.fromarray(arrays[key]).save(tmp, format="PNG")
            temps[key] = tmp
        for key, path in targets.items():
            os.replace(temps.pop(key), path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return {**{k: str(v) for k, v in targets.items()}, "foreground_fraction": float(pred.float().mean())}
