"""The few-shot task: episodes, loss, Dice, the SSL-ALPNet evaluation protocol, training, predict and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from visattn.tasks.base import DataError
from visattn.tasks.fewshot import (
    FewShotConfig,
    FewShotData,
    Volume,
    _chunk_supports,
    dice_score,
    evaluate_fewshot,
    iteration_losses,
    sample_episodes,
    train_fewshot,
)

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
    from visattn.tasks.fewshot import sample_pseudo_episodes

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


def test_tiny_episodic_training_loss_decreases(tmp_path) -> None:
    cfg = FewShotConfig(model="catnet_r50", model_overrides=TINY, steps=24, batch_size=2, lr=3e-3, warmup_steps=3,
                        log_every=4, out=str(tmp_path / "run"), threads=1, n_part=2)
    summary = train_fewshot(cfg, data=_data())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "step"]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    per_iteration = [r["losses"] for r in rows if r["kind"] == "step"]
    assert all(len(v) == 3 for v in per_iteration)                     # M_0 + 2 CMAT modules, each supervised
    assert 0.0 <= summary["dice_ring"] <= 1.0
    assert (tmp_path / "run" / "model.safetensors").is_file() and (tmp_path / "run" / "model.json").is_file()
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["task"] == "fewshot" and meta["test_classes"] == ["ring"]


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

    from visattn.tasks.fewshot import load_fewshot_data

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

    from visattn.tasks.fewshot import load_fewshot_data

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
    from visattn.tasks.fewshot import load_fewshot_data

    data = load_fewshot_data("mni152")
    assert len(data.train) == 4 and len(data.test) == 4
    assert data.test_classes == ["deep_grey_matter"] and "deep_grey_matter" not in data.train_classes
    for v in data.train + data.test:
        assert v.image.shape == (94, 96, 96)
        assert all(len(v.slices_with(data.classes[c])) > 5 for c in data.classes)
