"""Two dicts (models and attention mechanisms) and the create/list helpers around them."""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

__all__ = [
    "register_models",
    "register_attention",
    "create_model",
    "list_models",
    "list_families",
    "create_attention",
    "list_attention",
    "get_model_config",
    "config_to_dict",
    "config_from_dict",
]

# name -> (model class, default config of that variant)
_MODELS: dict[str, tuple[type[nn.Module], Any]] = {}
# name -> attention module class
_ATTENTION: dict[str, type[nn.Module]] = {}
# name -> exact parameter count of the reference implementation (timm / official code), for tests and `info`
_REFERENCE_PARAMS: dict[str, int] = {}


def _ensure_loaded() -> None:
    # Model and attention files register themselves on import; importing the packages populates the dicts.
    from . import attention, models  # noqa: F401


def register_models(model_cls: type[nn.Module], variants: Mapping[str, Any], *,
                    reference_params: Mapping[str, int] | None = None) -> None:
    """Register every variant of one family.

    Args:
        model_cls: the model class, a :class:`visattn.layers.model.VisionModel` subclass that takes one config and
            sets the contract's class attributes (``config_class``, ``task``, ``input_ndim``, ``min_input_size``,
            ``min_input_frames`` for video, ``test_overrides``).
        variants: name -> frozen config dataclass accepted by ``model_cls``.
        reference_params: name -> exact parameter count of the reference implementation with the default head;
            the generic tests require one for every variant.
    """
    _check_contract(model_cls)
    for name in (reference_params or {}):
        if name not in variants:
            raise ValueError(f"reference_params names {name!r}, which is not among the variants")
    for name, config in variants.items():
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered (by {_MODELS[name][0].__name__})")
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"variant {name!r}: config must be a dataclass instance, got {type(config).__name__}")
        _MODELS[name] = (model_cls, config)
        if reference_params and name in reference_params:
            _REFERENCE_PARAMS[name] = reference_params[name]


def _check_contract(model_cls: type[nn.Module]) -> None:
    """Refuse a model class that does not answer the questions library code asks every model."""
    from .layers.model import TASKS, VisionModel

    who = getattr(model_cls, "__name__", repr(model_cls))
    if not (isinstance(model_cls, type) and issubclass(model_cls, VisionModel)):
        raise TypeError(f"{who} must subclass visattn.layers.model.VisionModel")
    missing = [a for a in ("config_class", "task", "min_input_size") if not hasattr(model_cls, a)]
    if missing:
        raise TypeError(f"{who} must set the class attribute(s) {', '.join(missing)}")
    if model_cls.task not in TASKS:
        raise ValueError(f"{who}.task must be one of {TASKS}, got {model_cls.task!r}")
    if model_cls.input_ndim not in (4, 5):
        raise ValueError(f"{who}.input_ndim must be 4 (B, C, H, W) or 5 (B, C, T, H, W), got {model_cls.input_ndim}")
    if model_cls.input_ndim == 5 and model_cls.min_input_frames is None:
        raise ValueError(f"{who} takes video (input_ndim 5) and must set min_input_frames")
    if not isinstance(model_cls.min_input_size, int) or model_cls.min_input_size < 1:
        raise ValueError(f"{who}.min_input_size must be a positive int, got {model_cls.min_input_size!r}")


