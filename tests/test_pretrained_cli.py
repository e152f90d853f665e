"""`visattn predict / eval / train` with published weights named by tag, offline: random weights of a reduced model
are written into a temporary Hugging Face cache, and the CLI builds the same reduced model with ``--set``."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

import visattn
from visattn.cli import main
from visattn.tasks.classification.data import map_folder_classes, read_image_as_published
from visattn.tasks.base import DataError
from visattn.weights import get_weights, label_ids, label_names

from .test_weights_registry import _hub_cache

pytest.importorskip("huggingface_hub")

TAG = "maxvit_tiny_tf_224.in1k"                                          # crop_pct 0.95, bicubic, ImageNet mean / std
REDUCED = dict(stem_width=16, dims=(16, 32, 32, 48), depths=(1, 2, 1, 1), head_dim=16)
SET = [a for k, v in REDUCED.items() for a in ("--set", f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}")]


@pytest.fixture
def published(tmp_path, monkeypatch) -> torch.nn.Module:
    """The reduced model with random weights, served offline as the tag's Hub file."""
    model = visattn.create_model(TAG, **REDUCED).eval()               # partition 7, 1000 classes from the tag
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        model.head.fc.weight.mul_(20)                                  # confident, so top-k probabilities differ
    entry = get_weights(TAG)
    _hub_cache(tmp_path, monkeypatch, entry.hf_hub_id, entry.hf_filename, model.state_dict())
    return model


