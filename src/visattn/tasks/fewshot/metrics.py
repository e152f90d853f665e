"""Few-shot loss and metrics: the class-weighted loss of every iteration's prediction, Dice, and the SSL-ALPNet /
CAT-Net evaluation protocol.

Evaluation: for a test class, the slices of the support volume that contain it are cut into ``n_part`` equal
chunks and the middle slice of chunk i (K evenly spaced slices for K > 1) supports every query slice in chunk i of
each query volume's labelled range (relative positions match); Dice is computed in 3-D over that range, averaged
over query volumes, then over classes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...distributed import DistInfo, all_reduce_sum
from ..base import DataError
from .data import Volume

__all__ = ["dice_score", "evaluate_fewshot", "iteration_losses"]

log = logging.getLogger("visattn")


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
                     device: torch.device | str = "cpu", dist_info: DistInfo | None = None,
                     autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> dict[str, Any]:
    """Dice per held-out class and its mean, with the SSL-ALPNet protocol (see the module docstring).

    Args:
        model: a few-shot model, ``model(query, support=, support_mask=)`` -> logits (B, S, H, W).
        volumes: the evaluation volumes; ``volumes[support_volume]`` supports, the others are queries.
        classes: class name -> label id.
        test_classes: the classes to score.
        support_volume, n_part, shots: the protocol's support volume, chunks per volume and slices per chunk.
        batch_size: query slices per forward pass.
        device: where the model runs.
        dist_info: under ``torchrun`` each process scores every world_size-th query volume and the sums are
            reduced (the result is the same as one process's).
        autocast: a context manager factory for mixed precision (None: full precision).

    Returns:
        ``dice_<class>`` for each test class, ``mean_dice`` and ``count`` (query volumes scored, summed over
        classes).
    """
    if not 0 <= support_volume < len(volumes):
        raise DataError(f"--support-volume {support_volume} is out of range: the test split has {len(volumes)} volumes")
    info = dist_info or DistInfo()
    amp = autocast or contextlib.nullcontext
    was_training = model.training
    model.eval()
    result: dict[str, Any] = {}
    support = volumes[support_volume]
    queries = [v for i, v in enumerate(volumes) if i != support_volume]
    if not queries:
        raise DataError("the test split needs at least two volumes (one support, one query)")
    count = 0
    for name in test_classes:
        c = classes[name]
        chunks = _chunk_supports(support, c, n_part, shots)
        totals = torch.zeros(2, dtype=torch.float64)                   # Dice sum, query volumes scored
        for qv in queries[info.rank::info.world_size]:
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
                q = qv.image[zs][:, None].expand(-1, 3, -1, -1)           # (b, 3, S, S)
                s = torch.stack([support.image[chunks[p]] for p in parts])[:, :, None].expand(-1, -1, 3, -1, -1)
                sm = torch.stack([(support.label[chunks[p]] == c).float() for p in parts])  # (b, K, S, S)
                with amp():
                    logits = model(q.to(device), support=s.to(device), support_mask=sm.to(device))[:, -1]
                preds.append(logits.float().cpu() > 0)
            pred = torch.cat(preds)
            totals += torch.tensor([dice_score(pred, qv.label[lo:hi + 1] == c), 1.0], dtype=torch.float64)
        totals = all_reduce_sum(totals, info)
        if totals[1] == 0:
            model.train(was_training)
            raise DataError(f"no query volume of the test split contains {name}")
        result[f"dice_{name}"] = float(totals[0] / totals[1])
        count += int(totals[1])
    result["mean_dice"] = sum(result[f"dice_{n}"] for n in test_classes) / len(test_classes)
    result["count"] = count
    model.train(was_training)
    return result
