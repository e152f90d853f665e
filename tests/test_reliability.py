"""Faults on purpose: a diverged run keeps only good checkpoints and can be rescued with a new learning rate; a
resumed run holds no pruned file; a full disk leaves no temporary folder behind; settings that cannot make a run
are refused up front."""

from __future__ import annotations

import errno
import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from visattn import checkpoint as ckpt_mod
from visattn.checkpoint import (
    CheckpointError,
    discard_checkpoints_after,
    last_validated_checkpoint,
    latest_checkpoint,
    load_checkpoint,
)
from visattn.cli import main
from visattn.train import DivergenceGuard

from .test_cli_train import TINY_MODEL, _same_tensors, tiny_run, visattn  # noqa: F401 (fixture)

# 3 steps per epoch; every step checkpointed
BASE = [*TINY_MODEL, "--data", "digits", "--train-limit", "48", "--val-limit", "24", "--batch-size", "16",
        "--save-every", "1", "--deterministic", "--threads", "1", "--log-every", "1", "--bn-momentum", "0.1"]


def _epoch_one_then_killed(run: Path) -> None:
    """A 3-epoch run at a sane learning rate, killed (SIGKILL) while saving step 4: epoch 1 is validated."""
    proc = visattn("train", *BASE, "--epochs", "3", "--lr", "1e-3", "--out", str(run), check=False,
                   env={"VISATTN_FAULT_KILL_IN_SAVE": "step00000004"})
    assert proc.returncode != 0
    assert latest_checkpoint(run).name == "step00000003"


