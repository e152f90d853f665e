"""Top-k classes, shared by the classifiers of images (``tasks/classification``) and of videos (``tasks/video``):
accuracy counting for evaluation, and what ``visattn predict`` prints or writes as JSON for each input file."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from torch import Tensor

from .base import PredictRequest

__all__ = ["class_names", "finish_predictions", "format_top", "top_classes", "topk_correct"]

log = logging.getLogger("visattn")


def topk_correct(logits: Tensor, targets: Tensor, ks: Sequence[int]) -> list[int]:
    """Number of samples whose target is among the top-k logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[-1]), dim=-1).indices  # (B, kmax)
    hit = top == targets[:, None]
    return [int(hit[:, :k].any(dim=-1).sum()) for k in ks]


def class_names(meta: dict[str, Any], num_classes: int) -> list[str]:
    """The class names a saved model records, else its class indices as strings."""
    return meta.get("classes") or [str(i) for i in range(num_classes)]


def top_classes(probs: Tensor, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one input's ``probs`` (C,) (at most C), most probable first: each
    ``{"class": name, "index": i, "prob": p}``."""
    top = probs.topk(min(k, len(probs)))
    return [{"class": classes[i], "index": int(i), "prob": float(p)} for p, i in zip(top.values, top.indices)]


def format_top(preds: Sequence[dict[str, Any]]) -> str:
    """'tench (0.912), goldfish (0.031)' for :func:`top_classes`' list."""
    return ", ".join(f"{p['class']} ({p['prob']:.3f})" for p in preds)


def finish_predictions(results: list[dict[str, Any]], skipped: int, request: PredictRequest, what: str) -> int:
    """The end of a classifier's ``predict``: the JSON document of ``results`` (``--json``), a warning naming how
    many of the inputs (``what``: "image", "video") were skipped, and an error if none was readable; returns 0."""
    if request.json:
        print(json.dumps(results, indent=2))
    if skipped:
        log.warning("skipped %d of %d %s(s)", skipped, len(request.inputs), what)
    if not results:
        raise ValueError(f"no readable {what} among the inputs")
    return 0
