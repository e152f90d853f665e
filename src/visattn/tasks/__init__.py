"""The task registry: ``register_task`` adds a task, the training loop and the command line read it.

A task package registers itself in its ``__init__.py``, which imports only the standard library: the command line
lists tasks and builds their flags (from the task's options dataclass) without importing torch; the task class is
imported when a task is used. See ``tasks/base.py`` for the interface.

    register_task("sr", "visattn.tasks.restoration.task:SuperResolutionTask", options=SROptions,
                  help="super-resolution of photos (GRL)")

A test or a user registers a task class directly: ``register_task("toy", ToyTask)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .base import DataError, NoOptions

__all__ = ["DataError", "TaskSpec", "get_task", "get_task_spec", "list_tasks", "options_from_dict",
           "options_to_dict", "register_task"]

# packages whose __init__ registers the built-in tasks (imported on first use of the registry)
_BUILTIN_PACKAGES = ("classification", "restoration", "fewshot", "video")


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: its name, the class (or ``"module:Class"`` to import lazily), options and a help line."""

    name: str
    target: Any
    options: type = NoOptions
    help: str = ""

    def load(self) -> type:
        """The task class (imported on first use)."""
        if isinstance(self.target, str):
            module, _, attr = self.target.partition(":")
            cls = getattr(importlib.import_module(module), attr)
            object.__setattr__(self, "target", cls)
        cls = self.target
        cls.name = self.name
        cls.Options = self.options
        return cls


_TASKS: dict[str, TaskSpec] = {}
_loaded = False


def _ensure_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for pkg in _BUILTIN_PACKAGES:
            importlib.import_module(f"{__name__}.{pkg}")


def register_task(name: str, task: type | str, *, options: type | None = None, help: str = "",
                  replace: bool = False) -> TaskSpec:
    """Register ``task`` (a ``Task`` subclass or ``"module:Class"``) under ``name``.

    Args:
        name: the ``--task`` name.
        task: the class, or its import path to load lazily.
        options: a frozen dataclass of the task's settings (default: the class's ``Options``). Each field becomes a
            command-line flag ``--field-name`` (``metadata``: ``help``, ``flag`` for another flag name, ``nargs`` /
            ``action`` / ``metavar`` passed to argparse).
        help: one line for ``visattn train --help``.
        replace: allow replacing a registered task (a duplicate name is an error otherwise).
    """
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a task name is letters, digits, '-' or '_', got {name!r}")
    if name in _TASKS and not replace:
        raise ValueError(f"task {name!r} is already registered ({_TASKS[name].target})")
    if options is None:
        options = getattr(task, "Options", NoOptions) if not isinstance(task, str) else NoOptions
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"options of task {name!r} must be a dataclass, got {options!r}")
    spec = TaskSpec(name=name, target=task, options=options, help=help)
    _TASKS[name] = spec
    return spec


def unregister_task(name: str) -> None:
    """Remove a task (tests that register a temporary one)."""
    _TASKS.pop(name, None)


def list_tasks() -> list[str]:
    _ensure_builtin()
    return sorted(_TASKS)


def get_task_spec(name: str) -> TaskSpec:
    _ensure_builtin()
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; registered tasks: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]


def get_task(name: str) -> type:
    """The task class registered as ``name`` (imported now if registered by path)."""
    return get_task_spec(name).load()


# --- options: dataclass <-> command line <-> JSON ---------------------------------------------------------------

def _field_types(options: type) -> dict[str, Any]:
    return typing.get_type_hints(options)


def _base_type(tp: Any) -> Any:
    """``int | None`` -> int; ``tuple[str, ...]`` stays."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _parser_for(tp: Any) -> Callable[[str], Any] | None:
    tp = _base_type(tp)
    if tp in (int, float, str):
        return tp
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0] if typing.get_args(tp) else str

        def parse(text: str) -> tuple:
            return tuple(inner(t.strip()) for t in text.split(",") if t.strip())
        parse.__name__ = f"comma-separated {getattr(inner, '__name__', 'value')} list"
        return parse
    return None


def option_flags(options: type) -> list[tuple[str, str, dict[str, Any]]]:
    """``(dest, flag, argparse keyword arguments)`` for each field of an options dataclass. Every flag defaults to
    None, so that an option not given on the command line keeps the task's (or the checkpoint's) value."""
    out = []
    types_ = _field_types(options)
    for f in dataclasses.fields(options):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": meta.pop("help", None)}
        kwargs.update({k: meta[k] for k in ("nargs", "action", "metavar") if k in meta})
        tp = _base_type(types_[f.name])
        if tp is bool:
            kwargs.setdefault("action", "store_true")
        elif "nargs" in kwargs:                        # --mean 0.5 0.5 0.5: the element type of tuple[float, ...]
            inner = typing.get_args(tp)
            kwargs["type"] = inner[0] if inner and inner[0] in (int, float, str) else str
        else:
            parse = _parser_for(tp)
            if parse is not None:
                kwargs["type"] = parse
        out.append((f.name, flag, kwargs))
    return out


def options_from_dict(options: type, values: dict[str, Any], *, what: str = "task options") -> Any:
    """An options instance from a dict (command line or JSON); unknown names fail with the valid ones."""
    names = {f.name for f in dataclasses.fields(options)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; valid: {sorted(names)}")
    return options(**{k: _tupled(v) for k, v in values.items() if v is not None})


def options_to_dict(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}


def _tupled(value: Any) -> Any:
    # JSON stores tuples as lists
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    return value
