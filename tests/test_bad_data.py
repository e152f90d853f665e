"""Bad data in the middle of a run: a JPEG truncated past its header passes the folder scan and fails to decode when
a batch needs it. Training skips it (a readable image stands in for it), counts it per epoch and stops past
``--max-bad-fraction``; evaluation leaves it out and counts it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from visattn.cli import main  # noqa: E402
from visattn.tasks.classification.data import ImageFileDataset, _verify_image  # noqa: E402
from visattn.tasks.classification.task import collate, collate_readable  # noqa: E402

from .test_cli_train import TINY_MODEL  # noqa: E402

# 18 training images (3 steps of 6: every image is read in every epoch), 4 validation images
RUN = [*TINY_MODEL, "--img-size", "32", "--batch-size", "6", "--epochs", "2", "--threads", "1", "--deterministic",
       "--log-every", "0"]


def _image_folder(root: Path, bad: tuple[str, ...]) -> Path:
    """train/{a,b}/ with 9 JPEGs each and val/{a,b}/ with 2; the files named in ``bad`` truncated to half."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 9), ("val", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
                if c == "b":
                    pixels[:, :20] = 255
                Image.fromarray(pixels).save(root / split / c / f"{c}{i}.jpg", quality=90)
    for rel in bad:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])
        assert _verify_image(root / rel) is None                        # the scan lets it through
    return root


def test_item_of_unreadable_file_is_substituted_in_training_and_empty_in_evaluation(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "data", bad=("train/a/a3.jpg",))
    files = sorted((root / "train" / "a").glob("*.jpg"))
    labels = list(range(len(files)))
    train = ImageFileDataset(files, labels, 40, substitute=True)
    image, label, unreadable = train[3]
    assert label == 4 and torch.equal(image, train[4][0])                 # the next file in dataset order
    assert [u.path for u in unreadable] == [str(files[3])] and "truncated" in unreadable[0].reason
    images, targets, skipped = collate([train[i] for i in range(2, 5)])
    assert images.shape == (3, 3, 40, 40) and targets.tolist() == [2, 4, 4] and len(skipped) == 1
    evaluation = ImageFileDataset(files, labels, 40)
    assert evaluation[3][0] is None and evaluation[3][1] == 3
    images, targets, skipped = collate_readable([evaluation[i] for i in range(2, 5)])
    assert images.shape == (2, 3, 40, 40) and targets.tolist() == [2, 4] and [u.path for u in skipped] == [
        str(files[3])]


def test_training_skips_counts_and_reports_unreadable_images(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _image_folder(tmp_path / "data", bad=("train/a/a3.jpg", "val/b/b1.jpg"))
    run = tmp_path / "run"
    assert main(["train", *RUN, "--data", str(root), "--out", str(run), "--max-bad-fraction", "0.1"]) == 0
    err = capsys.readouterr().err
    assert err.count(f"skipped 1 unreadable images this epoch: {root / 'train/a/a3.jpg'}") == 2, err
    assert err.count("image file is truncated") >= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_count"] == 3 and summary["val_skipped"] == 1
    assert main(["eval", "--checkpoint", str(run), "--threads", "1"]) == 0
    out = capsys.readouterr()
    assert "(3 images, 1 unreadable skipped" in out.out and str(root / "val/b/b1.jpg") in out.err


def test_training_stops_past_max_bad_fraction_naming_the_files(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    # default --max-bad-fraction 0.01 of 18 images: one unreadable image is already too many
    root = _image_folder(tmp_path / "data", bad=("train/b/b7.jpg",))
    assert main(["train", *RUN, "--data", str(root), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "1 of 18 training images could not be decoded, more than --max-bad-fraction 0.01 allows" in err, err
    assert str(root / "train/b/b7.jpg") in err
    assert main(["train", *RUN, "--data", str(root), "--out", str(tmp_path / "run2"), "--max-bad-fraction",
                 "1.5"]) == 1
    assert "--max-bad-fraction must be in [0, 1], got 1.5" in capsys.readouterr().err
