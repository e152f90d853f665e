"""Initialise a video model from image weights: 2-D kernels inflated over time, tables copied, time-only tables zero.

The recipe of I3D (Carreira and Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017, §2.2) as PySlowFast applies
it to MViT (``slowfast/utils/checkpoint.py``: ``inflate_weight`` for ``TRAIN.CHECKPOINT_INFLATE``, and the
``image_init`` branch of ``load_checkpoint`` for ``TRAIN.CHECKPOINT_IN_INIT``, which the MViTv2-L SSv2 config uses):

* a 2-D conv kernel (C_out, C_in, kh, kw) becomes 3-D (C_out, C_in, kt, kh, kw): the patch embedding and the
  depthwise pooling convs of every attention block. ``average`` repeats it over time and divides by kt, so a clip of
  identical frames gives the image model's response (I3D's "boring video" argument; PySlowFast ``inflate_weight``);
  ``centre`` puts it at the temporal centre tap and zeros elsewhere (ViViT's central-frame initialisation, Arnab et
  al., ICCV 2021, arXiv 2103.15691, §3.4), which gives the image response at every time step, clip ends included;
* tensors of the same shape are copied: projections, MLPs, norms, and the spatial relative-position tables
  ``rel_pos_h`` / ``rel_pos_w``, linearly interpolated where their length differs (PySlowFast ``image_init``);
* time-only tables the image has no counterpart for, ``rel_pos_t`` and ``pos_embed_temporal``, are set to zero, so
  that the inflated model starts without a temporal position term;
* a spatial absolute embedding ``pos_embed_spatial`` is copied, bicubically resized to the video model's grid where
  the grids differ; anything else of another shape (a classifier of another width) and every key the image lacks
  (a class token) keeps the video model's own initialisation.

Deviations from PySlowFast's ``image_init``: it repeats the patch-embedding and pooling kernels without dividing by
kt and leaves ``rel_pos_t`` at its random initialisation (``MVIT.REL_POS_ZERO_INIT`` is False by default). Dividing
the patch kernel keeps a static clip's embedding equal to the image's; the pooling convs are followed by a LayerNorm,
so their scale makes no difference (up to the norm's epsilon). A zero ``rel_pos_t`` adds no temporal bias before
training has learnt one.

Clip ends under ``average``: the video patch embedding pads time with zeros (kernel 3, padding 1), so its first
(and, for an odd frame count, last) time step sees kt - 1 real frames: on a static clip it gives (kt - 1) / kt of the
image's conv response plus the bias there, the image's response elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InflationReport", "inflate_image_to_video", "load_image_state_dict"]

InflateMode = Literal["average", "centre"]
_ZERO_INIT = ("rel_pos_t", "pos_embed_temporal")                     # time-only tables: no image counterpart


@dataclass
class InflationReport:
    """Where every key went. Video keys: ``inflated``, ``copied``, ``resized``, ``zeroed`` or ``initialised`` (left at
    the video model's init); image keys not used: ``skipped`` (key -> reason)."""

    inflated: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    zeroed: list[str] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def filled_fraction(self, model: nn.Module) -> float:
        """The fraction of the model's parameter values that came from the image weights."""
        own = model.state_dict()
        taken = set(self.inflated + self.copied + self.resized)
        total = sum(v.numel() for v in own.values())
        return sum(own[k].numel() for k in taken) / max(total, 1)

    def summary(self) -> str:
        """One line of counts, then the keys left at initialisation and the image keys not used."""
        line = (f"{len(self.inflated)} inflated over time, {len(self.copied)} copied, {len(self.resized)} resized, "
                f"{len(self.zeroed)} zeroed, {len(self.initialised)} left at initialisation, {len(self.skipped)} "
                f"image key(s) not used")
        if self.initialised:
            line += f"\n  left at initialisation: {', '.join(self.initialised)}"
        if self.skipped:
            line += "\n  not used: " + ", ".join(f"{k} ({why})" for k, why in self.skipped.items())
        return line


def _inflate(kernel: Tensor, frames: int, mode: InflateMode) -> Tensor:
    """(C_out, C_in, kh, kw) -> (C_out, C_in, frames, kh, kw)."""
    if mode == "average":
        return kernel.unsqueeze(2).repeat(1, 1, frames, 1, 1) / frames  # PySlowFast inflate_weight
    out = kernel.new_zeros(kernel.shape[0], kernel.shape[1], frames, *kernel.shape[2:])
    out[:, :, frames // 2] = kernel                                    # the centre tap (of an even kt: the later one)
    return out


def _resize_table(table: Tensor, length: int) -> Tensor:
    """(L, C) -> (length, C), linear (align_corners=False, as PySlowFast image_init and torchvision)."""
    resized = F.interpolate(table.t()[None].float(), size=length, mode="linear", align_corners=False)
    return resized[0].t().to(table.dtype)


def _resize_spatial(pos: Tensor, grid: tuple[int, int]) -> Tensor:
    """(1, h0*w0, C) square-grid embedding -> (1, grid[0]*grid[1], C), bicubic (as ``mvit.remap_state_dict``)."""
    C = pos.shape[-1]
    side = math.isqrt(pos.shape[1])
    if side * side != pos.shape[1]:
        raise ValueError(f"pos_embed_spatial of {pos.shape[1]} positions is not a square grid")
    maps = pos.reshape(1, side, side, C).permute(0, 3, 1, 2).float()  # (1, C, h0, w0)
    maps = F.interpolate(maps, size=grid, mode="bicubic", align_corners=False)
    return maps.flatten(2).transpose(1, 2).to(pos.dtype)               # (1, h*w, C)


def inflate_image_to_video(image_state_dict: Mapping[str, Tensor], video_model: nn.Module,
                           mode: InflateMode = "average") -> InflationReport:
    """Fill ``video_model`` (in place) from the state dict of its image counterpart (see the module docstring).

    Args:
        image_state_dict: the image model's state dict in visattn keys (timm's for MViTv2), e.g.
            ``create_model("mvitv2_small", pretrained=True).state_dict()``; :func:`load_image_state_dict` reads one
            from a file or a weights tag.
        video_model: a video model (input (B, C, T, H, W)), e.g. ``create_model("mvitv2_small_video")``, with the
            image model's widths and depths (``mvitv2_small`` -> ``mvitv2_small_video``).
        mode: ``average`` (repeat over time, divide by kt) or ``centre`` (the centre tap only).

    Returns:
        the :class:`InflationReport` naming what happened to every video key and every image key not used.
    """
    if mode not in ("average", "centre"):
        raise ValueError(f"mode must be 'average' or 'centre', got {mode!r}")
    if getattr(video_model, "input_ndim", 4) != 5:
        raise ValueError(f"{type(video_model).__name__} is not a video model (input (B, C, T, H, W)); inflation fills "
                         "a video model from image weights")
    patch = image_state_dict.get("patch_embed.proj.weight")
    if patch is not None and patch.ndim != 4:
        raise ValueError(f"the image state dict's patch_embed.proj.weight is {patch.ndim}-D {tuple(patch.shape)}: "
                         "image weights have a 2-D (4-D tensor) patch kernel; is it a video checkpoint?")
    own = video_model.state_dict()
    report = InflationReport()
    new: dict[str, Tensor] = {}
    for key, target in own.items():
        leaf = key.rsplit(".", 1)[-1]
        if key not in image_state_dict:
            if leaf in _ZERO_INIT:
                new[key] = torch.zeros_like(target)
                report.zeroed.append(key)
            else:
                report.initialised.append(key)
            continue
        value = image_state_dict[key]
        if value.shape == target.shape:
            new[key] = value
            report.copied.append(key)
        elif value.ndim == 4 and target.ndim == 5 and value.shape[:2] == target.shape[:2] \
                and value.shape[2:] == target.shape[3:]:
            new[key] = _inflate(value, target.shape[2], mode)
            report.inflated.append(key)
        elif leaf in ("rel_pos_h", "rel_pos_w") and value.ndim == 2 and value.shape[1] == target.shape[1]:
            new[key] = _resize_table(value, target.shape[0])
            report.resized.append(key)
        elif key == "pos_embed_spatial" and value.ndim == 3 and value.shape[-1] == target.shape[-1]:
            new[key] = _resize_spatial(value, tuple(video_model.patch_grid[-2:]))
            report.resized.append(key)
        else:
            report.skipped[key] = f"image {tuple(value.shape)}, video {tuple(target.shape)}"
            report.initialised.append(key)
    for key in image_state_dict:
        if key not in own:
            report.skipped[key] = "not in the video model"
    video_model.load_state_dict(new, strict=False)
    return report


def load_image_state_dict(source: str) -> tuple[dict[str, Tensor], str]:
    """The state dict (visattn keys) of an image model, and its variant name, from ``source``: a visattn checkpoint
    (run folder, checkpoint folder or ``.safetensors`` with its JSON), a timm / official weights file (the
    architecture is recognised from its keys), or a published weights tag (``mvitv2_small.fb_in1k``)."""
    from ..checkpoint import load_model, resolve_model_file
    from ..registry import create_model
    from .load import identify_architecture, load_pretrained, read_state_dict
    from .registry import resolve_pretrained

    if Path(source).exists():
        weights, meta = resolve_model_file(source)
        if meta is not None:
            model, meta = load_model(source)
            name = meta.get("model") or type(model).__name__
        else:
            state = read_state_dict(weights)
            name = identify_architecture(state)
            if name is None:
                raise ValueError(f"{source}: the keys match no registered architecture; convert it with "
                                 "`visattn convert SRC --model NAME` first")
            model = create_model(name)
            load_pretrained(model, state, drop_mismatched_classifier=True)
    else:
        try:
            name, entry = resolve_pretrained(source)
        except ValueError as err:
            raise ValueError(f"{source}: no such file, and {err}") from None
        model = create_model(name, pretrained=entry.name)
    if getattr(model, "input_ndim", 4) != 4:
        raise ValueError(f"{source} holds {name}, a video model: image-to-video initialisation takes image weights "
                         "(e.g. mvitv2_small.fb_in1k)")
    return model.state_dict(), name
