"""The few-shot task: episodes, loss, Dice, the SSL-ALPNet evaluation protocol, training through the shared loop
(in process and with the command line: train, eval, predict, exact resume), predict and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from visattn.tasks.base import DataError
from visattn.tasks.fewshot import FewShotOptions
from visattn.tasks.fewshot.data import FewShotData, Volume, load_fewshot_data
from visattn.tasks.fewshot.episodes import sample_episodes, sample_pseudo_episodes
from visattn.tasks.fewshot.metrics import _chunk_supports, dice_score, evaluate_fewshot, iteration_losses

TINY = {"depths": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 8, "dim": 32, "num_heads": 4,
        "num_iters": 2, "mlp_ratio": 2.0}


def _synthetic_volume(seed: int, depth: int = 12, size: int = 40) -> Volume:
    """Slices with a bright disc (class 1), a dark square (class 2) and a mid-grey ring (class 3) whose sizes vary
    along the volume, on noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = 0.3 * torch.randn(depth, size, size, generator=g)
    label = torch.zeros(depth, size, size, dtype=torch.uint8)
    for z in range(depth):
        r = 3 + 4 * (1 - abs(z - depth / 2) / (depth / 2))
        cx, cy = 12 + int(torch.randint(-2, 3, (1,), generator=g)), 12
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
        square = (xx >= 24) & (xx < 24 + int(r) + 3) & (yy >= 22) & (yy < 22 + int(r) + 3)
        d2 = (xx - 12) ** 2 + (yy - 30) ** 2
        ring = (d2 <= (r + 2) ** 2) & (d2 >= r ** 2) if 2 <= z < depth - 2 else torch.zeros_like(disc)
        image[z][disc] += 2.0
        image[z][square] -= 2.0
        image[z][ring] += 1.0
        label[z][disc], label[z][square], label[z][ring] = 1, 2, 3
    return Volume(name=f"synthetic_{seed}", image=image, label=label)


def _data() -> FewShotData:
    return FewShotData(train=[_synthetic_volume(i) for i in range(3)], test=[_synthetic_volume(10 + i) for i in range(3)],
                       classes={"disc": 1, "square": 2, "ring": 3}, train_classes=["disc", "square"],
                       test_classes=["ring"], source={"source": "synthetic", "img_size": 40})


def test_episodes_are_one_way_k_shot_from_two_volumes() -> None:
    data = _data()
    g = torch.Generator().manual_seed(0)
    q, qm, s, sm = sample_episodes(data.train, [1, 2], 5, 3, g)
    assert q.shape == (5, 3, 40, 40) and qm.shape == (5, 40, 40)
    assert s.shape == (5, 3, 3, 40, 40) and sm.shape == (5, 3, 40, 40)
    assert set(qm.unique().tolist()) <= {0.0, 1.0} and (qm.flatten(1).sum(1) > 0).all()
    assert (sm.flatten(2).sum(-1) > 0).all()                           # no empty support mask, even after warping
    # Same seed, same episodes (training is reproducible step by step).
    q2, *_ = sample_episodes(data.train, [1, 2], 5, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(q, q2)


def test_self_supervised_episodes_from_supervoxels() -> None:
    vols = [_synthetic_volume(i) for i in range(2)]
    with pytest.raises(DataError, match="supervoxel"):
        sample_pseudo_episodes(vols, 2, 1, torch.Generator().manual_seed(0))
    yy, xx = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    blocks = (yy // 10 * 4 + xx // 10 + 1).to(torch.int32)             # 16 square "supervoxels" per slice
    for v in vols:
        v.supervoxel = blocks.expand(v.image.shape[0], -1, -1).clone()
    q, _, s, sm = sample_pseudo_episodes(vols, 4, 2, torch.Generator().manual_seed(0))
    assert q.shape == (4, 3, 40, 40) and s.shape == (4, 2, 3, 40, 40)
    # Each class is one supervoxel: about 100 pixels, moved by the augmentation (query and shots independently).
    assert ((sm.flatten(2).sum(-1) > 50) & (sm.flatten(2).sum(-1) < 160)).all()
    assert not torch.equal(s[:, 0], s[:, 1])


def test_iteration_losses_weighting() -> None:
    logits = torch.randn(2, 3, 8, 8)
    target = (torch.rand(2, 8, 8) > 0.7).float()
    losses = iteration_losses(logits, target, bg_weight=0.1)
    assert losses.shape == (3,)
    plain = iteration_losses(logits, target, bg_weight=1.0)
    expected = nn.functional.binary_cross_entropy_with_logits(logits, target[:, None].expand_as(logits),
                                                              reduction="none").mean(dim=(0, 2, 3))
    torch.testing.assert_close(plain, expected)
    # Down-weighting the background: a confident false positive costs less than a confident false negative.
    fp = iteration_losses(torch.full((1, 1, 2, 2), 5.0), torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]), 0.1)
    fn = iteration_losses(torch.full((1, 1, 2, 2), -5.0), torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]), 0.1)
    assert fp < fn


