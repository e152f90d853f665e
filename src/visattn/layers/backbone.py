"""The timm backbone API that visattn's image classifiers share (classifier reset, head, checkpointing, stage maps).

A model inheriting :class:`ClassifierBackbone` (a :class:`~visattn.layers.model.VisionModel` with task
"classification") provides ``config`` (with ``in_chans`` and ``num_classes``), ``min_input_size``, ``stem``,
``stages`` (each with a ``grad_checkpointing`` flag), ``head`` (with an ``fc`` and a ``forward(x, pre_logits)``),
``num_features``, ``feature_info`` (one entry per stage) and ``forward_features``; the rest comes from here. A family
whose stages do not chain one map (MViT's token sequences) overrides ``_stage_maps(x, last)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import Tensor, nn

from .model import VisionModel
from .timm_api import TimmModelAPI, finish_pretrained_cfg

__all__ = ["ClassifierBackbone", "stage_indices"]


def stage_indices(indices: int | Sequence[int] | None, n: int, what: str = "indices") -> list[int]:
    """timm's stage selection over ``n`` stages: None all, an int k the last k, or indices (negative from the end)."""
    if indices is None:
        return list(range(n))
    if isinstance(indices, int):
        if not 0 < indices <= n:
            raise ValueError(f"{what} as a count must be in 1..{n} ({n} stages), got {indices}")
        return list(range(n - indices, n))
    if not indices or any(not isinstance(i, int) or not -n <= i < n for i in indices):
        raise ValueError(f"{what} must be stage indices in [-{n}, {n - 1}] ({n} stages), got {indices}")
    return [i % n for i in indices]


class ClassifierBackbone(TimmModelAPI, VisionModel):
    """Base of the classifiers: timm's model API (``TimmModelAPI``), ``set_grad_checkpointing``,
    ``reset_classifier``, ``forward_intermediates``, ``forward_head`` and ``forward``."""

    task = "classification"
    # Preprocessing of the weights people load into this family, as timm 1.0.31's default tag of the matching timm
    # model says (mean / std, eval centre-crop fraction, resize interpolation); ``data_variants`` overrides per
    # visattn variant. Read through ``pretrained_cfg`` (timm's attribute, so timm.data.resolve_data_config(model=...)
    # understands it) and used by ``visattn convert`` when no --mean / --std / --crop-pct is given.
    data_defaults: dict = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 0.875,
                           "interpolation": "bicubic"}
    data_variants: dict[str, dict] = {}

    @property
    def pretrained_cfg(self) -> dict:
        """timm-style data config: input_size, mean, std, crop_pct, crop_mode, interpolation, num_classes."""
        size = getattr(self.config, "img_size", 224)
        size = tuple(size)[-2:] if isinstance(size, (tuple, list)) else (size, size)
        cfg = {"input_size": (self.config.in_chans, *size), "crop_mode": "center", **self.data_defaults,
               **self.data_variants.get(getattr(self, "variant_name", ""), {})}
        return finish_pretrained_cfg(self, {**cfg, "num_classes": self.config.num_classes})

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh classifier for ``num_classes`` (0: none, ``forward`` returns pooled features). ``global_pool`` is
        timm's argument; these heads average-pool, so only None, "avg" or "" (no pooling: with num_classes=0,
        ``forward`` returns the unpooled ``forward_features`` map, as timm) are accepted."""
        if global_pool not in (None, "avg", ""):
            raise ValueError(f"{type(self).__name__} pools by average only: global_pool must be None, 'avg' or '' "
                             f"(unpooled, with num_classes=0), got {global_pool!r}")
        if global_pool == "" and num_classes:
            raise ValueError("global_pool='' (unpooled features) needs num_classes=0")
        if global_pool is not None:
            self._global_pool = global_pool or ""
        self.head.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.config = replace(self.config, num_classes=num_classes)

    def _stem(self, x: Tensor) -> Tensor:
        """The input checked and through the stem: what the first stage takes."""
        self.check_input(x)
        return self.stem(x)

    def _as_map(self, x: Tensor) -> Tensor:
        """A stage output as a (B, C, h, w) map; families whose stages work channels-last permute here."""
        return x

    def _stage_maps(self, x: Tensor, last: int) -> list[Tensor]:
        """The output maps of stages 0..``last``, (B, C_i, (T_i,) H_i, W_i) each."""
        x = self._stem(x)
        maps = []
        for stage in self.stages[:last + 1]:
            x = stage(x)
            maps.append(self._as_map(x))
        return maps

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, *, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False) -> tuple[Tensor, list[Tensor]] | list[Tensor]:
        """Stage output maps for dense tasks, with timm's arguments and return value.

        Args:
            x: (B, in_chans, H, W) images (or videos for the video models).
            indices: which stages: None all, an int n the last n, or a sequence of indices (negative from the end).
            norm: timm's argument, accepted for its signature: the maps are the same either way (MaxViT / DaViT /
                CloFormer keep their norm in the head, as timm's ports; MViT's last map is always normalised).
            stop_early: run no stage after the last selected one (the final map is then that stage's).
            output_fmt: "NCHW" (timm's default), or "NHWC" for channels-last maps (images only).
            intermediates_only: return only the list.

        Returns:
            (final map, [map per selected stage]) - the final map is ``forward_features(x)`` unless ``stop_early``
            cut the stages short - or just the list. Widths and strides are in ``feature_info``.
        """
        if output_fmt not in ("NCHW", "NHWC") or (output_fmt == "NHWC" and self.input_ndim != 4):
            raise ValueError(f"output_fmt must be 'NCHW' (or 'NHWC' for images), got {output_fmt!r}")
        n = len(self.feature_info)
        take = stage_indices(indices, n)
        maps = self._stage_maps(x, max(take) if stop_early else n - 1)
        if output_fmt == "NHWC":
            maps = [m.permute(0, 2, 3, 1) for m in maps]               # (B, H_i, W_i, C_i)
        selected = [maps[i] for i in take]
        return selected if intermediates_only else (maps[-1], selected)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Shape: (B, C, h, w) -> (B, num_classes), or (B, num_features) with ``pre_logits``; unchanged after
        ``reset_classifier(0, '')``."""
        if self.global_pool == "":
            return x
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, in_chans, H, W) -> (B, num_classes); any H, W >= ``min_input_size``."""
        return self.forward_head(self.forward_features(x))
