"""Argument helpers shared by the command modules (standard library only: imported by ``visattn --help``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_model_args", "add_runtime_args", "add_task_args", "apply_runtime", "parse_overrides", "parse_sizes",
           "task_options_given"]


def _value(text: str) -> Any:
    # JSON first (numbers, true/false, null, lists), then comma lists -> tuples, then plain strings; Python's
    # spelling None is null (config fields such as stripe_groups=None,2 take it).
    if text == "None":
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        if "," in text:
            return tuple(_value(t) for t in text.split(",") if t)
        return text
    return tuple(value) if isinstance(value, list) else value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["dims=32,64", "depths=[1,2]", "drop_path_rate=0.1"]`` -> ``{"dims": (32, 64), ...}``."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _value(text.strip())
    return out


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"32,64,96x128"`` -> ``[(32, 32), (64, 64), (96, 128)]``."""
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        h, _, w = part.partition("x")
        try:
            size = (int(h), int(w or h))
        except ValueError:
            raise ValueError(f"bad size {part!r}: use N or HxW, comma separated (e.g. 32,64,96x128)") from None
        if min(size) < 1:
            raise ValueError(f"bad size {part!r}: height and width must be positive numbers of pixels")
        sizes.append(size)
    if not sizes:
        raise ValueError("no sizes given")
    return sizes


def add_model_args(parser: argparse.ArgumentParser, *, required: bool = False, default: str | None = None) -> None:
    parser.add_argument("--model", "-m", required=required, default=default,
                        help="registered model name (see `visattn list`)")
    parser.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="model config override, repeatable: --set dims=32,64,128,256 --set drop_path_rate=0.1")


def add_runtime_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1")
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def apply_runtime(args: argparse.Namespace) -> Any:
    """Set CPU threads and return the torch device the arguments ask for."""
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    from ..train import resolve_device

    return resolve_device(getattr(args, "device", None) or "auto")


def add_task_args(parser: argparse.ArgumentParser, *, default_help: str = "the checkpoint's") -> None:
    """``--task`` (the registered tasks) and every task's options as flags, one argument group per task.

    A flag two tasks share (``--val-data``) is added once. Task packages register themselves with the standard
    library only, so this does not import torch.
    """
    from ..tasks import get_task_spec, list_tasks, option_flags

    names = list_tasks()
    parser.add_argument("--task", choices=names, default=None,
                        help=f"the task (registered: {', '.join(names)}); default: {default_help}")
    taken = {a.dest: a for a in parser._actions}
    for name in names:
        spec = get_task_spec(name)
        flags = [f for f in option_flags(spec.options) if f[0] not in taken]
        if not flags:
            continue
        group = parser.add_argument_group(f"--task {name}: {spec.help}" if spec.help else f"--task {name}")
        for dest, flag, kwargs in flags:
            taken[dest] = group.add_argument(flag, **kwargs)


def task_options_given(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """The options of ``task`` given on the command line; a flag of another task only is an error."""
    import dataclasses

    from ..tasks import get_task_spec, list_tasks

    own = {f.name for f in dataclasses.fields(get_task_spec(task).options)}
    given = {k: v for k, v in vars(args).items() if k in own and v is not None}
    for other in list_tasks():
        if other == task:
            continue
        for f in dataclasses.fields(get_task_spec(other).options):
            if f.name not in own and getattr(args, f.name, None) is not None:
                flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
                raise ValueError(f"{flag} is an option of --task {other}, not of --task {task}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