def test_dice() -> None:
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = a.clone()
    a[:2] = True
    b[1:3] = True
    assert dice_score(a, b) == pytest.approx(0.5)
    assert dice_score(a, a) == 1.0 and dice_score(a & False, b & False) == 1.0


def test_support_chunks_follow_ssl_alpnet() -> None:
    vol = _synthetic_volume(0)                                         # ring on slices 2..9: 8 slices
    assert _chunk_supports(vol, 3, 3, 1) == [[3], [6], [8]]            # middle of each third (indices 1.33, 4, 6.67)
    assert _chunk_supports(vol, 3, 2, 2) == [[3, 5], [7, 9]]           # K = 2: evenly spaced inside each half
    with pytest.raises(DataError, match="no slice of the class"):
        _chunk_supports(vol, 7, 3, 1)


class _Recorder(nn.Module):
    """Predicts the query's own label (read from a marker channel) and records which support slice served."""

    task = "fewshot"

    def __init__(self):
        super().__init__()
        self.used: list[float] = []

    def forward(self, x, *, support, support_mask):
        self.used += support[:, 0, 0, 0, 0].tolist()
        return (x[:, :1] * 2 - 1) * 10                                 # logits > 0 where the marker is 1


def test_evaluation_protocol_aligns_chunks_and_computes_3d_dice() -> None:
    vols = [_synthetic_volume(20 + i) for i in range(3)]
    for v in vols:                                                     # image := ground truth (perfect model) ...
        v.image = (v.label == 3).float()
    support = vols[0]
    for z in range(support.image.shape[0]):                            # ... except the support's marker pixel = z
        support.image[z, 0, 0] = z
    recorder = _Recorder()
    result = evaluate_fewshot(recorder, vols, {"ring": 3}, ["ring"], support_volume=0, n_part=3, batch_size=3)
    assert result["dice_ring"] == pytest.approx(1.0) and result["mean_dice"] == pytest.approx(1.0)
    # Each of the 2 query volumes has 8 labelled slices (2..9); slice z is in third floor((z - 2) / (8 / 3)), whose
    # support slice is 3, 6 or 8.
    assert recorder.used == [3, 3, 3, 6, 6, 6, 8, 8] * 2


def test_volume_without_the_class() -> None:
    vols = [_synthetic_volume(i) for i in range(3)]
    vols[0].label[vols[0].label == 3] = 0
    with pytest.raises(DataError, match="support volume"):
        evaluate_fewshot(_Recorder(), vols, {"ring": 3}, ["ring"])
    for v in vols[1:]:
        v.label[v.label == 3] = 0
    with pytest.raises(DataError, match="no query volume"):
        evaluate_fewshot(_Recorder(), [_synthetic_volume(0), *vols[1:]], {"ring": 3}, ["ring"])


# --- training through the shared loop -----------------------------------------------------------------------------

TINY_FLAGS = [f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()]


