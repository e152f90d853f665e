"""Every golden file made from a reference implementation: visattn, given the reference weights, gives its output.

The files come from ``scripts/make_golden.py`` (and the family scripts it names) in the reference environment; each
records the visattn model name and the config overrides that describe the reference architecture. Adding a golden
file adds a test here; family test files only add what is specific (other code paths, padding settings).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import visattn

from .conftest import GOLDEN, golden_overrides, load_golden


def golden_model_cases() -> list[str]:
    cases = []
    for path in sorted(GOLDEN.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata().get("meta", "{}"))
        if "visattn_model" in meta:
            cases.append(path.stem)
    return cases


@pytest.mark.parametrize("case", golden_model_cases())
def test_reference_output_parity(case: str) -> None:
    meta, state, x, expected = load_golden(case)
    model = visattn.create_model(meta["visattn_model"], **golden_overrides(meta)).eval()
    assert visattn.load_pretrained(model, state) == ([], [])  # strict: every key of the reference maps
    with torch.no_grad():
        out = model(x)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
