"""``create_model(name, features_only=True, out_indices=...)``: a classifier's stage outputs as a backbone for dense
tasks, in the shape of timm's ``features_only`` models (a list of maps, and ``feature_info`` with ``channels()`` /
``reduction()`` / ``module_name()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .backbone import stage_indices

__all__ = ["FeatureInfo", "FeatureListNet"]


class FeatureInfo(list):
    """The selected stages' ``{"num_chs", "reduction", "module"}`` dicts, with timm's accessor methods."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]

    def get_dicts(self) -> list[dict[str, Any]]:
        return [dict(info) for info in self]


class FeatureListNet(nn.Module):
    """A model's ``forward_intermediates`` maps at ``out_indices`` (default: every stage); the classifier is dropped.

    Args:
        model: a model with timm's ``forward_intermediates`` and one ``feature_info`` entry per stage.
        out_indices: stage indices, negative ones counting from the last stage.

    Shape: (B, in_chans, H, W) -> [(B, channels()[i], ceil(H / reduction()[i]), ...) for each index]. No stage
    after the last index runs.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None):
        super().__init__()
        stages = list(getattr(model, "feature_info", []))
        if not hasattr(model, "forward_intermediates") or not stages:
            raise ValueError(f"{type(model).__name__} has no per-stage features: features_only needs a model with "
                             "forward_intermediates (the image classifiers)")
        indices = None if out_indices is None else tuple(out_indices)     # a sequence here, never a count
        self.out_indices = tuple(stage_indices(indices, len(stages), "out_indices"))
        self.feature_info = FeatureInfo(stages[i] for i in self.out_indices)
        if hasattr(model, "head"):
            model.head = nn.Identity()                                  # the classifier is not part of a backbone
        self.model = model

    @property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The wrapped classifier's ``pretrained_cfg`` (timm's features_only models keep it)."""
        return getattr(self.model, "pretrained_cfg", {})

    @property
    def default_cfg(self) -> dict[str, Any]:
        return self.pretrained_cfg

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