def _write_nifti_dir(root: Path, n: int = 6) -> Path:
    """``n`` synthetic volumes as a NIfTI directory (fold 0: volumes 0-1 test, the others train)."""
    nib = pytest.importorskip("nibabel")
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        vol = _synthetic_volume(i)
        # nibabel order (x, y, z): slices on the last axis
        nib.save(nib.Nifti1Image(vol.image.permute(1, 2, 0).numpy(), np.eye(4)), str(root / f"image_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(vol.label.permute(1, 2, 0).numpy(), np.eye(4)), str(root / f"label_{i}.nii.gz"))
    (root / "classes.json").write_text(json.dumps({"1": "disc", "2": "square", "3": "ring"}))
    return root


@pytest.fixture(scope="module")
def volumes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_nifti_dir(tmp_path_factory.mktemp("fewshot") / "volumes")


def _visattn(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m visattn.cli ARGS` in a fresh process (the console script's code path)."""
    src = str(Path(__file__).resolve().parent.parent / "src")
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [src, os.environ.get("PYTHONPATH", "")]), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "visattn.cli", *args], check=False, capture_output=True, text=True,
                          env=full_env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"visattn {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_tiny_episodic_training_loss_decreases(tmp_path, volumes_dir) -> None:
    from visattn.tasks.fewshot.task import FewShotTask
    from visattn.train import TrainConfig, train

    settings = {"data": str(volumes_dir), "img_size": 40, "epochs": 1, "batch_size": 2, "lr": 3e-3,
                "warmup_epochs": 0.125, "log_every": 4, "eval_batch_size": 8, "threads": 1, "progress": False}
    cfg = TrainConfig(**{**FewShotTask.defaults, **settings}, task="fewshot", model_overrides=TINY,
                      out=str(tmp_path / "run"), task_options={"episodes_per_epoch": 48, "n_part": 2})
    row = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "step"]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    # every prediction is supervised: M_0's and the last CMAT module's losses are reported per epoch
    assert row["train_loss_first"] > 0 and row["train_loss_last"] > 0 and 0 <= row["train_dice"] <= 1
    assert 0.0 <= row["val_dice_ring"] <= 1.0 and row["val_mean_dice"] == row["val_dice_ring"]
    assert row["val_count"] == 1                                       # fold 0: volume 0 supports, volume 1 queries
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "model.json").is_file()
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["task"] == "fewshot" and meta["test_classes"] == ["ring"] and meta["img_size"] == 40
    assert meta["task_options"]["episodes_per_epoch"] == 48
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["best"]["metric"] == "val_mean_dice"


def test_episodes_are_the_global_batch_sliced(volumes_dir) -> None:
    """Two processes' slices of a step's episodes are exactly one process's batch."""
    from visattn.tasks.fewshot.task import FewShotTask

    task = FewShotTask(load_fewshot_data(str(volumes_dir), img_size=40), FewShotOptions(shots=2, n_part=2))
    batch = task.collate([0, 1, 2, 3])
    (q, s, sm), qm = task.augment(batch, torch.Generator().manual_seed(7), 4, 0)
    assert q.shape == (4, 3, 40, 40) and s.shape == (4, 2, 3, 40, 40) and sm.shape == (4, 2, 40, 40)
    halves = [task.augment(batch[k:k + 2], torch.Generator().manual_seed(7), 4, k) for k in (0, 2)]
    torch.testing.assert_close(torch.cat([h[0][1] for h in halves]), s)
    torch.testing.assert_close(torch.cat([h[1] for h in halves]), qm)


CLI_RUN = ["--task", "fewshot", *TINY_FLAGS, "--img-size", "40", "--epochs", "2", "--episodes-per-epoch", "8",
           "--batch-size", "2", "--n-part", "2", "--deterministic", "--threads", "1", "--log-every", "1",
           "--no-progress"]


@pytest.fixture(scope="module")
def cli_run(volumes_dir: Path) -> Path:
    """`visattn train --task fewshot` for 2 epochs of 4 steps on the synthetic volumes."""
    run = volumes_dir.parent / "cli_run"
    proc = _visattn("train", *CLI_RUN, "--data", str(volumes_dir), "--out", str(run))
    assert "held-out Dice ring" in proc.stdout and "epoch 2/2" in proc.stdout
    return run


def test_cli_train_eval_predict(cli_run: Path, tmp_path: Path) -> None:
    summary = json.loads((cli_run / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["model"] == "catnet_r50"
    assert (cli_run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # visattn eval: the protocol on the recorded data reproduces the run's final held-out Dice
    proc = _visattn("eval", "--checkpoint", str(cli_run), "--batch-size", "16", "--out", str(tmp_path))
    assert proc.stdout.startswith("Dice: ring ") and "2 chunks" in proc.stdout
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["task"] == "fewshot" and report["val_mean_dice"] == summary["val_mean_dice"]
    # visattn predict on image files
    f = _images(tmp_path)
    out = tmp_path / "pred"
    proc = _visattn("predict", "--task", "fewshot", "--checkpoint", str(cli_run), "--support", f["image"], f["mask"],
                    "--query", f["query"], "--out", str(out))
    assert "foreground" in proc.stdout and (out / "q_mask.png").is_file() and (out / "q_overlay.png").is_file()


def test_cli_resume_is_exact(cli_run: Path, volumes_dir: Path, tmp_path: Path) -> None:
    """Killed while writing the last checkpoint, a run resumes after epoch 1 and ends with the uninterrupted run's
    weights and optimizer state, bit for bit."""
    from safetensors.torch import load_file

    run = tmp_path / "killed"
    proc = _visattn("train", *CLI_RUN, "--data", str(volumes_dir), "--out", str(run),
                    env={"VISATTN_FAULT_KILL_IN_SAVE": "step00000008"}, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / "latest").read_text() == "step00000004"
    proc = _visattn("train", "--resume", str(run))
    assert "from step 4" in proc.stdout
    for name in ("model.safetensors", "checkpoints/step00000008/train_state.safetensors"):
        a, b = load_file(run / name), load_file(cli_run / name)
        assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == [], name


def test_cli_train_errors(volumes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from visattn.cli import main

    base = ["train", *CLI_RUN, "--data", str(volumes_dir)]
    for extra, message in ((["--test-classes", "liver"], "unknown class 'liver'"),
                           (["--support-volume", "5"], "--support-volume 5 is out of range"),
                           (["--train-classes", "disc,ring"], "both trained and held out"),
                           (["--query", "q.png"], "inputs of `visattn predict"),
                           (["--shots", "0"], "--shots must be at least 1")):
        assert main([*base, *extra, "--out", str(tmp_path / "x")]) == 1
        assert message in capsys.readouterr().err, extra
    assert not (tmp_path / "x").exists()


def test_prepare_model_loads_backbone_weights(tmp_path: Path) -> None:
    import visattn
    from visattn.tasks.fewshot.task import FewShotTask

    torch.manual_seed(1)
    source = visattn.create_model("catnet_r50", **TINY)
    torch.save(source.backbone.state_dict(), tmp_path / "resnet.pth")
    task = FewShotTask(_data(), FewShotOptions(backbone_weights=str(tmp_path / "resnet.pth"), n_part=2))
    torch.manual_seed(2)
    model = visattn.create_model("catnet_r50", **TINY)
    episode = (torch.zeros(1, 3, 40, 40), torch.zeros(1, 1, 3, 40, 40), torch.ones(1, 1, 40, 40))
    with pytest.raises(RuntimeError, match="prepare_model"):          # never trains silently without the weights
        task.forward(model, episode)
    task.prepare_model(model)
    for k, v in source.backbone.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert task.forward(model, episode).shape == (1, 3, 40, 40)


def test_training_loop_calls_prepare_model(tmp_path: Path, volumes_dir: Path, monkeypatch) -> None:
    from visattn.tasks.fewshot.task import FewShotTask
    from visattn.train import TrainConfig, train

    import visattn

    weights = tmp_path / "resnet.pth"
    torch.save(visattn.create_model("catnet_r50", **TINY).backbone.state_dict(), weights)
    calls = []
    real = FewShotTask.prepare_model
    monkeypatch.setattr(FewShotTask, "prepare_model", lambda self, model: calls.append(real(self, model)))
    settings = {"data": str(volumes_dir), "img_size": 40, "epochs": 1, "batch_size": 2, "threads": 1,
                "progress": False}
    cfg = TrainConfig(**{**FewShotTask.defaults, **settings}, task="fewshot", model_overrides=TINY,
                      out=str(tmp_path / "run"), task_options={"episodes_per_epoch": 2, "n_part": 2,
                                                               "backbone_weights": str(weights)})
    train(cfg)
    assert len(calls) == 1


# --- predict on files, and bad input ----------------------------------------------------------------------------------

def _png(path, array) -> str:
    from PIL import Image

    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture()
def checkpoint(tmp_path):
    import visattn
    from visattn.checkpoint import export_model, model_meta

    model = visattn.create_model("catnet_r50", **TINY)
    export_model(tmp_path / "ckpt", model.state_dict(), model_meta(model, task="fewshot", img_size=48))
    return tmp_path / "ckpt"


def _images(tmp_path) -> dict[str, str]:
    import numpy as np

    rng = np.random.default_rng(0)
    image = (rng.random((50, 60)) * 255).astype(np.uint8)
    mask = np.zeros((50, 60), dtype=np.uint8)
    mask[10:30, 15:40] = 255
    return {"image": _png(tmp_path / "s.png", image), "mask": _png(tmp_path / "m.png", mask),
            "query": _png(tmp_path / "q.png", image[::-1].copy()),
            "grey": _png(tmp_path / "grey.png", (mask // 2 + 1).astype(np.uint8)),
            "small": _png(tmp_path / "small.png", mask[:40]),
            "empty": _png(tmp_path / "empty.png", mask * 0)}


def test_predict_cli_writes_mask_and_overlay(tmp_path, checkpoint) -> None:
    from PIL import Image

    from visattn.cli import main

    f = _images(tmp_path)
    out = tmp_path / "pred"
    assert main(["predict", "--task", "fewshot", "--checkpoint", str(checkpoint), "--support", f["image"], f["mask"],
                 "--support", f["image"], f["mask"], "--query", f["query"], "--out", str(out), "--device", "cpu"]) == 0
    mask = Image.open(out / "q_mask.png")
    overlay = Image.open(out / "q_overlay.png")
    assert mask.size == (60, 50) and overlay.size == (60, 50) and overlay.mode == "RGB"
    import numpy as np

    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


@pytest.mark.parametrize("bad,message", [("grey", "not binary"), ("small", "size"), ("empty", "empty")])
def test_predict_bad_masks_write_nothing(tmp_path, checkpoint, capsys, bad: str, message: str) -> None:
    from visattn.cli import main

    f = _images(tmp_path)
    out = tmp_path / "pred"
    assert main(["predict", "--task", "fewshot", "--checkpoint", str(checkpoint), "--support", f["image"], f[bad],
                 "--query", f["query"], "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_nifti_directory_errors(tmp_path) -> None:
    nib = pytest.importorskip("nibabel")
    import numpy as np

    with pytest.raises(DataError, match="no image_"):
        load_fewshot_data(str(tmp_path))
    eye = np.eye(4)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), eye), str(tmp_path / "image_1.nii.gz"))
    with pytest.raises(DataError, match="no matching label_1"):
        load_fewshot_data(str(tmp_path))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 5), np.uint8), eye), str(tmp_path / "label_1.nii.gz"))
    with pytest.raises(DataError, match="same size"):
        load_fewshot_data(str(tmp_path))


