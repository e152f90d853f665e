"""Argument helpers shared by the command modules (standard library only: imported by ``visattn --help``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_runtime_args", "apply_runtime", "parse_overrides", "parse_sizes"]


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
            sizes.append((int(h), int(w or h)))
        except ValueError:
            raise ValueError(f"bad size {part!r}: use N or HxW, comma separated (e.g. 32,64,96x128)") from None
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
