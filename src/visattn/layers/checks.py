"""Input validation shared by attention modules and models: clear errors instead of deep tracebacks.

:func:`check_image` checks a forward's input; :func:`check_config` checks a model config's field types and values
(every family's config calls it from ``__post_init__``, naming its positive and non-negative fields once).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable
from typing import Any

from torch import Tensor
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ["ConfigTypeError", "check_config", "check_image"]


class ConfigTypeError(TypeError, ValueError):
    """A config field holds a value of the wrong type (a ``TypeError``, and a ``ValueError`` like every bad-input
    error of the library, so that one ``except ValueError`` catches bad configs)."""


def check_image(x: object, channels: int, *, who: str, min_size: int = 1, ndim: int = 4) -> None:
    """Raise a ``ValueError`` unless ``x`` is a floating tensor (B, channels, *spatial) with spatial >= min_size.

    ``ndim`` is 4 for images (B, C, H, W) and 5 for video (B, C, T, H, W).
    """
    if is_fx_symbolic_tracing():                  # torch.fx symbolic tracing passes a Proxy: nothing to check eagerly
        return
    layout = "(B, C, H, W)" if ndim == 4 else "(B, C, T, H, W)"
    if not isinstance(x, Tensor):
        raise ValueError(f"{who} expects a torch.Tensor {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{who} expects a {ndim}-D tensor {layout} with C={channels}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who} expects a floating-point tensor (float32/float16/bfloat16), got {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{who} expects {channels} input channels {layout}, got {x.shape[1]} (shape {tuple(x.shape)})")
    if x.shape[0] < 1:
        raise ValueError(f"{who} needs a batch of at least one sample (B >= 1), got shape {tuple(x.shape)}")
    spatial = tuple(x.shape[2:])
    if any(s < min_size for s in spatial[-2:]):
        raise ValueError(f"{who} needs height and width >= {min_size}, got {spatial[-2]}x{spatial[-1]}")


@functools.cache
def _field_types(config_cls: type) -> dict[str, Any]:
    return typing.get_type_hints(config_cls)


def _type_name(tp: Any) -> str:
    return tp.__name__ if type(tp) is type else repr(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of the annotated type ``tp`` (int, float, bool, str, None, unions, tuples)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:                                      # an int is a valid float (mlp_ratio=4)
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    return isinstance(value, tp) if type(tp) is type else True


def _numbers(value: Any) -> Iterable[int | float]:
    """The numbers inside a field value (nested tuples flattened; None and strings left out)."""
    if isinstance(value, tuple):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


def _tupled(value: Any) -> Any:
    return tuple(_tupled(v) for v in value) if isinstance(value, (list, tuple)) else value


def check_config(config: Any, *, positive: Iterable[str] = (), nonnegative: Iterable[str] = ()) -> None:
    """Check the fields of a config dataclass against their annotations and value ranges.

    Lists are taken as tuples (JSON has no tuples) and stored so. Every float must be finite.

    Args:
        config: a (frozen) dataclass instance; called from its ``__post_init__``.
        positive: fields whose numbers (each number of a tuple) must be > 0.
        nonnegative: fields whose numbers must be >= 0.

    Raises:
        ConfigTypeError: a field of the wrong type, naming the field and the annotated type.
        ValueError: a number out of range, naming the field and what is allowed.
    """
    who = type(config).__name__
    hints = _field_types(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, list) or (isinstance(value, tuple) and any(isinstance(v, list) for v in value)):
            value = _tupled(value)
            object.__setattr__(config, f.name, value)
        tp = hints[f.name]
        if not _matches(value, tp):
            raise ConfigTypeError(f"{who}.{f.name} must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
        for v in _numbers(value):
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{who}.{f.name} must be finite, got {value!r}")
    for names, strict, kind in ((positive, True, "positive (> 0"), (nonnegative, False, "non-negative (>= 0")):
        for name in names:
            value = getattr(config, name)
            if any(v <= 0 if strict else v < 0 for v in _numbers(value)):
                each = " each" if isinstance(value, tuple) else ""
                raise ValueError(f"{who}.{name} must be {kind}{each}), got {value!r}")
