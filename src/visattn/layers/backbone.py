"""The timm backbone API that visattn's image classifiers share (input check, classifier reset, head, checkpointing).

A model inheriting :class:`ClassifierBackbone` provides ``config`` (with ``in_chans`` and ``num_classes``),
``min_input_size``, ``stages`` (each with a ``grad_checkpointing`` flag), ``head`` (with an ``fc`` and a
``forward(x, pre_logits)``), ``num_features`` and ``forward_features``; the rest comes from here.
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from .checks import check_image

__all__ = ["ClassifierBackbone"]


class ClassifierBackbone(nn.Module):
    """Mixin with ``set_grad_checkpointing``, ``reset_classifier``, ``forward_head`` and ``forward``."""

    min_input_size: int
    input_ndim = 4

    def _check_input(self, x: Tensor) -> None:
        check_image(x, self.config.in_chans, who=type(self).__name__, min_size=self.min_input_size,
                    ndim=self.input_ndim)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none, ``forward`` returns pooled features). ``global_pool`` is
        timm's argument; these heads average-pool, so only None or "avg" are accepted."""
        if global_pool not in (None, "avg"):
            raise ValueError(f"{type(self).__name__} pools by average only: global_pool must be None or 'avg', "
                             f"got {global_pool!r}")
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.config = replace(self.config, num_classes=num_classes)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Shape: (B, C, h, w) -> (B, num_classes), or (B, num_features) with ``pre_logits``."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chans, H, W) -> (B, num_classes); any H, W >= ``min_input_size``."""
        return self.forward_head(self.forward_features(x))
