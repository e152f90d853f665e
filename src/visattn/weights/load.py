"""Read a checkpoint safely (safetensors, or ``torch.load(weights_only=True)``) and load it into a model.

Each model class may define ``remap_state_dict(state_dict, model)`` that turns timm or official keys into its own;
this module does the reading, the unwrapping of common containers and the strict comparison.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["ArchitectureMismatchError", "LoadResult", "read_state_dict", "load_pretrained", "identify_architecture"]

_log = logging.getLogger("visattn.weights")

# Containers that training scripts wrap a state dict in (timm, torchvision references, DeiT, official repos).
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "params", "module", "net", "params_ema")


class ArchitectureMismatchError(ValueError):
    """The checkpoint holds another registered architecture (``found``) than the model it was loaded into."""

    def __init__(self, message: str, found: str):
        super().__init__(message)
        self.found = found


class LoadResult(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


def read_state_dict(checkpoint: str | os.PathLike | Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` dict from a path (.safetensors, .pth/.pt/.bin/.ckpt) or a mapping."""
    if isinstance(checkpoint, Mapping):
        state = dict(checkpoint)
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            try:
                state = load_file(str(path), device="cpu")
            except Exception as err:  # truncated, or not a safetensors file: SafetensorError names no path
                raise ValueError(f"{path} is not a readable safetensors file ({err})") from None
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # pickle with arbitrary objects is refused on purpose
                raise ValueError(
                    f"could not load {path} with torch.load(weights_only=True): {err}. Only tensors and plain "
                    "containers are accepted; convert the file to .safetensors."
                ) from err
        else:
            raise ValueError(f"unsupported checkpoint format {path.suffix!r} ({path}); expected .safetensors, "
                             ".pth, .pt, .bin or .ckpt")
    for key in _CONTAINER_KEYS:
        if key in state and isinstance(state[key], Mapping) and not isinstance(state[key], Tensor):
            state = dict(state[key])
            break
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"checkpoint entries are not tensors: {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    return state


def identify_architecture(state: Mapping[str, Tensor]) -> str | None:
    """The registered variant whose keys (after its family's remapping) the state dict has, exactly; among variants
    with the same keys (maxvit_tiny and maxvit_small) the one with the most tensors of the same shape. None if no
    variant has those keys. Models are built on the meta device (no memory): first one variant per family, whose
    key names with the indices blanked out must mostly agree, then every variant of the families that do."""
    from ..registry import create_model, get_model_class, list_models

    def built(name: str) -> tuple[dict[str, Tensor], dict[str, Tensor]] | None:
        with torch.device("meta"):
            try:
                model = create_model(name)
                remapped = model.remap_state_dict(dict(state), model) if hasattr(model, "remap_state_dict") else state
            except Exception:  # noqa: BLE001 - a remapping meeting another family's keys may fail in any way
                return None
        return model.state_dict(), remapped

    def pattern(keys: object) -> set[str]:
        return {re.sub(r"\.\d+(?=\.)", ".#", k) for k in keys}           # stages.3.blocks.1.x -> stages.#.blocks.#.x

    families: dict[type, list[str]] = {}
    for name in list_models():
        families.setdefault(get_model_class(name), []).append(name)
    best, best_score = None, -1
    for names in families.values():
        first = built(names[0])
        if first is None:
            continue
        own, remapped = pattern(first[0]), pattern(first[1])
        if len(own & remapped) < 0.8 * len(own | remapped):
            continue
        for name in names:
            found = first if name == names[0] else built(name)
            if found is None or not found[0] or set(found[1]) != set(found[0]):
                continue
            score = sum(found[1][k].shape == v.shape for k, v in found[0].items())
            if score > best_score:
                best, best_score = name, score
    return best


def load_pretrained(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Tensor], *,
                    strict: bool = True, hash_prefix: str | None = None,
                    drop_mismatched_classifier: bool = False) -> LoadResult:
    """Load visattn, timm or official weights into ``model``.

    Args:
        model: a visattn model.
        checkpoint: path (.safetensors, or .pth/.bin loaded with ``weights_only=True``), a state dict,
            ``hf-hub:ORG/REPO[/FILE]`` (through huggingface_hub and its cache), or an ``http(s)://`` / ``file://``
            URL (through the torch hub cache); see :func:`visattn.weights.hub.fetch`.
        strict: raise if any key is missing or unexpected. With ``strict=False`` those are returned instead.
            A shape mismatch always raises (a silent partial load is never what a user wants), except for the
            classifier with ``drop_mismatched_classifier``.
        hash_prefix: leading hex digits of the file's SHA-256, checked when a URL is downloaded.
        drop_mismatched_classifier: a classifier (``head.fc``) of another width than the model's is left out
            with a log line and the model keeps its fresh one (``create_model(..., pretrained=...,
            num_classes=10)``). The dropped keys are not reported as missing.

    Returns:
        The missing and unexpected keys (empty lists after a strict load). A model on the meta device is checked
        (keys and shapes) but not loaded.
    """
    if isinstance(checkpoint, str):
        from .hub import fetch, is_remote

        if is_remote(checkpoint):
            checkpoint = fetch(checkpoint, hash_prefix=hash_prefix)
    state = read_state_dict(checkpoint)
    raw = dict(state)
    remap = getattr(model, "remap_state_dict", None)
    if remap is not None:
        state = remap(state, model)
    own = model.state_dict()
    name = getattr(model, "variant_name", type(model).__name__)
    if drop_mismatched_classifier:
        head = [k for k in state if k.startswith("head.fc.")]
        if any(k not in own or state[k].shape != own[k].shape for k in head):
            width = next((tuple(state[k].shape)[0] for k in head if k.endswith("weight")), "?")
            _log.warning("%s: the checkpoint's classifier has %s classes, the model %s: classifier (head.fc) "
                         "not loaded, left at its fresh initialisation", name, width,
                         getattr(getattr(model, "config", None), "num_classes", "?"))
            state = {k: v for k, v in state.items() if k not in head}
            own = {k: v for k, v in own.items() if not k.startswith("head.fc.")}
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    bad = [k for k in own if k in state and state[k].shape != own[k].shape]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in bad]
    if (bad or (strict and (missing or unexpected))) and not (bad and all(k.startswith("head.") for k in bad)
                                                              and not missing and not unexpected):
        other = identify_architecture(raw)
        if other is not None and other != name:
            raise ArchitectureMismatchError(
                f"the checkpoint holds a {other} model, not {name} ({len(missing)} missing key(s), {len(unexpected)} "
                f"unexpected, {len(bad)} of another shape); build {other} to load it", other)
    if mismatched:
        hint = ""
        if all(k.startswith("head.") for k in bad) and not missing and not unexpected:
            hint = " (a different number of classes? build the model with num_classes=... or reset_classifier)"
        raise ValueError(f"cannot load checkpoint into {name}: {len(mismatched)} shape mismatch(es){hint}:\n  "
                         + "\n  ".join(mismatched[:20]))
    if strict and (missing or unexpected):
        raise ValueError(
            f"checkpoint does not match {name}: {len(missing)} missing key(s), {len(unexpected)} unexpected key(s)."
            f"\n  missing: {missing[:20]}{' ...' if len(missing) > 20 else ''}"
            f"\n  unexpected: {unexpected[:20]}{' ...' if len(unexpected) > 20 else ''}"
        )
    if any(v.is_meta for v in own.values()):
        # a model on the meta device (a keys-and-shapes check before allocating): there is nothing to copy into, and
        # load_state_dict would warn twice per tensor that its copy is a no-op
        return LoadResult(missing, unexpected)
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return LoadResult(missing, unexpected)
