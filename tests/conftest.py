"""Shared fixtures: deterministic seeds, small thread count, golden-file loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Slow tests (exports, compiles: up to ~100 s each) first: `make test` runs `-n 2 --dist worksteal`, and in
    # collection order they came last, leaving one worker alone on them for minutes (620 s wall at 108% CPU).
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def load_golden(case: str) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """(metadata, reference state dict, input, reference output) of ``tests/golden/<case>.safetensors``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = GOLDEN / f"{case}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(str(path))
    state = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
    return meta, state, tensors["input"], tensors["output"]


def golden_overrides(meta: dict) -> dict:
    """visattn config overrides from golden metadata (JSON lists back to tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in meta["visattn_overrides"].items()}