def test_nifti_directory_reads_volumes(tmp_path) -> None:
    nib = pytest.importorskip("nibabel")
    import numpy as np

    for i in range(5):
        vol = _synthetic_volume(i, depth=6, size=16)
        # nibabel order (x, y, z): slices on the last axis
        nib.save(nib.Nifti1Image(vol.image.permute(1, 2, 0).numpy(), np.eye(4)), str(tmp_path / f"image_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(vol.label.permute(1, 2, 0).numpy(), np.eye(4)), str(tmp_path / f"label_{i}.nii.gz"))
    (tmp_path / "classes.json").write_text(json.dumps({"1": "disc", "2": "square", "3": "ring"}))
    data = load_fewshot_data(str(tmp_path), img_size=16, fold=1)
    assert [v.name for v in data.test] == ["1"] and len(data.train) == 4
    assert data.test_classes == ["ring"] and data.train_classes == ["disc", "square"]
    torch.testing.assert_close(data.test[0].label, _synthetic_volume(1, depth=6, size=16).label)
    with pytest.raises(DataError, match="unknown class"):
        load_fewshot_data(str(tmp_path), test_classes=["liver"])


@pytest.mark.slow
def test_builtin_mni152_loads_offline() -> None:
    pytest.importorskip("nibabel")
    data = load_fewshot_data("mni152")
    assert len(data.train) == 4 and len(data.test) == 4
    assert data.test_classes == ["deep_grey_matter"] and "deep_grey_matter" not in data.train_classes
    for v in data.train + data.test:
        assert v.image.shape == (94, 96, 96)
        assert all(len(v.slices_with(data.classes[c])) > 5 for c in data.classes)