def register_attention(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering an attention mechanism under ``name``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _ATTENTION:
            raise ValueError(f"attention {name!r} is already registered (by {_ATTENTION[name].__name__})")
        _ATTENTION[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def _unknown(kind: str, name: str, known: list[str]) -> ValueError:
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Known: {', '.join(sorted(known))}."
    return ValueError(f"unknown {kind} {name!r}.{hint}")


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style ``pattern``."""
    _ensure_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def list_families() -> list[str]:
    """One registered name per model class (the first in sorted order): a representative of every family, as the
    generic tests and the GPU check run them (each with its class's reduced ``test_overrides``)."""
    _ensure_loaded()
    seen, out = set(), []
    for name in sorted(_MODELS):
        cls = _MODELS[name][0]
        if cls not in seen:
            seen.add(cls)
            out.append(name)
    return out


def get_model_config(name: str, **overrides: Any) -> Any:
    """The config of variant ``name`` with ``overrides`` applied (validated field names)."""
    _ensure_loaded()
    if name not in _MODELS:
        raise _unknown("model", name, list(_MODELS))
    config = _MODELS[name][1]
    valid = [f.name for f in dataclasses.fields(config)]
    bad = [k for k in overrides if k not in valid]
    if bad:
        raise ValueError(
            f"unknown config field(s) {', '.join(map(repr, bad))} for {name!r} ({type(config).__name__}); "
            f"valid fields: {', '.join(valid)}"
        )
    return dataclasses.replace(config, **overrides)


def _weights_for(name: str, pretrained: bool | str | None) -> tuple[str, Any]:
    """(variant, weights entry or None) for a create_model name and its ``pretrained`` argument."""
    from .weights.registry import get_weights

    entry = None
    if name not in _MODELS:                      # model.tag, or a timm / torchvision name or tag
        try:
            entry = get_weights(name)
        except ValueError:
            raise _unknown("model", name, list(_MODELS)) from None
        name = entry.model
    if pretrained is None or pretrained is False:
        return name, entry
    if pretrained is True:
        if entry is None:
            try:
                entry = get_weights(name)
            except ValueError as err:
                raise ValueError(f"{name!r} has no published weights ({err}); build it with pretrained=False or "
                                 "load your own file with checkpoint=PATH") from None
        return name, entry
    if isinstance(pretrained, str):
        from .weights.registry import _aliases, _entries

        known = pretrained in _entries() or pretrained in _aliases()
        tagged = get_weights(pretrained if known else f"{name}.{pretrained}")
        if tagged.model != name or (entry is not None and tagged is not entry):
            raise ValueError(f"pretrained={pretrained!r} names weights of {tagged.model!r} ({tagged.name}), "
                             f"which do not belong to {(entry.name if entry else name)!r}")
        return name, tagged
    raise ValueError(f"pretrained must be False, True or a tag string, got {pretrained!r}")


def create_model(name: str, *, pretrained: bool | str = False, checkpoint: Any = None, features_only: bool = False,
                 out_indices: Sequence[int] | None = None, **overrides: Any) -> nn.Module:
    """Build the registered model ``name``, with published weights if asked.

    Args:
        name: a name from :func:`list_models`, ``model.tag`` (``maxvit_tiny.in1k_384``), or a timm / torchvision
            name or tag (``maxvit_tiny_tf_384.in1k``, ``mvit_v2_s``). A tagged name builds the config its weights
            need (partition size, classes) even with ``pretrained=False``, as timm does.
        pretrained: False (random weights), True (the tag in ``name``, else the variant's default tag) or a tag
            (``"in1k_384"``, ``"maxvit_tiny.in1k_384"`` or a timm tag). The file comes from the Hugging Face Hub or
            the publisher's URL through the local caches (see ``visattn list --pretrained``).
        checkpoint: optional path or state dict passed to :func:`visattn.load_pretrained` (strict), loaded into the
            whole model (classifier included) before ``features_only`` drops the classifier.
        features_only: return a :class:`visattn.layers.features.FeatureListNet`: the list of stage maps at
            ``out_indices`` (default: every stage), with ``feature_info.channels()`` / ``.reduction()``, as timm's
            ``features_only`` models (image classifiers only).
        out_indices: the stages ``features_only`` returns; negative indices count from the last.
        **overrides: config fields to change, e.g. ``num_classes=10`` (with pretrained weights of another width
            the classifier is left fresh, with a log line); an unknown field raises a ``ValueError`` listing the
            valid ones.
    """
    _ensure_loaded()
    name, entry = _weights_for(name, pretrained)
    if checkpoint is not None and pretrained not in (False, None):
        raise ValueError("pass either pretrained=... or checkpoint=..., not both")
    config = get_model_config(name, **{**(entry.config_overrides() if entry else {}), **overrides})
    model = _MODELS[name][0](config)
    model.variant_name = name
    if entry is not None:
        model.weights_entry = entry
    if checkpoint is not None:
        from .weights import load_pretrained

        load_pretrained(model, checkpoint)
    elif pretrained not in (False, None):
        from .weights import load_pretrained

        load_pretrained(model, entry.source, hash_prefix=entry.hash_prefix, drop_mismatched_classifier=True)
    if features_only:
        from .layers.features import FeatureListNet

        return FeatureListNet(model, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices applies with features_only=True")
    return model


def get_model_class(name: str) -> type[nn.Module]:
    _ensure_loaded()
    if name not in _MODELS:
        raise _unknown("model", name, list(_MODELS))
    return _MODELS[name][0]


def reference_params(name: str) -> int | None:
    """The reference implementation's parameter count for ``name`` (None if not recorded)."""
    _ensure_loaded()
    return _REFERENCE_PARAMS.get(name)


def list_attention(pattern: str = "*") -> list[str]:
    """Sorted names of registered attention mechanisms."""
    _ensure_loaded()
    return sorted(n for n in _ATTENTION if fnmatch.fnmatch(n, pattern))


def get_attention_class(name: str) -> type[nn.Module]:
    _ensure_loaded()
    if name not in _ATTENTION:
        raise _unknown("attention", name, list(_ATTENTION))
    return _ATTENTION[name]


def create_attention(name: str, **kwargs: Any) -> nn.Module:
    """Build attention mechanism ``name``; ``kwargs`` are the module's constructor arguments."""
    cls = get_attention_class(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"create_attention({name!r}): {err}") from err


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass, with its class name for the round trip."""
    return {"__config__": type(config).__name__, **dataclasses.asdict(config)}


def _tupled(value: Any) -> Any:
    # JSON turns tuples into lists; configs hold tuples (hashable, frozen).
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value


def config_from_dict(model_cls: type[nn.Module], data: Mapping[str, Any] | str) -> Any:
    """Inverse of :func:`config_to_dict` for ``model_cls.config_class``; accepts a dict or a JSON string."""
    if isinstance(data, str):
        data = json.loads(data)
    data = dict(data)
    data.pop("__config__", None)
    config_cls = model_cls.config_class
    valid = {f.name for f in dataclasses.fields(config_cls)}
    bad = sorted(set(data) - valid)
    if bad:
        raise ValueError(f"unknown config field(s) {bad} for {config_cls.__name__}; valid fields: {sorted(valid)}")
    return config_cls(**{k: _tupled(v) for k, v in data.items()})
