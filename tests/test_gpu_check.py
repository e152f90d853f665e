"""benchmarks/gpu_check.py without a GPU: it exits 0 with a message, and its comparison code runs on the CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a CUDA device")
def test_exits_zero_without_cuda(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=300, env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device present" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_reduced_comparison_on_cpu(tmp_path) -> None:
    from visattn.registry import list_families

    gpu_check = _load()
    names = list_families()[:2]
    rows = gpu_check.compare_reduced(names, "cpu")
    assert [(r["model"], r["dtype"]) for r in rows] == [(n, d) for n in names for d in ("fp32", "bf16")]
    for r in rows:
        assert "error" not in r, r
        assert r["finite"] and r["out_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[r["dtype"]]
        limit = 1e-5 if r["dtype"] == "fp32" else 5e-2                # the same fp32 arithmetic on the same device
        assert r["out_rel"] < limit and r["grad_rel"] < 10 * limit, r
        assert all(math.isfinite(r[k]) for k in ("out_max_abs", "grad_max_abs"))
    # a passed deadline skips every remaining run, with a note
    skipped = gpu_check.compare_reduced(names[:1], "cpu", deadline=gpu_check.Deadline(0))
    assert all(r.get("skipped") for r in skipped)
    # the report: JSON and a markdown table naming every row
    result = {"gpu": "cpu", "torch": torch.__version__, "cuda": None, "deadline_s": 1, "elapsed_s": 0.5,
              "reduced": rows, "timm": {"skipped": "timm not importable: ModuleNotFoundError"}, "torchvision": {},
              "notes": []}
    json_path, md_path = gpu_check.write_results(result, tmp_path / gpu_check.slug("NVIDIA H100 80GB HBM3"))
    assert json_path.parent.name == "nvidia-h100-80gb-hbm3"
    assert json.loads(json_path.read_text())["reduced"] == rows
    table = md_path.read_text()
    assert all(f"| {r['model']} | {r['dtype']} |" in table for r in rows) and "timm not importable" in table


def test_speed_comparison_on_cpu() -> None:
    # the timing path with a reduced model against its own copy (same weights: zero difference)
    import argparse
    import copy

    import visattn
    from visattn.registry import get_model_class, list_families

    gpu_check = _load()
    name = next(n for n in list_families()
                if getattr(get_model_class(n), "task", "classification") == "classification")
    ours = visattn.create_model(name, **get_model_class(name).test_overrides)


    x = ours.example_inputs(batch=2)[0]
    args = argparse.Namespace(rounds=1, iters=1, skip_compile=True, compile_budget=0.0, pair_budget=0.0)
    row = gpu_check.compare_speed(ours, copy.deepcopy(ours), x, torch.device("cpu"), args, gpu_check.Deadline(60))
    assert row["max_abs_diff"] == 0.0 and row["ours_img_s"] > 0 and row["ref_img_s"] > 0
    assert row["compiled"].startswith("skipped")
