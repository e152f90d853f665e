"""FSDP2 (`visattn train --fsdp`): the sharding rule over every registered family, a 2-process torchrun run that
trains like one process, sharded checkpoints that resume bit for bit after SIGKILL, and a final model that
`visattn eval` takes like any other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import visattn
from visattn.checkpoint import CheckpointError, load_model, resolve_model_file
from visattn.cli import main
from visattn.distributed import shard_units
from visattn.registry import get_model_class, list_families

from .test_cli_train import TINY, _same_tensors, tiny_run  # noqa: F401  (tiny_run: the shared 1-process run)

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "visattn.cli", "train", *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run of test_cli_train (EMA, a checkpoint every step), sharded over 2 processes."""
    run = tmp_path_factory.mktemp("fsdp") / "run"
    proc = _torchrun(*TINY, "--fsdp", "--out", str(run))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(2 processes)" in proc.stdout
    return run


@pytest.mark.parametrize("name", list_families())
def test_shard_units_nest_inner_first(name: str) -> None:
    model = visattn.create_model(name, **get_model_class(name).test_overrides)
    units = shard_units(model)
    names = [n for n, _ in units]
    assert names, f"{name}: no repeated layers to shard"
    for i, (unit, module) in enumerate(units):
        assert any(True for _ in module.parameters()), unit
        # a unit inside another one comes first (fully_shard must see inner units before outer ones)
        assert not any(unit.startswith(outer + ".") for outer in names[:i]), (unit, names[:i])
    # at most two levels: no unit inside a unit inside a unit
    assert not any(sum(u.startswith(o + ".") for o in names) > 1 for u in names), names


def test_fsdp_forward_backward_every_family() -> None:
    """Every family trains sharded (a process group of one): FSDP's hooks unshard each unit before its use."""
    script = textwrap.dedent("""
        import torch
        from tests.test_models import FAMILIES, _small
        from visattn.distributed import init_distributed, shard_model

        init_distributed("cpu", group_of_one=True)
        for name in FAMILIES:
            torch.manual_seed(0)
            plain = _small(name).eval()
            x = plain.example_inputs(2)
            sharded = _small(name).eval()
            sharded.load_state_dict(plain.state_dict())
            shard_model(sharded, "cpu")
            with torch.no_grad():
                torch.testing.assert_close(sharded(*x), plain(*x), rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"{name}: {m}")
            sharded.train()(*x).square().mean().backward()
            grads = [p.grad for p in sharded.parameters() if p.requires_grad]
            assert all(g is not None for g in grads), name
            print(name, "ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" ok") == len(list_families())


@pytest.mark.slow  # 2-process torchrun runs: ~2 min together on 2 shared cores
def test_fsdp_two_processes_match_one(tiny_run: Path, fsdp_run: Path) -> None:  # noqa: F811
    rows_one = [json.loads(r) for r in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(r) for r in (fsdp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
    for a, b in zip(rows_one, rows_two):                               # every step's loss, every epoch's val loss
        for key in ("loss",) if a["kind"] == "step" else ("val_loss", "ema_val_loss"):
            assert abs(a[key] - b[key]) < 1e-5, (key, a, b)
    from visattn.tasks.classification.data import load_digits

    images, _, _ = load_digits(32)
    x = (images[:16].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        torch.testing.assert_close(load_model(fsdp_run)[0](x), load_model(tiny_run)[0](x), rtol=1e-4, atol=1e-4)
    # The checkpoints are sharded: one file of shards per process, no whole-model file to load by mistake.
    latest = fsdp_run / "checkpoints" / "step00000006"
    assert sorted(p.name for p in (latest / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (latest / "model.safetensors").exists()
    with pytest.raises(CheckpointError, match="sharded"):
        resolve_model_file(latest)


@pytest.mark.slow  # 2-process torchrun runs: ~2 min together on 2 shared cores
def test_fsdp_resume_after_sigkill_is_exact(fsdp_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    # The main process is killed while step 4's checkpoint is being assembled: `latest` keeps naming step 3 (the
    # end of epoch 1), and the resumed run trains epoch 2 from there.
    proc = _torchrun(*TINY, "--fsdp", "--out", str(run), env={"VISATTN_FAULT_KILL_IN_SAVE": "step00000004"})
    assert proc.returncode != 0
    assert (run / "checkpoints" / "latest").read_text() == "step00000003"
    assert not (run / "model.safetensors").exists()
    proc = _torchrun("--resume", str(run))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "from step 3" in proc.stdout
    assert _same_tensors(run / "model.safetensors", fsdp_run / "model.safetensors") == []
    final = "checkpoints/step00000006"
    assert _same_tensors(run / final / "train_state.safetensors", fsdp_run / final / "train_state.safetensors") == []
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    rows_ref = [json.loads(r) for r in (fsdp_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [r["step"] for r in rows_ref]
    assert [r.get("loss", r.get("val_loss")) for r in rows] == [r.get("loss", r.get("val_loss")) for r in rows_ref]


@pytest.mark.slow  # 2-process torchrun runs: ~2 min together on 2 shared cores
def test_fsdp_final_model_evaluates(fsdp_run: Path, tmp_path: Path) -> None:
    model, meta = load_model(fsdp_run)
    assert meta["model"] == "maxvit_tiny" and meta["ema"] is True and meta["step"] == 6
    assert main(["eval", "--checkpoint", str(fsdp_run), "--limit", "24", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    last = [json.loads(r) for r in (fsdp_run / "metrics.jsonl").read_text().splitlines()][-1]
    # the exported model is the EMA: `visattn eval` reproduces the run's last EMA validation loss
    assert report["val_count"] == 24
    assert report["val_loss"] == pytest.approx(last["ema_val_loss"], abs=1e-6)


def test_fsdp_without_torchrun_is_a_group_of_one(tmp_path: Path) -> None:
    from .test_cli_train import TINY_MODEL, visattn as visattn_cli

    run = tmp_path / "one"
    visattn_cli("train", *TINY_MODEL, "--train-limit", "32", "--val-limit", "8", "--batch-size", "16", "--epochs", "1",
                "--threads", "1", "--fsdp", "--amp", "bf16", "--out", str(run))
    latest = run / "checkpoints" / "step00000002"
    assert sorted(p.name for p in (latest / "sharded").iterdir()) == [".metadata", "__0_0.distcp"]
    model, meta = load_model(run)
    assert meta["step"] == 2 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
