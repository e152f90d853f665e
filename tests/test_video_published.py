"""`visattn predict / eval` with torchvision's published Kinetics-400 video MViT weights, offline: random weights of a
reduced ``mvitv2_small_video`` are written in torchvision's key layout into a temporary torch hub cache under the
file name of ``mvit_v2_s``'s URL, and the CLI builds the same reduced model with ``--set``. The evaluation transform
is checked against torchvision's own ``VideoClassification`` output (a golden file)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("av")

import visattn  # noqa: E402
from visattn.checkpoint import load_published_model  # noqa: E402
from visattn.cli import main  # noqa: E402
from visattn.tasks.base import DataError  # noqa: E402
from visattn.tasks.video.data import map_class_names  # noqa: E402
from visattn.tasks.video.io import read_frames, write_video  # noqa: E402
from visattn.tasks.video.sampling import spatial_views  # noqa: E402
from visattn.weights import get_weights, label_names  # noqa: E402

from .conftest import GOLDEN  # noqa: E402

TAG = "mvit_v2_s"
# MViTv2-S's code paths (class token, rel-pos in t/h/w, residual pooling, channel growth in attention) at a size that
# runs five 16x224x224 views in well under a second on one core; KV pooled by 16 in space instead of 8
REDUCED = dict(dims=(8, 16, 16, 16), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), stride_kv_adaptive=(2, 16, 16))
SET = [a for k, v in REDUCED.items() for a in ("--set", f"{k}={','.join(map(str, v))}")]
MEAN, STD = torch.tensor((0.45, 0.45, 0.45)), torch.tensor((0.225, 0.225, 0.225))


def _torchvision_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A visattn MViTv2 video state dict in torchvision ``mvit_v2_s``'s layout (the inverse of
    ``models/mvit.py: remap_state_dict``): global block numbers, ``pool_q.pool`` / ``pool_q.norm_act.0``,
    ``attn.project.0``, ``mlp.0`` / ``mlp.3``, ``project`` (the channel shortcut), ``head.1``, a (C,) class token."""
    depths = model.config.depths
    first = [sum(depths[:s]) for s in range(len(depths))]
    renames = [(r"^shortcut_proj_attn\.", "project."), (r"^attn\.proj\.", "attn.project.0."),
               (r"^attn\.pool_([qkv])\.", r"attn.pool_\1.pool."),
               (r"^attn\.norm_([qkv])\.", r"attn.pool_\1.norm_act.0."), (r"^mlp\.fc1\.", "mlp.0."),
               (r"^mlp\.fc2\.", "mlp.3.")]
    out = {}
    for key, value in model.state_dict().items():
        block = re.match(r"stages\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        if block:
            rest = block[3]
            for pattern, repl in renames:
                rest = re.sub(pattern, repl, rest)
            key = f"blocks.{first[int(block[1])] + int(block[2])}.{rest}"
        elif key == "cls_token":
            key, value = "pos_encoding.class_token", value.flatten()    # torchvision: (C,)
        else:
            key = re.sub(r"^patch_embed\.proj\.", "conv_proj.", re.sub(r"^head\.fc\.", "head.1.", key))
        out[key] = value.clone()
    return out


def _pattern(keys) -> set[str]:
    return {re.sub(r"\.\d+(?=\.)", ".#", k) for k in keys}


@pytest.fixture
def published(tmp_path, monkeypatch) -> torch.nn.Module:
    """The reduced model with random weights, served offline as the cached torchvision file of ``mvit_v2_s``."""
    model = visattn.create_model(TAG, **REDUCED).eval()                # 400 classes from the tag
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        # top-k probabilities clearly apart, none below the 1e-12 at which the video eval loss clamps
        model.head.fc.weight.mul_(2)
    state = _torchvision_state(model)
    manifest = json.loads((GOLDEN / "mvit_manifest_tv_mvit_v2_s.json").read_text())["shapes"]
    assert _pattern(state) == _pattern(manifest)                       # torchvision's own key names
    entry = get_weights(TAG)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "torch_hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / entry.url.rsplit("/", 1)[1])            # mvit_v2_s-ae3be167.pth
    return model


def _video(path, frames: int, height: int, width: int, seed: int, fps: int = 30) -> str:
    """A smooth colour pattern drifting 3 px per frame: every frame differs, so the clips of a video differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width + 3 * frames].astype(np.float32)
    phase = rng.uniform(0, 6, 3)
    wide = np.stack([127 + 100 * np.sin(xx / (9 + 4 * c) + yy / 23 + phase[c]) for c in range(3)], -1)
    video = np.stack([wide[:, 3 * t:3 * t + width] for t in range(frames)]).astype(np.uint8)  # (T, H, W, 3)
    write_video(path, video, fps=fps, gop=8)
    return str(path)


def _torchvision_clip(frames: np.ndarray, size: tuple[int, int], offsets: tuple[int, int]) -> torch.Tensor:
    """torchvision's VideoClassification(crop_size=(224, 224), resize_size=(256,)) spelled out for (T, H, W, 3)
    frames: resized to ``size`` (the short side 256, the long side truncated) bilinearly without antialiasing,
    rounded to uint8, cropped at ``offsets`` (centre_crop's int(round(...))), / 255, mean / std 0.45 / 0.225."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()           # (T, 3, H, W)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False).round()
    x = x[..., offsets[0]:offsets[0] + 224, offsets[1]:offsets[1] + 224] / 255
    x = (x - MEAN[:, None, None]) / STD[:, None, None]
    return x.transpose(0, 1)                                           # (3, T, 224, 224)


def test_evaluation_transform_is_torchvisions() -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = GOLDEN / "video_tv_transform.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    tensors = load_file(str(path))
    mean, std = torch.tensor(meta["mean"]).view(3, 1, 1, 1), torch.tensor(meta["std"]).view(3, 1, 1, 1)
    for case in ("down_wide", "down_tall", "up"):
        video, expected = tensors[f"{case}.input"], tensors[f"{case}.output"]   # (T, 3, H, W) uint8, (3, T, c, c)
        views = spatial_views(video, meta["crop"], 1, meta["resize"], resize="torchvision")
        assert (((views[0].float() / 255 - mean) / std) - expected).abs().max() < 1e-5, case
        own = spatial_views(video, meta["crop"], 1, meta["resize"])   # visattn's antialiased arithmetic differs
        assert (((own[0].float() / 255 - mean) / std) - expected).abs().max() > 0.1, case


def test_published_video_metadata_carries_the_clip_protocol(published) -> None:
    model, meta = load_published_model(TAG, overrides=REDUCED)
    assert (meta["model"], meta["weights"]) == ("mvitv2_small_video", "mvitv2_small_video.tv_kinetics400")
    assert (meta["frames"], meta["stride"], meta["views"], meta["img_size"], meta["resize_size"]) == \
        (16, 4, "5x1", 224, 256)
    assert meta["mean"] == [0.45] * 3 and meta["std"] == [0.225] * 3 and meta["transform"] == "torchvision_video"
    assert meta["classes"] == label_names("kinetics400") and len(meta["classes"]) == 400
    own = published.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())   # the torchvision file, remapped


def test_predict_published_kinetics_weights(published, tmp_path, capsys) -> None:
    path = _video(tmp_path / "clip.mp4", 66, 264, 334, seed=1)
    assert main(["predict", "--model", TAG, *SET, path, "--json", "--threads", "1"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    # 66 frames at 30 fps, clips of 16 x 4 (span 61): 5 starts evenly spaced over frames 0..5 (1.25 -> 1, 2.5 -> 2)
    starts = [0, 1, 2, 4, 5]
    frames, _, _ = read_frames(path, list(range(66)))                 # (66, 264, 334, 3)
    # 264 x 334 -> 256 x int(323.88) = 323 (visattn's own arithmetic: 324, antialiased), crop at 16, round(49.5) = 50
    clips = torch.stack([_torchvision_clip(frames[s:s + 61:4], (256, 323), (16, 50)) for s in starts])
    with torch.no_grad():
        probs = published(clips).softmax(-1).mean(0)
    top = probs.topk(5)
    names = label_names("kinetics400")
    assert [p["class"] for p in result["top"]] == [names[i] for i in top.indices]
    got = torch.tensor([p["prob"] for p in result["top"]])
    assert (got - top.values).abs().max() < 1e-6
    assert top.values[0] - top.values[1] > 1e-3                        # a clear order to check
    assert result["views"] == "5x1"
    times = [t for clip in result["clips_s"] for t in clip]
    assert times == pytest.approx([t for s in starts for t in (s / 30, (s + 60) / 30)], abs=1e-3)
    # text: "clip.mp4: <Kinetics name> (0.123), ...  [5x1 views; clips at 0.00-2.00, ... s]"
    assert main(["predict", "--model", TAG, *SET, path, "--topk", "2", "--threads", "1"]) == 0
    spans = ", ".join(f"{s / 30:.2f}-{(s + 60) / 30:.2f}" for s in starts)
    assert capsys.readouterr().out.strip() == (f"{path}: {names[top.indices[0]]} ({top.values[0]:.3f}), "
                                               f"{names[top.indices[1]]} ({top.values[1]:.3f})  [5x1 views; clips "
                                               f"at {spans} s]")


def test_map_class_names_exact_underscores_and_case() -> None:
    names = label_names("kinetics400")
    assert map_class_names(["abseiling", "air_drumming", "Passing_American_football_(in_game)",
                            "massaging person's head"], names) == \
        [0, 1, names.index("passing American football (in game)"), names.index("massaging person's head")]
    with pytest.raises(DataError, match=r"2 class name\(s\).*'not_a_class', 'abseilling'.*did you mean 'abseiling'"):
        map_class_names(["not_a_class", "abseilling", "zumba"], names)


def test_eval_published_kinetics_weights_on_a_folder_and_a_list(published, tmp_path, capsys) -> None:
    data = tmp_path / "kinetics"
    paths = []
    for k, folder in enumerate(("abseiling", "air_drumming")):        # exact name; underscores for spaces
        (data / folder).mkdir(parents=True)
        paths.append(_video(data / folder / "0.mp4", 30, 60, 80, seed=10 + k))
    out = tmp_path / "eval"
    assert main(["eval", "--model", TAG, *SET, "--data", str(data), "--views", "1x1", "--out", str(out),
                 "--threads", "1"]) == 0
    assert "2 videos x 1x1 views of 16x4" in capsys.readouterr().out
    report = json.loads((out / "eval.json").read_text())
    # 30 frames < the 61-frame span: the clip starts at 0 and repeats the last frame (sampling.py's short-video rule)
    clips = []
    for path in paths:
        frames, _, _ = read_frames(path, list(range(30)))
        # 60 x 80 -> 256 x int(341.33) = 341, crop at 16, round(58.5) = 58
        clips.append(_torchvision_clip(frames[[min(4 * i, 29) for i in range(16)]], (256, 341), (16, 58)))
    with torch.no_grad():
        logits = published(torch.stack(clips))
    targets = torch.tensor([0, 1])                                     # abseiling, air drumming
    assert report["val_count"] == 2 and report["checkpoint"] == "mvitv2_small_video.tv_kinetics400"
    assert report["val_loss"] == pytest.approx(float(F.cross_entropy(logits, targets)), rel=1e-4)
    assert report["val_top1"] == pytest.approx(100 * float((logits.argmax(-1) == targets).float().mean()))
    # a PySlowFast-style list: integer labels are the Kinetics indices
    (tmp_path / "val.csv").write_text(f"{paths[1]} 1\n{paths[0]} 0\n")
    assert main(["eval", "--model", TAG, *SET, "--data", str(tmp_path / "val.csv"), "--views", "1x1", "--out",
                 str(out), "--threads", "1"]) == 0
    listed = json.loads((out / "eval.json").read_text())
    assert listed["val_count"] == 2 and listed["val_loss"] == pytest.approx(report["val_loss"], rel=1e-5)
    # a folder that is not a Kinetics class: a clear error naming it, before any video is decoded
    (data / "not_a_class").mkdir()
    _video(data / "not_a_class" / "0.mp4", 4, 32, 32, seed=99)
    capsys.readouterr()
    assert main(["eval", "--model", TAG, *SET, "--data", str(data), "--out", str(out)]) == 1
    assert "match none of the model's 400 classes: 'not_a_class'" in capsys.readouterr().err
