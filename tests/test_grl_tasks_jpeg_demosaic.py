"""JPEG artefact removal and demosaicking: the degradations, PSNR-B, the Malvar interpolation, paired folders, the
baselines' metrics, errors, and the command line (the generic restoration tests in test_grl_restoration.py also run
over both tasks)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import visattn
from visattn.cli import main
from visattn.models.grl import GRL
from visattn.tasks.restoration.data import (
    RestorationData,
    builtin_photos,
    find_pair_groups,
    load_pairs,
    load_restoration_data,
)
from visattn.tasks.restoration.jpeg import JpegArtifactTask, JpegCompression, blocking_effect_factor, psnr_b
from visattn.tasks.restoration.metrics import psnr, quantize
from visattn.tasks.restoration.mosaic import BayerMosaic, DemosaicTask, bayer_mosaic, malvar_demosaic

TINY = ["--set", "embed_dim=16", "--set", "depths=[2]", "--set", "num_heads_window=[2]", "--set",
        "num_heads_stripe=[2]", "--set", "window_size=8", "--set", "stripe_size=8,null", "--set",
        "stripe_groups=null,4", "--set", "cpb_hidden=32"]


def _pil_jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    # an independent Pillow round trip of one (C, H, W) image in [0, 1]
    arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    out = np.asarray(Image.open(buf)).astype(np.float32) / 255
    return torch.from_numpy(out.reshape(arr.shape)).permute(2, 0, 1)


def _ramp(H: int, W: int) -> torch.Tensor:
    # a different linear ramp in each channel, inside [0, 1]
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return torch.stack([0.1 + 0.01 * yy + 0.02 * xx, 0.7 - 0.005 * yy + 0.01 * xx, 0.2 + 0.015 * yy - 0.004 * xx])[None]


# --- JPEG --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_shapes_levels_and_quality(channels: int) -> None:
    clean = torch.rand(2, channels, 24, 40, generator=torch.Generator().manual_seed(0))
    clean[1] = torch.linspace(0, 1, 40).expand(channels, 24, 40)
    errors = []
    for q in (10, 40, 95):
        out = JpegCompression(q)(clean, torch.Generator())
        assert out.shape == clean.shape and out.dtype == clean.dtype
        assert 0 <= float(out.min()) and float(out.max()) <= 1 and torch.equal(out, quantize(out))   # 8-bit levels
        torch.testing.assert_close(out[0], _pil_jpeg(clean[0], q))                  # what Pillow decodes
        errors.append(float((out - clean).abs().mean()))
    assert errors[0] > errors[1] > errors[2]                                         # higher quality, less damage


def test_opencv_encoder_matches_pillow_or_says_what_is_missing() -> None:
    # with OpenCV installed its JPEGs equal Pillow's (libjpeg-turbo, 4:2:0, as measured in docs/grl.md); without it,
    # a clear error names the package
    (_, x), = builtin_photos(["chelsea"], 3)
    x = x[:, :64, :80].float()[None] / 255
    try:
        import cv2  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs opencv-python-headless"):
            JpegCompression(10, "opencv")(x, torch.Generator())
        return
    for q in (10, 40):
        for c in (x, x[:, :1]):
            assert torch.equal(JpegCompression(q, "opencv")(c, torch.Generator()), JpegCompression(q)(c, None))


def test_jpeg_quality_and_encoder_are_validated(capsys) -> None:
    for bad in (0, 101, -5, 10.5, True, "10"):
        with pytest.raises(ValueError, match="JPEG quality must be an integer in 1-100"):
            JpegCompression(bad)
    with pytest.raises(ValueError, match="encoder must be one of pillow, opencv"):
        JpegCompression(10, "libjpeg")
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3 \\(RGB\\) channels"):
        JpegCompression(10)(torch.rand(1, 2, 16, 16), torch.Generator())
    assert main(["train", "--task", "jpeg", "--quality", "0", "--epochs", "1"]) == 1
    assert "JPEG quality must be an integer in 1-100, got 0" in capsys.readouterr().err


def test_psnr_b_known_values() -> None:
    # Restored: two flat 8-pixel-wide blocks of 0.5 and 0.25 side by side (16x16), clean: zeros. The only
    # neighbour difference is across the block boundary: 16 pairs of (0.5 - 0.25)^2 * 255^2 over the 16 + 16
    # boundary pairs H * (W/8 - 1) + W * (H/8 - 1); non-boundary mean 0; eta = log2 8 / log2 16 = 3/4.
    a = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    a[..., :8], a[..., 8:] = 0.5, 0.25
    bef = 0.75 * 16 * (0.25 * 255) ** 2 / 32
    torch.testing.assert_close(blocking_effect_factor(a * 255), torch.tensor([[bef]], dtype=torch.float64))
    mse = (0.5 ** 2 + 0.25 ** 2) / 2 * 255 ** 2
    expected = 10 * math.log10(255 ** 2 / (mse + bef))
    assert float(psnr_b(a, torch.zeros_like(a))[0]) == pytest.approx(expected, abs=1e-9)
    assert float(psnr(a, torch.zeros_like(a), y_channel=False)[0]) == pytest.approx(10 * math.log10(255 ** 2 / mse))
    # the same step one pixel off the block grid is not blocking: BEF 0 and PSNR-B = PSNR
    b = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    b[..., :9], b[..., 9:] = 0.5, 0.25
    assert float(blocking_effect_factor(b)[0, 0]) == 0
    assert float(psnr_b(b, a)[0]) == pytest.approx(float(psnr(b, a, y_channel=False)[0]))
    # colour: the mean of the channels' PSNR-B; a JPEG q10 photo has blocking, so PSNR-B < PSNR
    (_, cam), = builtin_photos(["camera"], 3)
    x = cam[:, :128, :128].float()[None] / 255
    j = JpegCompression(10)(x, torch.Generator())
    per_channel = torch.stack([psnr_b(j[:, c:c + 1], x[:, c:c + 1]) for c in range(3)]).mean(0)
    torch.testing.assert_close(psnr_b(j, x), per_channel)
    assert float(psnr_b(j, x)[0]) < float(psnr(j, x, y_channel=False)[0]) - 0.2


def test_jpeg_evaluation_reports_the_decoded_jpeg_as_baseline() -> None:
    # identity "model": its metrics are the baseline's; both equal an independent Pillow round trip's
    (_, cam), = builtin_photos(["camera"], 1)
    clean = cam[:, 200:296, 180:300]                           # the cameraman: edges
    task = JpegArtifactTask(RestorationData(train=[], val=[("cam", clean, None)], source={}), JpegCompression(20),
                            patch=8, channels=1)
    result = task.evaluate(torch.nn.Identity())
    x = clean.float()[None] / 255
    ref = _pil_jpeg(x[0], 20)[None]
    assert result["val_jpeg_psnr"] == pytest.approx(float(psnr(ref, x, y_channel=False)[0]), abs=1e-9)
    assert result["val_jpeg_psnrb"] == pytest.approx(float(psnr_b(ref, x)[0]), abs=1e-9)
    assert result["val_psnr"] == result["val_jpeg_psnr"] and result["val_psnrb"] == result["val_jpeg_psnrb"]
    assert 25 < result["val_jpeg_psnr"] < 40 and result["val_jpeg_psnrb"] < result["val_jpeg_psnr"]
    assert "PSNRB" in task.eval_report(result, None, "") and result["degradation"]["quality"] == 20


# --- mosaic ------------------------------------------------------------------------------------------------------

def test_mosaic_is_rggb_and_keeps_the_samples() -> None:
    x = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(0))
    cfa = bayer_mosaic(x)
    assert cfa.shape == (2, 1, 8, 10)
    assert torch.equal(cfa[:, 0, 0::2, 0::2], x[:, 0, 0::2, 0::2])                 # R
    assert torch.equal(cfa[:, 0, 0::2, 1::2], x[:, 1, 0::2, 1::2])                 # G on R rows
    assert torch.equal(cfa[:, 0, 1::2, 0::2], x[:, 1, 1::2, 0::2])                 # G on B rows
    assert torch.equal(cfa[:, 0, 1::2, 1::2], x[:, 2, 1::2, 1::2])                 # B
    d = BayerMosaic()
    out = d(x, torch.Generator())
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(bayer_mosaic(out), cfa) and torch.equal(d.input_to_file(out), cfa)   # samples kept
    torch.testing.assert_close(d.input_from_file(cfa), out)                      # a mosaic file
    torch.testing.assert_close(d.input_from_file(cfa.expand(-1, 3, -1, -1)), out)   # ... read as grey RGB
    torch.testing.assert_close(d.input_from_file(x), out)                        # an RGB image: sampled per site


def test_malvar_is_exact_on_constant_and_linear_images() -> None:
    const = torch.tensor([0.3, 0.6, 0.45], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 10, 12)
    torch.testing.assert_close(malvar_demosaic(bayer_mosaic(const)), const, atol=1e-12, rtol=0)   # borders too
    ramp = _ramp(16, 20)
    out = malvar_demosaic(bayer_mosaic(ramp))
    torch.testing.assert_close(out[..., 2:-2, 2:-2], ramp[..., 2:-2, 2:-2], atol=1e-12, rtol=0)  # interior
    assert float((out - ramp).abs().max()) > 1e-3            # the reflected border is not linear: not trivially so
    # the baseline: the interpolation rounded to 8 bits; on the ramp's interior within half a level
    d = BayerMosaic()
    base = d.baseline(d(ramp.float(), torch.Generator()))
    assert torch.equal(base, quantize(base))
    assert float((base - ramp)[..., 2:-2, 2:-2].abs().max()) <= 0.5 / 255 + 1e-6


def test_malvar_baseline_metric_on_a_photo() -> None:
    # PSNR (RGB) of Malvar on a held-out photo: far better than bilinear's nearest-colour damage, below lossless
    (_, x), = builtin_photos(["chelsea"], 3)
    x = x[:, :128, :160].float()[None] / 255
    d = BayerMosaic()
    value = float(psnr(d.baseline(d(x, torch.Generator())), x, y_channel=False)[0])
    nearest = x.clone()
    nearest[:, :, 1::2] = nearest[:, :, 0::2]                  # a crude reconstruction to compare with
    assert value > float(psnr(nearest, x, y_channel=False)[0]) + 3 and 28 < value < 50


def test_mosaic_errors() -> None:
    with pytest.raises(ValueError, match="whole 2x2 cells.*got 7x8"):
        bayer_mosaic(torch.rand(1, 3, 7, 8))
    with pytest.raises(ValueError, match="whole 2x2 cells.*got 8x9"):
        malvar_demosaic(torch.rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="RGB images"):
        bayer_mosaic(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="in_chans=3, got 1"):
        DemosaicTask(RestorationData(train=[], val=[], source={}), BayerMosaic(), patch=2, channels=1)
    with pytest.raises(ValueError, match="multiple of 2"):
        DemosaicTask(RestorationData(train=[], val=[], source={}), BayerMosaic(), patch=33)


def test_odd_evaluation_images_are_cropped_to_even() -> None:
    clean = (torch.rand(3, 35, 33, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    task = DemosaicTask(RestorationData(train=[], val=[("odd", clean, clean)], source={}), BayerMosaic(), patch=2)
    _, kept, given = task.val_set[0]
    assert kept.shape == given.shape == (3, 34, 32)
    result = task.evaluate(torch.nn.Identity())
    assert result["val_psnr"] == pytest.approx(result["val_malvar_psnr"])


# --- paired folders ----------------------------------------------------------------------------------------------

def _paired_folder(root, names_in, names_tg, size=(40, 48)):
    g = np.random.default_rng(0)
    (root / "input").mkdir(parents=True)
    (root / "target").mkdir()
    for n in names_tg:
        Image.fromarray(g.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "target" / f"{n}.png")
    for n in names_in:
        target = root / "target" / f"{n}.png"
        if target.exists():
            Image.open(target).save(root / "input" / f"{n}.jpg", quality=10)
        else:
            Image.fromarray(g.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "input" / f"{n}.jpg")


def test_paired_folders_match_names_and_train_on_pairs(tmp_path) -> None:
    _paired_folder(tmp_path / "bad", ["a", "b", "x"], ["a", "b", "y"])
    with pytest.raises(ValueError, match="only in input/: x; only in target/: y"):
        load_pairs(find_pair_groups(tmp_path / "bad"), 3)
    _paired_folder(tmp_path / "ok", ["a", "b", "c"], ["a", "b", "c"])
    pairs = load_pairs(find_pair_groups(tmp_path / "ok"), 3)
    assert [n for n, _, _ in pairs] == ["a", "b", "c"] and pairs[0][1].shape == pairs[0][2].shape == (3, 40, 48)
    data = load_restoration_data(str(tmp_path / "ok"), scale=1, channels=3, patch=16, val_fraction=0.34)
    assert len(data.train) == 2 and len(data.val) == 1 and data.val[0][2] is not None
    assert data.train[0][1].shape == (6, 40, 48)                                    # input and target stacked
    task = JpegArtifactTask(data, JpegCompression(10), patch=16)
    batch = task.collate([task.train_set[i] for i in range(4)])
    x, y = task.augment(batch, torch.Generator().manual_seed(0), 4, 0)
    # the given input, not a fresh JPEG of the target: PSNR(input, target) is the files' own, far from lossless
    assert x.shape == y.shape == (4, 3, 16, 16)
    assert not torch.equal(x, JpegCompression(10)(y, torch.Generator()))
    # one optimisation step on the pairs reduces the loss
    torch.manual_seed(0)
    model = visattn.create_model("grl_tiny", **{**GRL.test_overrides, "upscale": 1})
    loss = task.loss(task.forward(model, x), y)
    loss.backward()
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    torch.optim.SGD(model.parameters(), lr=0.003 / norm).step()
    with torch.no_grad():
        assert float(task.loss(task.forward(model, x), y)) < float(loss.detach()) - 1e-4


# --- command line ------------------------------------------------------------------------------------------------

def test_cli_grey_jpeg_on_paired_folders_and_errors(tmp_path, capsys) -> None:
    # train a grey q10 model on a paired folder, evaluate on a LIVE1-style folder of clean images, restore; an RGB
    # image into the grey model is refused
    _paired_folder(tmp_path / "pairs", ["a", "b", "c"], ["a", "b", "c"])
    bench = tmp_path / "live1"
    bench.mkdir()
    g = np.random.default_rng(1)
    Image.fromarray(g.integers(0, 255, (36, 44), dtype=np.uint8)).save(bench / "g.png")
    run = tmp_path / "run"
    assert main(["train", "--task", "jpeg", "--quality", "10", *TINY, "--set", "in_chans=1", "--data",
                 str(tmp_path / "pairs"), "--val-data", str(bench), "--img-size", "16", "--epochs", "1",
                 "--batch-size", "10", "--threads", "1", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert {"val_psnrb", "val_jpeg_psnrb"} <= set(summary) and summary["val_count"] == 1
    meta = json.loads((run / "model.json").read_text())
    assert meta["config"]["in_chans"] == 1 and meta["degradation"] == {"name": "jpeg", "scale": 1, "quality": 10,
                                                                       "encoder": "pillow"}
    assert main(["eval", "--checkpoint", str(run), "--threads", "1"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["val_psnrb"] == pytest.approx(summary["val_psnrb"], abs=1e-3)
    out = tmp_path / "out"
    assert main(["restore", "--checkpoint", str(run), "--out", str(out), "--quality", "20", "--threads", "1",
                 str(bench / "g.png")]) == 0
    assert "trained with quality 10" in capsys.readouterr().err
    with Image.open(out / "g_dejpeg.png") as im:
        assert im.mode == "L" and im.size == (44, 36)
    assert main(["restore", "--checkpoint", str(run), "--out", str(out), "--threads", "1",
                 str(tmp_path / "pairs" / "target" / "a.png")]) == 1
    assert "is an RGB image but the model restores grayscale" in capsys.readouterr().err
    assert main(["restore", "--checkpoint", str(run), "--quality", "101", str(bench / "g.png")]) == 1
    assert "JPEG quality must be an integer in 1-100" in capsys.readouterr().err
    assert main(["train", "--task", "demosaic", "--set", "in_chans=1", "--epochs", "1"]) == 1
    assert "in_chans=3, got 1" in capsys.readouterr().err


def test_cli_demosaic_restores_a_mosaic_file_as_rgb(tmp_path, capsys) -> None:
    data = tmp_path / "photos"
    data.mkdir()
    g = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(g.integers(0, 255, (24, 28, 3), dtype=np.uint8)).save(data / f"p{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--task", "demosaic", *TINY, "--data", str(data), "--img-size", "16", "--epochs", "1",
                 "--batch-size", "10", "--threads", "1", "--out", str(run)]) == 0
    x = torch.rand(1, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    cfa = (bayer_mosaic(x)[0, 0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(cfa).save(tmp_path / "m.png")                                   # a one-channel mosaic
    Image.fromarray(cfa[:, :23]).save(tmp_path / "odd.png")
    out = tmp_path / "out"
    assert main(["restore", "--checkpoint", str(run), "--out", str(out), "--threads", "1", str(tmp_path / "m.png"),
                 str(tmp_path / "odd.png")]) == 0
    err = capsys.readouterr().err
    assert "odd.png: a Bayer RGGB mosaic is made of whole 2x2 cells" in err and "1 of 2 image(s) not restored" in err
    with Image.open(out / "m_demosaicked.png") as im:
        assert im.mode == "RGB" and im.size == (24, 20)                               # colour out of a mosaic
    # --degrade saves the mosaic as a one-channel image, which restores to the same output
    Image.fromarray((x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp_path / "rgb.png")
    assert main(["restore", "--checkpoint", str(run), "--out", str(out), "--degrade", "--threads", "1",
                 str(tmp_path / "rgb.png")]) == 0
    with Image.open(out / "rgb_mosaic.png") as im, Image.open(out / "rgb_demosaicked.png") as restored:
        assert im.mode == "L" and np.array_equal(np.asarray(im), cfa) and restored.mode == "RGB"
        again = np.asarray(restored)
    with Image.open(out / "m_demosaicked.png") as first:
        assert np.array_equal(np.asarray(first), again)
