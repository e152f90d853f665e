"""PNG figures: training curves, confusion matrices, cost-vs-pixels scaling, partitions and attention maps.

matplotlib (the ``cli`` extra) is imported inside each function with the non-interactive Agg backend; without it
the figure is skipped with a warning and everything else still works.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("visattn")

__all__ = ["have_matplotlib", "plot_confusion", "plot_curves", "plot_per_pixel", "plot_scaling"]


def have_matplotlib() -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        log.warning("matplotlib is not installed, so no PNG is written: pip install 'visattn[cli]'")
        return False
    return True


def _save(fig: Any, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "", *,
                metric: str = "val_top1", percent: bool | None = None) -> Path | None:
    """Loss (per logged step and per epoch) and a validation metric (per epoch) from ``metrics.jsonl`` rows.

    Args:
        metric: the epoch rows' key to draw on the right (with ``train_<name>`` and ``ema_<metric>`` where logged).
        percent: a 0-100 axis (default: for keys ending in ``top1`` / ``top5`` / ``acc``).
    """
    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    name = metric.removeprefix("val_")
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.5, label="train (step)")
    if epochs:
        x = [r["step"] for r in epochs]
        ax_loss.plot(x, [r["train_loss"] for r in epochs], "o-", label="train (epoch)")
        if all("val_loss" in r for r in epochs):
            ax_loss.plot(x, [r["val_loss"] for r in epochs], "s-", label="validation")
        x = [r["epoch"] for r in epochs]
        if all(f"train_{name}" in r for r in epochs):
            ax_metric.plot(x, [r[f"train_{name}"] for r in epochs], "o-", label=f"train {name}")
        ax_metric.plot(x, [r.get(metric) for r in epochs], "s-", label=f"validation {name}")
        if any(f"ema_{metric}" in r for r in epochs):
            ax_metric.plot(x, [r.get(f"ema_{metric}") for r in epochs], "^-", label=f"EMA validation {name}")
    if percent is None:
        percent = name.endswith(("top1", "top5", "acc"))
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_metric.set(xlabel="epoch", ylabel=f"{name} (%)" if percent else name, title=name)
    if percent:
        ax_metric.set_ylim(0, 100)
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(confusion: Any, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path | None:
    """Row-normalised confusion matrix (rows: true class) with the counts written in the cells."""
    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(confusion, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    side = min(0.45 * n + 2.5, 20)
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=90 if max(map(len, classes)) > 3 else 0)
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    return _save(fig, path)


def plot_scaling(rows: Sequence[dict[str, Any]], path: str | os.PathLike, metric: str = "ms",
                 title: str = "", xlabel: str = "pixels (H x W)") -> Path | None:
    """Log-log plot of ``metric`` against pixels, one line per name, with slope-1 and slope-2 guides."""
    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    names = list(dict.fromkeys(r["name"] for r in rows))
    lo_hi = []
    for name in names:
        pts = sorted((r["pixels"], r[metric]) for r in rows if r["name"] == name and r.get(metric) not in (None, ""))
        if not pts:
            continue
        ax.loglog(*zip(*pts), "o-", label=name)
        lo_hi.append(pts[0])
    if lo_hi:
        x0, y0 = min(lo_hi)
        xs = sorted({r["pixels"] for r in rows})
        for slope, style in ((1, ":"), (2, "--")):
            ax.loglog(xs, [y0 * (x / x0) ** slope for x in xs], style, color="gray", lw=1,
                      label=f"~ pixels^{slope}")
    ax.set(xlabel=xlabel, ylabel=metric, title=title or f"{metric} vs pixels")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_per_pixel(rows: Sequence[dict[str, Any]], path: str | os.PathLike, metrics: Sequence[str] = ("ms",
                   "peak_mem_mb"), limit: float = 1.25, title: str = "") -> Path | None:
    """Cost per pixel relative to each line's smallest size, one panel per metric: flat means linear in pixels.

    A dotted guide marks ``limit`` (the linear-growth target); quadratic cost rises with slope 1 on these log axes.
    """
    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    names = list(dict.fromkeys(r["name"] for r in rows))
    for ax, metric in zip(axes[0], metrics):
        for name in names:
            pts = sorted((r["pixels"], r[metric] / r["pixels"]) for r in rows
                         if r["name"] == name and r.get(metric) not in (None, ""))
            if len(pts) < 2:
                continue
            x0, y0 = pts[0]
            ax.loglog([x / x0 for x, _ in pts], [y / y0 for _, y in pts], "o-", label=name)
        ax.axhline(limit, ls=":", color="gray", lw=1, label=f"{limit}x")
        ax.axhline(1.0, ls="-", color="gray", lw=0.5)
        ax.set(xlabel="pixels / pixels at the smallest size", ylabel=f"{metric} per pixel (relative)", title=metric)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
