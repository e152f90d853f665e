"""The rest of timm's model API for visattn's image classifiers, with timm's meanings: ``default_cfg`` /
``pretrained_cfg`` (with ``pool_size``, ``first_conv``, ``classifier`` and the weights tag), ``num_classes``,
``head_hidden_size``, ``get_classifier()``, ``global_pool``, ``no_weight_decay()``, ``group_matcher()`` (for timm's
``param_groups_layer_decay``) and ``set_input_size()``.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace
from typing import Any

from torch import nn

__all__ = ["TimmModelAPI", "finish_pretrained_cfg"]

# Parameters timm's models exempt from weight decay (position tables and embeddings, class tokens, logit scales).
_NO_DECAY = ("relative_position_bias_table", "rel_pos_h", "rel_pos_w", "rel_pos_t", "pos_embed", "cls_token",
             "logit_scale")


def finish_pretrained_cfg(model: nn.Module, cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with the weights entry the model was built for (its tag, or the variant's default tag) and timm's
    ``pool_size`` (final map size at ``input_size``), ``first_conv`` and ``classifier`` module names."""
    from ..weights.registry import default_tag

    entry = getattr(model, "weights_entry", None) or default_tag(getattr(model, "variant_name", ""))
    if entry is not None:
        cfg = {**cfg, **entry.pretrained_cfg()}
    cfg["num_classes"] = model.config.num_classes
    override = getattr(model, "_timm_input_size", None)
    if override is not None:
        cfg["input_size"] = (cfg["input_size"][0], *override)
    reduction = model.feature_info[-1]["reduction"]
    cfg["pool_size"] = tuple(math.ceil(s / reduction) for s in cfg["input_size"][-2:])
    cfg["first_conv"] = next((n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), "")
    cfg["classifier"] = "head.fc"
    return cfg


class TimmModelAPI:
    """Mixin for :class:`~visattn.layers.backbone.ClassifierBackbone`: attributes timm's tools read."""

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of ``pretrained_cfg``."""
        return self.pretrained_cfg

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def head_hidden_size(self) -> int:
        """Width of the features the classifier reads (after a pre-logits layer where the head has one)."""
        return getattr(self.head, "num_features", self.num_features)

    @property
    def global_pool(self) -> str:
        """"avg", "token" (MViT with a class token) or "" after ``reset_classifier(0, '')``."""
        return getattr(self.config, "global_pool", getattr(self, "_global_pool", "avg"))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters timm exempts from weight decay (position tables / embeddings, class tokens)."""
        return {n for n, _ in self.named_parameters() if any(k in n for k in _NO_DECAY)}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups as timm's models define them: ``stem`` (everything before the stages), ``blocks``
        (per stage when ``coarse``, else per block), the final norm and head last."""
        stem = sorted({n.split(".")[0] for n, _ in self.named_parameters()}
                      - {"stages", "head", "norm"})
        matcher: dict[str, Any] = {"stem": r"^(?:" + "|".join(stem) + r")(?:\.|$)"}
        if coarse:
            matcher["blocks"] = [(r"^stages\.(\d+)", None), (r"^norm", (99999,))]
        else:
            matcher["blocks"] = [(r"^stages\.(\d+)\.blocks\.(\d+)", None), (r"^stages\.(\d+)", (0,)),
                                 (r"^norm", (99999,))]
        return matcher

    def set_input_size(self, img_size: int | tuple[int, int] | None = None,
                       window_size: int | None = None) -> None:
        """Adapt to another input size / window size as timm's ``set_input_size``.

        ``img_size`` changes the config's ``img_size`` where the model has one (MViT: position tables sized for it,
        interpolated) and ``pretrained_cfg["input_size"]``; ``window_size`` the partition / window size (MaxViT
        ``partition_size``, DaViT ``window_size``). Weights are kept; position-bias tables are resized as on load.
        """
        names = {f.name for f in fields(self.config)}
        changes: dict[str, Any] = {}
        if img_size is not None:
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            if "img_size" in names:
                changes["img_size"] = (*self.config.img_size[:-2], *size)
            self._timm_input_size = size
        if window_size is not None:
            key = "partition_size" if "partition_size" in names else "window_size"
            if key not in names or not isinstance(getattr(self.config, key), int):
                raise ValueError(f"{type(self).__name__} has no single window size to set (config fields: "
                                 f"{sorted(names)})")
            changes[key] = window_size
        if not changes:
            return
        from ..weights.load import load_pretrained

        param = next(self.parameters())
        rebuilt = type(self)(replace(self.config, **changes)).to(device=param.device, dtype=param.dtype)
        load_pretrained(rebuilt, self.state_dict())
        rebuilt.train(self.training)
        for key in ("_modules", "_parameters", "_buffers", "config", "feature_info", "patch_grid"):
            if key in rebuilt.__dict__:
                self.__dict__[key] = rebuilt.__dict__[key]
