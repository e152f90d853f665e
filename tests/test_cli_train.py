"""End-to-end tests of `visattn train / eval / predict` on tiny data: subprocesses running the real console entry
point, resume after SIGKILL, atomic checkpoints, a 2-process torchrun run, and the bad-input errors."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from visattn.cli import main

# A reduced MaxViT (every block type, padding in the late stages) on 48 digits: 3 steps per epoch.
TINY_MODEL = ["--model", "maxvit_tiny", "--set", "stem_width=8", "--set", "dims=8,16,16,16", "--set",
              "depths=1,1,1,1", "--set", "head_dim=8", "--set", "partition_size=4"]
TINY = [*TINY_MODEL, "--data", "digits", "--train-limit", "48", "--val-limit", "24", "--batch-size", "16",
        "--epochs", "2", "--save-every", "1", "--deterministic", "--ema", "0.9", "--threads", "1", "--log-every", "1"]
PNG = b"\x89PNG\r\n\x1a\n"


def visattn(*args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `python -m visattn.cli ARGS` in a fresh process (the console script's code path)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "visattn.cli", *args], check=False, capture_output=True, text=True,
                          env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"visattn {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted tiny training run, shared by every test (and every xdist worker, via a file lock)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):                          # workers' folders share this test run's parent
        root = root.parent
    run = root / "visattn_tiny_run"
    with open(root / "visattn_tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run / "summary.json").exists():
            shutil.rmtree(run, ignore_errors=True)
            visattn("train", *TINY, "--out", str(run))
    return run


def _same_tensors(a: Path, b: Path) -> list[str]:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


def test_train_builtin_writes_run_folder(tiny_run: Path) -> None:
    for name in ("model.safetensors", "model.json", "metrics.jsonl", "metrics.csv", "summary.json"):
        assert (tiny_run / name).is_file(), name
    for name in ("curves.png", "confusion.png"):
        assert (tiny_run / name).read_bytes()[:8] == PNG, name
    meta = json.loads((tiny_run / "model.json").read_text())
    assert meta["model"] == "maxvit_tiny" and meta["config"]["dims"] == [8, 16, 16, 16]
    assert meta["classes"] == [str(d) for d in range(10)] and meta["ema"] is True
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3, 4, 5, 6]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(0 <= r["val_top1"] <= r["val_top5"] <= 100 and r["val_count"] == 24 for r in epochs)
    # warm-up then cosine: the last logged lr is below the first epoch's peak
    assert rows[-1]["lr"] < epochs[0]["lr"]
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["best"]["metric"] == "val_top1"
    assert (tiny_run / "checkpoints" / "latest").read_text() == "step00000006"


def test_resume_after_sigkill_mid_epoch_is_exact(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "killed"
    # SIGKILL in the middle of epoch 2, while step 5's checkpoint is being written (files done, not yet renamed):
    # `latest` must still name step 4, complete.
    proc = visattn("train", *TINY, "--out", str(run), env={"VISATTN_FAULT_KILL_IN_SAVE": "step00000005"},
                   check=False)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "latest").read_text() == "step00000004"
    assert any(p.name.startswith(".tmp-step00000005") for p in (run / "checkpoints").iterdir())
    assert not (run / "model.safetensors").exists()
    # Resume: it finishes with exactly the weights, optimizer, EMA and RNG states of the uninterrupted run.
    proc = visattn("train", "--resume", str(run))
    assert "from step 4" in proc.stdout
    assert _same_tensors(run / "model.safetensors", tiny_run / "model.safetensors") == []
    final = "checkpoints/step00000006"
    assert _same_tensors(run / final / "model.safetensors", tiny_run / final / "model.safetensors") == []
    assert _same_tensors(run / final / "train_state.safetensors", tiny_run / final / "train_state.safetensors") == []
    assert not any(p.name.startswith(".tmp-") for p in (run / "checkpoints").iterdir())
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [json.loads(r)["step"] for r in
                                                     (tiny_run / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_two_processes_match_one(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "visattn.cli", "train", *TINY, "--out", str(run)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "(2 processes)" in proc.stdout
    rows_one = [json.loads(r) for r in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
    for a, b in zip(rows_one, rows_two):                               # every step's loss, every epoch's val loss
        key = "loss" if a["kind"] == "step" else "val_loss"
        assert abs(a[key] - b[key]) < 1e-5, (a, b)
    # The trained models give the same outputs. (Weights are compared through outputs: parameters whose exact
    # gradient is zero, e.g. a bias right before a BatchNorm, get rounding-noise gradients that AdamW normalises
    # into visible updates, differently in the two runs, without any effect on the function.)
    from visattn.checkpoint import load_model
    from visattn.tasks.classification.data import load_digits

    images, _, _ = load_digits(32)
    x = (images[:16].float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        torch.testing.assert_close(load_model(run)[0](x), load_model(tiny_run)[0](x), rtol=1e-4, atol=1e-4)


def test_eval_reports_accuracy_and_confusion(tiny_run: Path, tmp_path: Path) -> None:
    proc = visattn("eval", "--checkpoint", str(tiny_run), "--limit", "40", "--out", str(tmp_path))
    assert "top-1" in proc.stdout and "top-5" in proc.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    confusion = torch.tensor(report["confusion"])
    assert confusion.shape == (10, 10) and int(confusion.sum()) == report["val_count"] == 40
    assert report["val_top1"] == pytest.approx(100 * float(confusion.diag().sum()) / 40)
    assert report["val_top1"] <= report["val_top5"]
    assert (tmp_path / "confusion.png").read_bytes()[:8] == PNG


def test_predict_top_k_and_skips_unreadable(tiny_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from visattn.tasks.classification.data import load_digits

    images, _, _ = load_digits(32)
    paths = []
    for i in range(2):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    proc = visattn("predict", "--checkpoint", str(tiny_run), *paths, str(broken), "--topk", "3", "--json")
    results = json.loads(proc.stdout)
    assert [r["image"] for r in results] == paths
    for r in results:
        probs = [t["prob"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class"] in [str(d) for d in range(10)] for t in r["top"])
    assert "broken.png" in proc.stderr and "skipped 1 of 3" in proc.stderr


def _image_folder(root: Path, per_class: int = 6) -> Path:
    """Three classes of 40x40 colour images (red / green / blue squares with noise), plus junk files."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["red", "green", "blue"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(40, 40, 3, generator=g) * 60).to(torch.uint8)
            pixels[8:32, 8:32, c] = 220
            Image.fromarray(pixels.numpy()).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "green" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "blue" / "notes.txt").write_text("not an image")
    return root


