"""visattn: efficient vision attention, and the backbones and tasks built on it."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["create_attention", "create_model", "layers", "list_attention", "list_models", "load_pretrained"]

# Names resolved on first use (PEP 562), so `import visattn` - and the `visattn --help` console script - does not
# import torch until something needs it.
_LAZY = {
    "create_model": "registry",
    "list_models": "registry",
    "create_attention": "registry",
    "list_attention": "registry",
    "load_pretrained": "weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)      # submodules: layers, registry, models...
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
