"""The deblurring tasks: motion (``--task deblur-motion``) and defocus (``--task deblur-defocus``, single image or
dual-pixel views).

Both are :class:`~.task.RestorationTask` with a blur degradation (``blur.py``): they train on real pairs when the
data are paired folders (GoPro / HIDE / RealBlur, DPDD; read by ``data.py`` as for every restoration task) and on
the degradation's synthetic blur of clean images otherwise. Their evaluation adds the mean absolute error (MAE) the
deblurring papers report, of the output and of the blurred baseline.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..base import EvalContext
from .task import RestorationTask

__all__ = ["DeblurTask", "DefocusDeblurTask", "MotionDeblurTask"]


class DeblurTask(RestorationTask):
    """A restoration task whose evaluation also reports MAE."""

    def evaluate(self, model: nn.Module, ctx: EvalContext | None = None) -> dict[str, Any]:
        """:meth:`RestorationTask.evaluate` plus MAE (mean absolute error in [0, 1] of the output, and of the
        baseline)."""
        from ...distributed import DistInfo, all_reduce_sum

        result = super().evaluate(model, ctx)
        ctx = ctx or EvalContext()
        ds = self.val_set if ctx.dataset is None else ctx.dataset
        info = ctx.dist_info or DistInfo()
        sums = torch.zeros(2, dtype=torch.float64)
        for i in range(info.rank, len(ds), info.world_size):
            _, clean_u8, given = ds[i]
            x = self.prepare_eval(clean_u8, given, i)
            clean = clean_u8.float()[None] / 255
            sums += torch.tensor([float((self.degradation.baseline(x, tuple(clean.shape[-2:])) - clean).abs().mean()),
                                  1.0], dtype=torch.float64)
        sums = all_reduce_sum(sums, info)
        result["val_mae"] = result["val_loss"]
        result[f"val_{self.degradation.baseline_name}_mae"] = float(sums[0]) / max(float(sums[1]), 1.0)
        return result


class MotionDeblurTask(DeblurTask):
    """``--task deblur-motion``: undo :class:`~.blur.MotionBlur` (or real blur of paired folders, GoPro style)."""


class DefocusDeblurTask(DeblurTask):
    """``--task deblur-defocus``: undo :class:`~.blur.DefocusBlur`, single image or dual-pixel views (or real pairs,
    DPDD style)."""
