"""Few-shot training episodes: 1-way K-shot sampling from labelled volumes, self-supervised pseudo-episodes from
supervoxels (SSL-ALPNet), and their random affine + gamma augmentation.

Every random number comes from the caller's generator, so a batch of episodes depends only on that generator's
seed: the training loop seeds it per step and samples the whole global batch, which makes runs resumable and the
same on any number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import DataError
from .data import Volume

__all__ = ["sample_episodes", "sample_pseudo_episodes"]


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