def _photo(path, width: int, height: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) * 255 // (width + height)], -1)
    noise = rng.integers(0, 60, (height, width, 3))
    image = np.clip(base + noise, 0, 255).astype(np.uint8)
    band = max(1, height // 20)                                        # a frame that a 0.95 crop keeps in part
    image[:band], image[-band:], image[:, :band], image[:, -band:] = (255, 0, 0), (0, 0, 255), (0, 255, 0), 0
    Image.fromarray(image).save(path)
    return str(path)


def _timm_eval(path: str, size: int, crop_pct: float) -> torch.Tensor:
    # timm's eval transform spelled out with PIL: shorter side to floor(size / crop_pct), bicubic, centre crop
    im = Image.open(path).convert("RGB")
    scale = math.floor(size / crop_pct)
    w, h = im.size
    new = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    im = im.resize(new, Image.BICUBIC)
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    x = torch.from_numpy(np.array(im.crop((left, top, left + size, top + size)))).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    return ((x - mean[:, None, None]) / std[:, None, None])[None]     # (1, 3, size, size)


def test_read_image_as_published_matches_timms_transform(tmp_path) -> None:
    path = _photo(tmp_path / "wide.png", 301, 190, seed=0)
    got = read_image_as_published(path, 64, crop_pct=0.9, crop_mode="center", interpolation="bicubic")
    assert got.shape == (3, 64, 64) and got.dtype == torch.uint8
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    expected = (_timm_eval(path, 64, 0.9)[0] * std[:, None, None] + mean[:, None, None]) * 255
    assert (got.float() - expected).abs().max() < 1e-3
    squash = read_image_as_published(path, 64, crop_pct=1.0, crop_mode="squash", interpolation="bilinear")
    im = np.array(Image.open(path).convert("RGB").resize((64, 64), Image.BILINEAR))
    assert torch.equal(squash, torch.from_numpy(im).permute(2, 0, 1))
    with pytest.raises(ValueError, match="crop_mode"):
        read_image_as_published(path, 64, crop_pct=0.9, crop_mode="border")


def test_predict_published_tag_prints_class_names_with_its_preprocessing(published, tmp_path, capsys) -> None:
    photo = _photo(tmp_path / "photo.jpg", 320, 240, seed=1)
    assert main(["predict", "--model", TAG, *SET, photo, "--topk", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    with torch.no_grad():
        probs = published(_timm_eval(photo, 224, 0.95)).softmax(-1)[0]
        old = published(_timm_eval(photo, 224, 0.875)).softmax(-1)[0]
    top = probs.topk(3)
    names = label_names("imagenet1k")
    assert [p["class"] for p in result[0]["top"]] == [names[i] for i in top.indices]
    got = torch.tensor([p["prob"] for p in result[0]["top"]])
    assert (got - top.values).abs().max() < 2e-5
    assert top.values[0] - top.values[1] > 1e-3                        # a clear order to check
    assert (old[top.indices] - top.values).abs().max() > 1e-3          # the crop matters: 0.95, not 0.875
    # text output: "photo.jpg: tench, Tinca tinca (0.123), ..."
    assert main(["predict", "--model", TAG, *SET, photo, "--topk", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"{photo}: {names[top.indices[0]]} ({top.values[0]:.3f})"


def test_predict_without_checkpoint_needs_published_weights(capsys) -> None:
    assert main(["predict", "x.png"]) == 1
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["predict", "--model", "cloformer_xs", "x.png"]) == 1
    assert "cloformer_xs has no published weights" in capsys.readouterr().err
    assert main(["predict", "--model", "maxvit_tiny_tf_225.in1k", "x.png"]) == 1
    assert "Did you mean" in capsys.readouterr().err


def test_map_folder_classes_by_synset_label_or_first_name() -> None:
    names, ids = label_names("imagenet1k"), label_ids("imagenet1k")
    assert ids[0] == "n01440764" and len(ids) == 1000
    assert map_folder_classes(["n01443537", "Tench", "great white shark, white shark, man-eater, man-eating shark, "
                               "Carcharodon carcharias"], names, ids) == [1, 0, 2]
    crane = [i for i, n in enumerate(names) if n.split(",")[0] == "crane"]
    assert len(crane) == 2                                             # ImageNet has two: ambiguous, not guessed
    with pytest.raises(DataError, match="crane, potato"):
        map_folder_classes(["crane", "potato"], names, ids)


def test_eval_published_tag_on_an_imagefolder(published, tmp_path, capsys) -> None:
    data = tmp_path / "folder"
    files = {"n01440764": 3, "goldfish": 2}                            # class 0 by synset, class 1 by first name
    paths = []
    for k, (folder, n) in enumerate(files.items()):
        (data / folder).mkdir(parents=True)
        paths += [(_photo(data / folder / f"{i}.png", 200 + 13 * i, 150 + 7 * k, seed=10 * k + i), k)
                  for i in range(n)]
    out = tmp_path / "eval"
    assert main(["eval", "--model", TAG, *SET, "--data", str(data), "--out", str(out)]) == 0
    report = json.loads((out / "eval.json").read_text())
    with torch.no_grad():
        logits = torch.cat([published(_timm_eval(p, 224, 0.95)) for p, _ in paths])
    targets = torch.tensor([t for _, t in paths])
    assert report["val_count"] == 5 and report["checkpoint"] == "maxvit_tiny.in1k_224"
    assert report["val_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-3)
    assert report["val_top1"] == pytest.approx(100 * float((logits.argmax(-1) == targets).float().mean()))
    (data / "not_a_class").mkdir()
    _photo(data / "not_a_class" / "0.png", 64, 64, seed=99)
    assert main(["eval", "--model", TAG, *SET, "--data", str(data), "--out", str(out)]) == 1
    assert "match none of the model's 1000 classes: not_a_class" in capsys.readouterr().err


def test_train_pretrained_tag_replaces_the_classifier(published, tmp_path, caplog) -> None:
    from visattn.train import TrainConfig, build_model, build_task

    cfg = TrainConfig(model="maxvit_tiny", pretrained=TAG, model_overrides=dict(REDUCED), data="digits",
                      img_size=32, train_limit=16, val_limit=8)
    with caplog.at_level(logging.INFO, logger="visattn"):
        model = build_model(cfg, build_task(cfg))
    assert "1000 classes" in caplog.text and "head.fc" in caplog.text
    assert "from the published weights maxvit_tiny.in1k_224" in caplog.text
    assert model.config.num_classes == 10 and model.config.partition_size == 7
    own, ref = model.state_dict(), published.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in own if not k.startswith("head.fc."))
    # through the command line, --model picked from the tag; a tag of another model is refused
    run = tmp_path / "run"
    assert main(["train", "--pretrained", TAG, *SET, "--data", "digits", "--img-size", "32", "--train-limit", "16",
                 "--val-limit", "8", "--batch-size", "8", "--epochs", "1", "--threads", "1", "--out", str(run)]) == 0
    assert json.loads((run / "model.json").read_text())["model"] == "maxvit_tiny"
    with pytest.raises(Exception, match="holds davit_tiny weights"):
        build_model(TrainConfig(model="maxvit_tiny", pretrained="davit_tiny.msft_in1k", data="digits", img_size=32),
                    build_task(cfg))