def test_train_image_folder_skips_bad_files(tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data")
    run = tmp_path / "run"
    # also exercises bf16 autocast and gradient checkpointing in a real run
    proc = visattn("train", *TINY_MODEL, "--data", str(data), "--img-size", "32", "--epochs", "1",
                   "--batch-size", "6", "--threads", "1", "--out", str(run), "--val-fraction", "0.34",
                   "--amp", "bf16", "--grad-checkpointing")
    assert "corrupt.jpg" in proc.stderr and "notes.txt" in proc.stderr
    assert "skipped 2 unreadable or non-image file(s)" in proc.stderr
    meta = json.loads((run / "model.json").read_text())
    assert meta["classes"] == ["blue", "green", "red"] and meta["config"]["num_classes"] == 3
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_count"] == 6  # 2 of the 6 readable images per class are held out
    # eval rebuilds the same held-out split from what model.json records
    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["val_count"] == 6


# --- bad input: one line on stderr, exit status 1, never a traceback ----------------------------------------------

def _fails(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(list(args)) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_missing_and_empty_data_dir(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = _fails(capsys, "train", *TINY_MODEL, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"))
    assert "data directory not found" in err and "nope" in err
    (tmp_path / "empty").mkdir()
    err = _fails(capsys, "train", *TINY_MODEL, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r"))
    assert "no images found" in err


def test_unknown_model_and_field(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = _fails(capsys, "train", "--model", "maxvit_tinny", "--train-limit", "16", "--out", str(tmp_path / "r"))
    assert "unknown model 'maxvit_tinny'" in err and "maxvit_tiny" in err
    err = _fails(capsys, "train", "--model", "maxvit_tiny", "--set", "dimz=8", "--train-limit", "16",
                 "--out", str(tmp_path / "r"))
    assert "dimz" in err and "valid fields" in err


def test_resolution_too_small(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    err = _fails(capsys, "train", *TINY_MODEL, "--img-size", "16", "--train-limit", "16", "--out", str(tmp_path))
    assert "--img-size 16 is too small" in err and "32" in err


def test_checkpoint_of_another_architecture(capsys: pytest.CaptureFixture, tiny_run: Path, tmp_path: Path) -> None:
    err = _fails(capsys, "eval", "--checkpoint", str(tiny_run), "--model", "davit_tiny")
    assert "holds a maxvit_tiny" in err
    bare = tmp_path / "weights.safetensors"                             # weights without model.json
    shutil.copy(tiny_run / "model.safetensors", bare)
    err = _fails(capsys, "predict", "--checkpoint", str(bare), "--model", "maxvit_small", str(bare))
    assert "another architecture" in err
    err = _fails(capsys, "eval", "--checkpoint", str(tmp_path / "missing.safetensors"))
    assert "checkpoint not found" in err


def test_existing_run_needs_resume(capsys: pytest.CaptureFixture, tiny_run: Path) -> None:
    err = _fails(capsys, "train", *TINY_MODEL, "--out", str(tiny_run))
    assert "--resume" in err


def test_nan_loss_stops_and_keeps_no_unvalidated_checkpoint(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    run = tmp_path / "nan"
    # lr 1e30: step 1 is finite (and checkpointed), its update wrecks the weights, step 2's loss is NaN. The step-1
    # checkpoint was never validated (and its weights give the NaN): it is not kept as a good one.
    err = _fails(capsys, "train", *TINY_MODEL, "--train-limit", "48", "--batch-size", "16", "--lr", "1e30",
                 "--warmup-epochs", "0", "--clip-grad", "0", "--save-every", "1", "--out", str(run))
    assert "loss is nan" in err and "step 2" in err and "no checkpoint had passed a validation yet" in err
    assert not (run / "checkpoints" / "latest").exists()
    assert not any(p.is_dir() for p in (run / "checkpoints").iterdir())
    assert not (run / "model.safetensors").exists()
