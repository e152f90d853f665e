"""The video task: PyAV decoding and seeking, clip sampling, multi-view evaluation, unreadable files, the temporal
(shuffled-frames) test, and train / eval / predict through the command line on a tiny generated set."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("av")

from visattn.cli import main  # noqa: E402
from visattn.tasks.base import EvalContext, RunSettings  # noqa: E402
from visattn.tasks.video import VideoOptions  # noqa: E402
from visattn.tasks.video.builtin import CLASSES, make_moving_digits  # noqa: E402
from visattn.tasks.video.data import ClipSettings, VideoDataset, load_video_data  # noqa: E402
from visattn.tasks.video.io import VideoError, probe_video, read_frames, write_video  # noqa: E402
from visattn.tasks.video.sampling import (  # noqa: E402
    eval_clip_starts,
    frame_indices,
    parse_views,
    shuffle_clip_frames,
    train_clip_start,
)
from visattn.tasks.video.task import FrameAverageTask, VideoTask  # noqa: E402

TINY_MVIT = ["--model", "mvitv2_small_video", "--set", "dims=16,32,32,32", "--set", "depths=1,1,1,1", "--set",
             "num_heads=1,1,1,1", "--set", "stride_kv_adaptive=1,2,2"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 training + 1 validation video per class, 12 frames of 32 x 32."""
    return make_moving_digits(tmp_path_factory.mktemp("video") / "md", train_per_class=2, val_per_class=1,
                              frames=12, size=32)