def test_divergence_keeps_only_good_checkpoints_and_a_new_lr_rescues(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _epoch_one_then_killed(run)
    # resumed with a learning rate that blows up: the run stops, names the validated epoch-1 checkpoint, and
    # removes the checkpoints after it (their weights were never validated)
    proc = visattn("train", "--resume", str(run), "--lr", "1e3", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "resuming with --lr 1000 (the run had 0.001)" in proc.stderr
    assert "training diverged" in proc.stderr and "the last good checkpoint is" in proc.stderr
    good = latest_checkpoint(run)
    assert good.name == "step00000003" and good.name in proc.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir()) == ["step00000003"]
    visattn("eval", "--checkpoint", str(good), "--threads", "1")
    assert math.isfinite(json.loads((good / "eval.json").read_text())["val_loss"])
    # rescued: the same run continues from the good checkpoint with a lower learning rate and completes
    visattn("train", "--resume", str(run), "--lr", "5e-4")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 9 and math.isfinite(summary["val_loss"])
    assert load_checkpoint(run).train_meta["config"]["lr"] == 5e-4


def test_divergence_before_any_validation_keeps_no_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = visattn("train", *BASE, "--epochs", "2", "--lr", "1e3", "--warmup-epochs", "0.25", "--out", str(run),
                   check=False)
    assert proc.returncode == 1 and "training diverged" in proc.stderr
    assert "no checkpoint had passed a validation yet" in proc.stderr
    assert latest_checkpoint(run) is None
    assert not (run / "model.safetensors").exists()


def test_divergence_guard_rule() -> None:
    guard = DivergenceGuard(10.0)
    assert all(guard.update(2.3 - 0.1 * i) is None for i in range(15))     # a falling loss
    assert all(guard.update(1.0 + (0.3 if i % 2 else -0.3)) is None for i in range(30))   # noisy, level
    reasons = [guard.update(1000.0) for _ in range(5)]
    assert reasons[-1] is not None and "over 10x its lowest level" in reasons[-1]
    assert "loss is nan" in DivergenceGuard(10.0).update(float("nan"))
    off = DivergenceGuard(0.0)
    assert all(off.update(v) is None for v in [1.0] * 10 + [1e6] * 10)   # factor 0: non-finite losses only
    resumed = DivergenceGuard(10.0, guard.state())
    assert resumed.state() == guard.state()


def test_last_validated_and_discard(tmp_path: Path) -> None:
    run = tmp_path / "run"
    root = run / "checkpoints"
    for step, validated in ((3, True), (4, False), (5, False)):
        d = root / f"step{step:08d}"
        d.mkdir(parents=True)
        (d / ckpt_mod.STATE_META).write_text(json.dumps({"eval": {"val_loss": 1.0} if validated else None}))
    (root / ckpt_mod.LATEST).write_text("step00000005")
    good = last_validated_checkpoint(run)
    assert good.name == "step00000003"
    assert discard_checkpoints_after(run, good) == good
    assert latest_checkpoint(run) == good and sorted(p.name for p in root.iterdir()) == ["latest", "step00000003"]
    assert discard_checkpoints_after(run, None) is None
    assert latest_checkpoint(run) is None and not any(p.is_dir() for p in root.iterdir())


# --- disk ------------------------------------------------------------------------------------------------------------

def _deleted_mappings(under: Path) -> list[str]:
    return [line for line in Path("/proc/self/maps").read_text().splitlines()
            if str(under) in line and "(deleted)" in line]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps (Linux)")
def test_a_loaded_checkpoint_holds_no_file(tmp_path: Path) -> None:
    """Pruning the checkpoint a run resumed from frees its disk space: nothing keeps the deleted files mapped."""
    run = tmp_path / "run"
    _epoch_one_then_killed(run)
    loaded = load_checkpoint(run)
    shutil.rmtree(loaded.path)
    assert loaded.model_state and not _deleted_mappings(run)


def test_a_failed_save_leaves_no_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    calls = []
    real = ckpt_mod.save_safetensors_atomic

    def disk_full_on_second(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, tensors, metadata)

    args = dict(model_state={"w": torch.ones(3)}, model_meta={}, train_tensors={"s": torch.zeros(1)},
                train_meta={"eval": None})
    first = ckpt_mod.save_checkpoint(tmp_path, "step00000001", **args)
    monkeypatch.setattr(ckpt_mod, "save_safetensors_atomic", disk_full_on_second)
    with pytest.raises(CheckpointError, match="no space left.*latest complete checkpoint is .*step00000001"):
        ckpt_mod.save_checkpoint(tmp_path, "step00000002", **args)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step00000001"]
    assert latest_checkpoint(tmp_path) == first


@pytest.fixture
def small_filesystem(tmp_path: Path):
    """A 1.5 MB tmpfs (room for about one checkpoint of the tiny model), where mounting is permitted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not permitted here: {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_disk_full_on_a_small_filesystem(small_filesystem: Path) -> None:
    run = small_filesystem / "run"
    proc = visattn("train", *BASE, "--epochs", "2", "--lr", "1e-3", "--ema", "0.9", "--out", str(run), check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no space left" in proc.stderr.lower()
    leftovers = [p for p in run.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers
    latest = latest_checkpoint(run)
    if latest is not None:                                             # what was saved is complete and loads
        assert load_checkpoint(latest).train_meta["step"] >= 1


# --- settings refused up front -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, message", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--epochs", "-1"], "--epochs must be at least 1"),
    (["--img-size", "0"], "--img-size must be a positive number of pixels"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "0"], "--lr must be positive"),
    (["--keep", "0"], "--keep must be at least 1"),
])
def test_bad_settings_are_refused_before_anything_is_written(flags: list[str], message: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY_MODEL, "--data", "digits", "--epochs", "1", *flags, "--out", str(run)]) == 1
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_killed_while_writing_the_final_model_resumes_to_the_same_result(tiny_run: Path, tmp_path: Path) -> None:
    # every epoch done and checkpointed, then killed before model.safetensors / summary.json were written
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("model.safetensors", "model.json", "summary.json"):
        (run / name).unlink()
    visattn("train", "--resume", str(run))
    assert _same_tensors(run / "model.safetensors", tiny_run / "model.safetensors") == []
    timing = ("out", "img_per_s", "epoch_time_s")
    resumed, uninterrupted = (json.loads((r / "summary.json").read_text()) for r in (run, tiny_run))
    assert {k: v for k, v in resumed.items() if k not in timing} == {k: v for k, v in uninterrupted.items()
                                                                     if k not in timing}