def _ramp_video(frames: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Frame k is a smooth horizontal gradient shifted by 4k grey levels (its index can be read back)."""
    base = np.linspace(0, 60, w, dtype=np.float32)[None, :, None]      # (1, W, 1)
    out = np.stack([np.broadcast_to(base + 4 * k + 10, (h, w, 3)) for k in range(frames)])  # (T, H, W, 3)
    return out.round().clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("ext", [".mp4", ".avi", ".webm", ".mkv"])
def test_decoding_gives_the_frames_written(tmp_path: Path, ext: str) -> None:
    frames = _ramp_video(24)
    path = write_video(tmp_path / f"v{ext}", frames, fps=12, gop=6)
    info = probe_video(path)
    assert (info.num_frames, info.width, info.height) == (24, 48, 32) and info.fps == pytest.approx(12)
    got, _, _ = read_frames(path, list(range(24)))
    assert got.shape == frames.shape and got.dtype == np.uint8
    err = np.abs(got.astype(np.float32) - frames.astype(np.float32))
    assert err.mean() < 2.5 and np.percentile(err, 99) < 8, (ext, err.mean())   # codec tolerance (4:2:0, lossy)


def test_seeking_picks_the_right_timestamps_without_decoding_from_the_start(tmp_path: Path) -> None:
    frames = _ramp_video(56)
    path = write_video(tmp_path / "v.mp4", frames, fps=16, gop=4)
    wanted = [42, 46, 50, 54]
    got, info, decoded = read_frames(path, wanted)
    level = got.astype(np.float32)[:, :, 0, 0].mean(1)                  # the left column: 4k + 10
    assert np.abs(level - (4 * np.array(wanted) + 10)).max() < 1.9, level   # within half a frame's step
    assert decoded < 25, decoded                                       # from the keyframe before frame 42, not 0
    # any order, repeats, and indices past the end (the last frame)
    got, _, _ = read_frames(path, [7, 3, 3, 90])
    level = got.astype(np.float32)[:, :, 0, 0].mean(1)
    assert np.abs(level - (4 * np.array([7, 3, 3, 55]) + 10)).max() < 1.9, level


def test_clip_sampling_indices() -> None:
    g = torch.Generator().manual_seed(0)
    starts = [train_clip_start(100, 16, 4, g) for _ in range(300)]
    assert min(starts) == 0 and max(starts) == 100 - 61 and len(set(starts)) > 30   # uniform over [0, N - span]
    assert frame_indices(10, 4, 3, 100) == [10, 13, 16, 19]
    # short video (3 frames < span 7): start 0, the last frame repeats
    assert train_clip_start(3, 4, 2, g) == 0 and frame_indices(0, 4, 2, 3) == [0, 2, 2, 2]
    assert eval_clip_starts(100, 16, 4, 5) == [0, 10, 20, 29, 39]     # last clip ends on frame 99
    assert eval_clip_starts(100, 16, 4, 1) == [19]                     # one clip: centred
    assert eval_clip_starts(20, 16, 4, 3) == [0, 0, 0]
    assert parse_views("5x3") == (5, 3)
    for bad in ("5", "5x2", "0x1", "axb"):
        with pytest.raises(ValueError, match="--views"):
            parse_views(bad)


class _MeanColour(nn.Module):
    """A fixed 'model': logits are a linear map of each clip's per-frame mean brightness, so every view differs."""

    def __init__(self, frames: int, classes: int):
        super().__init__()
        self.weight = torch.randn(classes, frames, generator=torch.Generator().manual_seed(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * x.mean(dim=(1, 3, 4)) @ self.weight.t()              # (N, T) -> (N, classes)


def test_multi_view_evaluation_averages_the_softmax_of_all_views(tiny_set: Path) -> None:
    options = VideoOptions(frames=4, stride=2, views="3x3")
    task = VideoTask.for_training(RunSettings(data=str(tiny_set), img_size=32), options)
    ds = task.val_set
    model = _MeanColour(4, len(CLASSES))
    result = task.evaluate(model, EvalContext(batch_size=7))
    assert result["val_count"] == len(ds) == 8 and result["val_skipped"] == 0
    nll, clip_hits, video_hits = 0.0, 0, 0
    for i in range(len(ds)):
        views, label, index, times, bad = ds[i]
        assert views.shape == (9, 3, 4, 32, 32) and bad is None and len(times) == 3
        logits = model(task.prepare_views(views, list(range(9))))
        probs = logits.softmax(-1).mean(0)                              # average of the 9 views' softmax
        nll -= math.log(float(probs[label]))
        video_hits += int(probs.argmax()) == label
        clip_hits += int((logits.argmax(-1) == label).sum())
    assert result["val_loss"] == pytest.approx(nll / len(ds), rel=1e-5)
    assert result["val_top1"] == pytest.approx(100 * video_hits / len(ds))
    assert result["val_clip_top1"] == pytest.approx(100 * clip_hits / (9 * len(ds)))


def test_an_unreadable_file_is_skipped_and_counted(tiny_set: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.mp4"
    good = sorted((tiny_set / "val" / "up").glob("*.mp4"))[0]
    bad.write_bytes(good.read_bytes()[:300])                           # a truncated file: header only
    clip = ClipSettings(frames=4, stride=2, crop=32, jitter=(32, 36), hflip=0.0, clips=2)
    with pytest.raises(VideoError):
        read_frames(bad, [0])
    train = VideoDataset([bad, good], [0, 1], clip, train=True)
    with caplog.at_level(logging.WARNING, logger="visattn"):
        clip0, label, skipped = train[0]
    assert skipped == (str(bad),) and label == 1 and clip0.shape == (3, 4, 32, 32)   # the next video instead
    assert str(bad) in caplog.text
    val = VideoDataset([bad, good, bad], [0, 1, 0], clip, train=False)
    task = VideoTask.for_training(RunSettings(data=str(tiny_set), img_size=32), VideoOptions(frames=4, stride=2))
    result = task.evaluate(_MeanColour(4, len(CLASSES)), EvalContext(batch_size=4, dataset=val))
    assert result["val_skipped"] == 2 and result["val_count"] == 1


def test_shuffle_frames_changes_the_order_not_the_content() -> None:
    clips = torch.arange(6 * 8).view(6, 1, 8, 1, 1).expand(6, 3, 8, 2, 2).contiguous()  # frame t of clip i: 8i + t
    out = shuffle_clip_frames(clips, seed=0, keys=range(6))
    assert torch.equal(out.sort(dim=2).values, clips)                  # the same frames
    for i in range(6):
        assert not torch.equal(out[i], clips[i])                      # in another order
        perm = out[i, 0, :, 0, 0] - 8 * i
        assert torch.equal(out[i], clips[i][:, perm])                  # whole frames move, channels together
    assert torch.equal(out, shuffle_clip_frames(clips, seed=0, keys=range(6)))        # seeded
    assert not torch.equal(out, shuffle_clip_frames(clips, seed=1, keys=range(6)))


def test_training_clips_follow_the_epoch_seed_not_the_worker(tiny_set: Path) -> None:
    clip = ClipSettings(frames=3, stride=2, crop=28, jitter=(28, 36), hflip=0.5)
    ds = load_video_data(str(tiny_set), clip).train
    ds.epoch_seed = 5
    a = ds[3][0]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=lambda items: items)
    assert torch.equal(next(iter(loader))[1][0], ds[1][0])             # a worker draws what the main process draws
    assert torch.equal(ds[3][0], a)
    ds.epoch_seed = 6
    assert not torch.equal(ds[3][0], a)                                # another epoch, another clip


def test_list_sources_and_class_names(tiny_set: Path, tmp_path: Path) -> None:
    files = sorted((tiny_set / "train").rglob("*.mp4"))
    lines = [f"{f} {CLASSES.index(f.parent.name)}" for f in files]
    (tmp_path / "train.csv").write_text("\n".join(lines + [f"{tmp_path}/missing.mp4 0"]))
    (tmp_path / "val.csv").write_text("\n".join(lines[:5]))
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    clip = ClipSettings(frames=2, stride=1, crop=32, jitter=(32, 32), hflip=0.0)
    data = load_video_data(str(tmp_path / "train.csv"), clip)
    assert len(data.train) == 16 and len(data.val) == 5 and data.classes == list(CLASSES)
    assert data.source["skipped_files"] == 1                           # the missing file is named and counted
    (tmp_path / "bad.csv").write_text("only-a-path.mp4\n")
    with pytest.raises(ValueError, match="expected 'path label'"):
        load_video_data(str(tmp_path / "bad.csv"), clip)


def test_frame_average_baseline_is_blind_to_frame_order() -> None:
    from visattn import create_model

    model = create_model("mvitv2_tiny", dims=(16, 32, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                         img_size=(32, 32), num_classes=5).eval()
    clips = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        a = FrameAverageTask.run_model(model, clips)
        b = FrameAverageTask.run_model(model, shuffle_clip_frames(clips, 0, [0, 1]))
        frame = model(clips[1, :, 2][None])                             # one frame alone
    assert a.shape == (2, 5) and torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a[1], frame[0], atol=1e-3)


def test_train_eval_predict_through_the_cli(tiny_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    assert main(["train", "--task", "video", *TINY_MVIT, "--data", str(tiny_set), "--frames", "4", "--stride", "2",
                 "--img-size", "32", "--views", "2x1", "--epochs", "1", "--batch-size", "8", "--threads", "1",
                 "--workers", "1", "--out", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == "video" and meta["frames"] == 4 and meta["classes"] == sorted(CLASSES)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_count"] == 8 and 0 <= summary["val_clip_top1"] <= 100
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--views", "2x3", "--threads", "1"]) == 0
    plain = json.loads((run / "eval.json").read_text())
    assert "2x3 views of 4x2" in capsys.readouterr().out and plain["val_count"] == 8
    assert main(["eval", "--checkpoint", str(run), "--views", "2x3", "--shuffle-frames", "--threads", "1"]) == 0
    shuffled = json.loads((run / "eval.json").read_text())
    assert "frames shuffled" in capsys.readouterr().out
    assert shuffled["val_loss"] != plain["val_loss"]                   # the model sees another frame order
    listed = sorted((tiny_set / "val").rglob("*.mp4"))[:5]            # a 'path label' list of class names
    (tmp_path / "some.csv").write_text("".join(f"{f} {f.parent.name}\n" for f in listed))
    assert main(["eval", "--checkpoint", str(run), "--data", str(tmp_path / "some.csv"), "--views", "1x1",
                 "--workers", "1", "--out", str(tmp_path / "ev"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["val_count"] == 5
    capsys.readouterr()
    video = sorted((tiny_set / "val" / "grow").glob("*.mp4"))[0]
    assert main(["predict", "--checkpoint", str(run), str(video), "--json", "--threads", "1"]) == 0
    [pred] = json.loads(capsys.readouterr().out)
    assert len(pred["top"]) == 5 and {p["class"] for p in pred["top"]} <= set(CLASSES)
    assert sum(p["prob"] for p in pred["top"]) <= 1 + 1e-5
    # 12 frames at 16 fps, clips of 4 x 2 (span 7): frames 0-6 and 5-11, i.e. first / last frame at 0 / 0.375 s and
    # 0.3125 / 0.6875 s
    times = [t for clip in pred["clips_s"] for t in clip]
    assert times == pytest.approx([0.0, 0.375, 0.3125, 0.6875], abs=1e-3) and pred["views"] == "2x1"


def test_the_generated_set_is_deterministic(tmp_path: Path) -> None:
    a = make_moving_digits(tmp_path / "a", train_per_class=1, val_per_class=1, frames=6, size=16)
    b = make_moving_digits(tmp_path / "b", train_per_class=1, val_per_class=1, frames=6, size=16)
    files = sorted(p.relative_to(a) for p in a.rglob("*.mp4"))
    assert len(files) == 2 * len(CLASSES)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    c = make_moving_digits(tmp_path / "c", train_per_class=1, val_per_class=1, frames=6, size=16, seed=1)
    assert (c / files[0]).read_bytes() != (a / files[0]).read_bytes()


def test_distant_clips_are_reached_by_seeking(tmp_path: Path) -> None:
    frames = _ramp_video(56)
    path = write_video(tmp_path / "v.mp4", frames, fps=16, gop=4)
    wanted = [1, 2, 52, 53]
    got, _, decoded = read_frames(path, wanted, seek_gap=8)
    level = got.astype(np.float32)[:, :, 0, 0].mean(1)
    assert np.abs(level - (4 * np.array(wanted) + 10)).max() < 1.9, level
    _, _, all_between = read_frames(path, wanted, seek_gap=100)
    assert decoded < 25 < all_between, (decoded, all_between)          # two short runs, not 50 frames in between


def test_train_initialised_from_image_weights(tiny_set: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from visattn import create_model
    from visattn.checkpoint import export_model, load_checkpoint, model_meta

    image = create_model("mvitv2_small", dims=(16, 32, 32, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1),
                         img_size=(32, 32), num_classes=10)
    weights = export_model(tmp_path / "image", image.state_dict(), model_meta(image))
    run = tmp_path / "run"
    common = ["train", "--task", "video", *TINY_MVIT, "--data", str(tiny_set), "--frames", "4", "--stride", "2",
              "--img-size", "32", "--views", "1x1", "--epochs", "1", "--batch-size", "8", "--train-limit", "8",
              "--val-limit", "8", "--threads", "1"]
    assert main([*common, "--init-from-image", str(weights), "--inflate", "centre", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "initialised mvitv2_small_video from the image model mvitv2_small" in err and "centre inflation" in err
    # the patch embedding and the q, k, v pooling convs of the 4 blocks
    assert "13 inflated over time" in err and "left at initialisation: cls_token, head.fc.weight, head.fc.bias" in err
    assert load_checkpoint(run).train_meta["config"]["init_from_image"] == str(weights)   # recorded with the run
    # refused: both initialisations at once, and image weights for an image model
    assert main([*common, "--init-from-image", str(weights), "--pretrained", str(weights),
                 "--out", str(tmp_path / "r2")]) == 1
    assert "pass one" in capsys.readouterr().err
    assert main(["train", "--task", "video_frames", "--model", "mvitv2_small", "--init-from-image", str(weights),
                 "--data", str(tiny_set), "--threads", "1", "--out", str(tmp_path / "r3")]) == 1
    assert "is an image model: use --pretrained" in capsys.readouterr().err
