"""Restoration task pieces: bicubic resize, PSNR / SSIM, tiled inference, degradations, data, and the CLI end to end;
generic tests over every registered restoration task."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import visattn
from visattn.cli import main
from visattn.models.grl import GRL
from visattn.tasks import get_task
from visattn.tasks.restoration.data import PatchDataset, RestorationData, load_benchmark, load_restoration_data
from visattn.tasks.restoration.degradations import BicubicDownscale, Degradation, GaussianNoise
from visattn.tasks.image_io import read_image_float
from visattn.tasks.restoration.metrics import imresize, psnr, quantize, rgb_to_y, ssim
from visattn.tasks.restoration.task import RestorationTask, list_restoration_tasks
from visattn.tasks.restoration.tiling import count_tiles, tiled_forward

RESTORATION_TASKS = list_restoration_tasks()

# --- bicubic --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imresize_matches_matlab_semantics(scale: int) -> None:
    # MATLAB imresize = antialiased Keys bicubic (a = -0.5) with symmetric border padding. PyTorch's antialiased
    # bicubic uses the same kernel but renormalises at borders, so it must agree on a symmetrically pre-padded image.
    x = torch.rand(1, 3, 12 * scale, 8 * scale, dtype=torch.float64)
    pad = 4 * scale
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="symmetric"))
    ref = F.interpolate(padded, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    ref = ref[..., 4:-4, 4:-4]
    out = imresize(x, 1 / scale)
    assert out.shape == (1, 3, 12, 8)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    # upscaling (no antialiasing) against the same kernel
    up = imresize(out, scale)
    padded = torch.from_numpy(np.pad(out.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode="symmetric"))
    ref_up = F.interpolate(padded, scale_factor=scale, mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(up, ref_up[..., 4 * scale:-4 * scale, 4 * scale:-4 * scale], atol=1e-12, rtol=0)


def test_imresize_is_antialiased_and_keeps_constants() -> None:
    # Stripes of period 4 (0 1 1 0) have no content below the new Nyquist limit of a 4x reduction: antialiased
    # downscaling greys them out to their mean, plain bicubic sampling hits the bright pair and aliases.
    stripes = ((torch.arange(32) % 4 == 1) | (torch.arange(32) % 4 == 2)).double()
    x = stripes.expand(32, 32)[None, None]
    small = imresize(x, 0.25)
    assert (small - 0.5).abs().max() < 0.02
    aliased = F.interpolate(x, scale_factor=0.25, mode="bicubic", align_corners=False)
    assert (aliased - 0.5).abs().max() > 0.4
    const = torch.full((1, 1, 17, 23), 0.3, dtype=torch.float64)
    torch.testing.assert_close(imresize(const, 0.5), torch.full((1, 1, 9, 12), 0.3, dtype=torch.float64))


# --- metrics --------------------------------------------------------------------------------------------------------


def test_psnr_known_values() -> None:
    a = torch.full((1, 1, 16, 16), 100 / 255, dtype=torch.float64)
    b = a + 5 / 255
    assert float(psnr(a, b, y_channel=False)[0]) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)
    # on Y: a grey offset of d in every channel moves Y by d * (65.481 + 128.553 + 24.966) / 255
    rgb_a, rgb_b = a.expand(1, 3, 16, 16), b.expand(1, 3, 16, 16)
    dy = 5 * 219 / 255
    assert float(psnr(rgb_a, rgb_b)[0]) == pytest.approx(20 * math.log10(255 / dy), abs=1e-9)
    # the border crop ignores what happens near the edges
    c = b.clone()
    c[..., :2, :] = 0
    assert float(psnr(a, c, border=2, y_channel=False)[0]) == pytest.approx(20 * math.log10(255 / 5), abs=1e-9)


def test_rgb_to_y_range() -> None:
    white, black = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert torch.allclose(rgb_to_y(white), torch.tensor(235.0)) and torch.allclose(rgb_to_y(black), torch.tensor(16.0))


def test_ssim_known_values() -> None:
    x = torch.rand(2, 3, 32, 40, dtype=torch.float64)
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))
    # constant images: only the luminance term remains, (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.2, 0.6
    A = torch.full((1, 1, 20, 20), a, dtype=torch.float64)
    B = torch.full((1, 1, 20, 20), b, dtype=torch.float64)
    c1 = (0.01 * 255) ** 2
    expected = (2 * a * b * 255 ** 2 + c1) / ((a * 255) ** 2 + (b * 255) ** 2 + c1)
    assert float(ssim(A, B, y_channel=False)[0]) == pytest.approx(expected, rel=1e-12)


def test_ssim_matches_scikit_image() -> None:
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 40, 50, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = structural_similarity(a[0, 0].numpy() * 255, b[0, 0].numpy() * 255, data_range=255,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert float(ssim(a, b, y_channel=False)[0]) == pytest.approx(ref, abs=1e-12)


# --- tiled inference ------------------------------------------------------------------------------------------------


def _local_sr_model(scale: int) -> torch.nn.Module:
    # receptive field: 2 input pixels on each side (two 3x3 convs), then pixel shuffle
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(),
                               torch.nn.Conv2d(8, 3 * scale * scale, 3, padding=1),
                               torch.nn.PixelShuffle(scale)).double()


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_tiled_equals_whole_image_when_overlap_covers_the_receptive_field(scale: int) -> None:
    model = _local_sr_model(scale)
    x = torch.rand(1, 3, 45, 61, dtype=torch.float64)
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_forward(model, x, scale=scale, tile=16, overlap=8)   # overlap/4 = 2 px of context
        short = tiled_forward(model, x, scale=scale, tile=16, overlap=4)   # 1 px: tile borders show
    torch.testing.assert_close(tiled, whole, atol=1e-12, rtol=0)
    assert (short - whole).abs().max() > 1e-6


def test_tiled_grl_single_tile_and_blend_weights() -> None:
    model = visattn.create_model("grl_tiny", **GRL.test_overrides).eval()
    x = torch.rand(1, 3, 20, 24)
    calls = []
    with torch.no_grad():
        torch.testing.assert_close(tiled_forward(model, x, scale=2, tile=24, overlap=8), model(x))
        out = tiled_forward(model, x, scale=2, tile=12, overlap=4, progress=calls.append)
    assert out.shape == (1, 3, 40, 48) and torch.isfinite(out).all()
    assert len(calls) == 2 * 3 == count_tiles(20, 24, tile=12, overlap=4)   # rows at 0, 8; columns at 0, 8, 12
    assert count_tiles(20, 24, tile=24, overlap=8) == count_tiles(20, 24, tile=0, overlap=8) == 1
    # a constant function blends to exactly that constant (the weights are normalised everywhere)
    ones = tiled_forward(lambda t: torch.ones(t.shape[0], 1, t.shape[2] * 2, t.shape[3] * 2), x, scale=2, tile=12,
                         overlap=4)
    torch.testing.assert_close(ones, torch.ones_like(ones))


# --- task: degradation and data -------------------------------------------------------------------------------------


def _task(degradation: Degradation, patch: int = 16) -> RestorationTask:
    g = torch.Generator().manual_seed(0)
    train = [("a", (torch.rand(3, 40, 48, generator=g) * 255).to(torch.uint8)),
             ("b", (torch.rand(3, 64, 33, generator=g) * 255).to(torch.uint8))]
    val = [("v", (torch.rand(3, 24, 28, generator=g) * 255).to(torch.uint8), None)]
    return RestorationTask(RestorationData(train=train, val=val, source={}), degradation, patch=patch)


def test_sr_augment_pairs_lr_with_its_hr() -> None:
    task = _task(BicubicDownscale(4))
    images = task.collate([task.train_set[i] for i in range(6)])
    x, y = task.augment(images, torch.Generator().manual_seed(1), 8, 2)
    assert x.shape == (6, 3, 4, 4) and y.shape == (6, 3, 16, 16)
    torch.testing.assert_close(x, (imresize(y, 0.25).clamp(0, 1) * 255).round() / 255)
    # the flip / rotation is one of the eight symmetries of the patch, same for input and target
    for img, target in zip(images.float() / 255, y):
        views = [torch.rot90(v, k, (-2, -1)) for v in (img, img.flip(-1)) for k in range(4)]
        assert any(torch.equal(v, target) for v in views)


def test_denoise_augment_adds_gaussian_noise_of_sigma() -> None:
    task = _task(GaussianNoise(25))
    images = task.collate([task.train_set[i] for i in range(8)])
    x, y = task.augment(images, torch.Generator().manual_seed(1), 8, 0)
    assert x.shape == y.shape
    assert float((x - y).std() * 255) == pytest.approx(25, rel=0.05)
    # the same step draws the same noise however the global batch is split between processes
    x1, _ = task.augment(images[4:], torch.Generator().manual_seed(1), 8, 4)
    torch.testing.assert_close(x1 - _, x[4:] - y[4:])


def test_patch_crops_stay_inside_their_images() -> None:
    images = [torch.zeros(1, 20, 30, dtype=torch.uint8), torch.zeros(1, 50, 17, dtype=torch.uint8)]
    ds = PatchDataset(images, 16, 200, seed=3)
    for i in range(len(ds)):
        patch, k = ds[i]
        assert patch.shape == (1, 16, 16)
        y, x = ds.corners[i].tolist()
        assert 0 <= y <= images[k].shape[1] - 16 and 0 <= x <= images[k].shape[2] - 16


def test_evaluate_reports_model_and_bicubic() -> None:
    task = _task(BicubicDownscale(2))
    model = visattn.create_model("grl_tiny", **GRL.test_overrides).eval()
    result = task.evaluate(model)
    hr = task.val_set[0][1].float()[None] / 255
    base = task.degradation.baseline(task.prepare_eval(task.val_set[0][1], None, 0), tuple(hr.shape[-2:]))
    assert result["val_bicubic_psnr"] == pytest.approx(float(psnr(base, hr, border=2)[0]))
    assert set(result) >= {"val_psnr", "val_ssim", "val_loss", "val_bicubic_ssim"}
    # a model of another scale is refused with the reason
    with pytest.raises(ValueError, match="upscales x2; --task .* needs one that upscales x3"):
        _task(BicubicDownscale(3), patch=18).evaluate(model)


# --- image files ------------------------------------------------------------------------------------------------------


def test_read_16bit_grayscale_keeps_precision(tmp_path) -> None:
    values = np.array([[0, 1000, 65535], [30000, 40000, 50000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    x, info = read_image_float(tmp_path / "g16.png")
    assert info["bits"] == 16 and x.shape == (1, 2, 3)
    torch.testing.assert_close(x[0], torch.from_numpy(values / 65535.0).float())


# --- CLI end to end ---------------------------------------------------------------------------------------------------

TINY_GRL = ["--set", "embed_dim=16", "--set", "depths=[2]", "--set", "num_heads_window=[2]", "--set",
            "num_heads_stripe=[2]", "--set", "window_size=8", "--set", "stripe_size=8,null", "--set",
            "stripe_groups=null,4", "--set", "cpb_hidden=32"]


@pytest.mark.slow
def test_train_sr_on_a_folder_with_a_benchmark(tmp_path) -> None:
    # `visattn train --task sr` on a folder of HQ images (one of them corrupt) with a Set5-style benchmark folder.
    data = tmp_path / "hq"
    data.mkdir()
    g = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(g.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(data / f"img{i}.png")
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    bench = tmp_path / "Set2" / "HR"
    bench.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(g.integers(0, 255, (34, 30, 3), dtype=np.uint8)).save(bench / f"b{i}.png")
    run = tmp_path / "run"
    args = ["train", "--task", "sr", "--scale", "2", *TINY_GRL, "--data", str(data), "--val-data",
            str(tmp_path / "Set2"), "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--threads", "1",
            "--out", str(run)]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_count"] == 2 and summary["best"]["metric"] == "val_psnr"
    assert math.isfinite(summary["val_psnr"]) and math.isfinite(summary["val_bicubic_psnr"])
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == "sr" and meta["scale"] == 2 and meta["config"]["upscale"] == 2
    assert meta["task_options"]["scale"] == 2 and meta["degradation"] == {"name": "bicubic", "scale": 2}
    # eval without --data uses the recorded evaluation images and reproduces the run's final validation
    assert main(["eval", "--checkpoint", str(run), "--threads", "1"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["val_count"] == 2 and report["data"] == str(tmp_path / "Set2")
    assert report["val_psnr"] == pytest.approx(summary["val_psnr"], abs=1e-3)
    assert main(["restore", "--checkpoint", str(run), "--threads", "1", str(bench / "b0.png")]) == 0
    assert (bench / "b0_x2.png").is_file()


@pytest.fixture()
def sr_run(tmp_path_factory) -> object:
    """An exported (untrained) x2 SR model with visattn metadata, as `visattn train` leaves it."""
    from visattn.checkpoint import export_model, model_meta

    run = tmp_path_factory.mktemp("sr_run")
    model = visattn.create_model("grl_tiny", **GRL.test_overrides)
    export_model(run, model.state_dict(), model_meta(model, task="sr", scale=2))
    return run


def test_restore_cli_outputs_and_bad_inputs(sr_run, tmp_path, capsys) -> None:
    Image.fromarray(np.full((20, 24, 3), 128, dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.full((20, 24), 300, dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(np.zeros((5, 30, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    args = ["restore", "--checkpoint", str(sr_run), "--tile", "16", "--tile-overlap", "8", "--threads", "1"]
    assert main([*args, *(str(tmp_path / n) for n in ("rgb.png", "g16.png", "small.png", "bad.png"))]) == 0
    err = capsys.readouterr().err
    assert "small.png" in err and "8x8" in err and "bad.png" in err
    with Image.open(tmp_path / "rgb_x2.png") as im:
        assert im.size == (48, 40) and im.mode == "RGB"
    with Image.open(tmp_path / "g16_x2.png") as im:
        assert im.size == (48, 40) and im.mode == "I;16"                 # grayscale 16-bit stays so
    # no overwrite without --overwrite; the existing output is untouched
    before = (tmp_path / "rgb_x2.png").read_bytes()
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    assert main([*args, str(tmp_path / "rgb.png")]) == 1
    assert (tmp_path / "rgb_x2.png").read_bytes() == before
    assert main([*args, "--overwrite", str(tmp_path / "rgb.png")]) == 0
    assert (tmp_path / "rgb_x2.png").read_bytes() != before
    # the checkpoint says what it is
    assert main([*args, "--scale", "4", str(tmp_path / "rgb.png")]) == 1
    assert "x2" in capsys.readouterr().err


def test_restore_grayscale_denoiser(tmp_path, capsys) -> None:
    from visattn.checkpoint import export_model, model_meta

    model = visattn.create_model("grl_tiny_denoise", **{**GRL.test_overrides, "upscale": 1, "in_chans": 1})
    export_model(tmp_path / "run", model.state_dict(), model_meta(model, task="denoise", noise_sigma=25.0))
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    Image.fromarray(np.full((16, 18), 90, dtype=np.uint8)).save(tmp_path / "gray.png")
    args = ["restore", "--checkpoint", str(tmp_path / "run"), "--threads", "1"]
    assert main([*args, str(tmp_path / "rgb.png")]) == 1
    assert "grayscale" in capsys.readouterr().err
    assert main([*args, "--task", "sr", str(tmp_path / "gray.png")]) == 1
    assert "denoise model" in capsys.readouterr().err
    assert main([*args, "--add-noise", "--sigma", "25", str(tmp_path / "gray.png")]) == 0
    with Image.open(tmp_path / "gray_denoised.png") as out, Image.open(tmp_path / "gray_noisy.png") as noisy:
        assert out.size == noisy.size == (18, 16) and out.mode == "L"
        assert np.asarray(noisy).std() > 10                              # sigma 25 noise was added first


def test_training_folder_bad_inputs(tmp_path, caplog) -> None:
    from visattn.tasks.base import DataError

    data = tmp_path / "hq"
    data.mkdir()
    Image.fromarray(np.full((40, 44, 3), 200, dtype=np.uint8)).save(data / "rgb.png")
    Image.fromarray(np.full((40, 40), 120, dtype=np.uint8)).save(data / "gray.png")          # converted to RGB
    Image.fromarray(np.full((36, 40), 40000, dtype=np.uint16)).save(data / "deep.png")      # 16-bit grayscale
    Image.fromarray(np.zeros((10, 40, 3), dtype=np.uint8)).save(data / "small.png")         # below the patch
    (data / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (data / "notes.txt").write_text("ignored")
    loaded = load_restoration_data(str(data), scale=2, channels=3, patch=32, val_fraction=0.3)
    names = {n for n, _ in loaded.train} | {n for n, _, _ in loaded.val}
    assert names == {"rgb", "gray", "deep"}
    assert "corrupt.jpg" in caplog.text and "small" in caplog.text
    deep = dict(loaded.train).get("deep")
    deep = deep if deep is not None else next(x for n, x, _ in loaded.val if n == "deep")
    assert deep.shape[0] == 3 and int(deep.float().mean().round()) == round(40000 / 65535 * 255)
    with pytest.raises(DataError, match="no training image"):
        load_restoration_data(str(data), scale=2, channels=3, patch=64, val_data=str(data))


def test_benchmark_folder_uses_given_lr(tmp_path) -> None:
    root = tmp_path / "Set2"
    (root / "HR").mkdir(parents=True)
    (root / "LR_bicubic" / "X2").mkdir(parents=True)
    Image.fromarray(np.full((35, 30, 3), 10, dtype=np.uint8)).save(root / "HR" / "a.png")   # 35 -> cropped to 34
    Image.fromarray(np.full((17, 15, 3), 99, dtype=np.uint8)).save(root / "LR_bicubic" / "X2" / "ax2.png")
    Image.fromarray(np.full((20, 20, 3), 10, dtype=np.uint8)).save(root / "HR" / "b.png")   # no LR: generated
    items = {n: (hr, lr) for n, hr, lr in load_benchmark(root, 3, scale=2, input_dirs=BicubicDownscale(2).given_inputs)}
    assert items["a"][0].shape == (3, 34, 30) and int(items["a"][1][0, 0, 0]) == 99
    assert items["b"][1] is None
    # a degradation without given inputs (noise) generates them all, and reads the HR folder only
    items = load_benchmark(root, 3, input_dirs=GaussianNoise(25).given_inputs)
    assert [n for n, _, lr in items if lr is None] == ["a", "b"] and items[0][1].shape == (3, 35, 30)


def test_eval_cli_reports_psnr_of_a_restoration_checkpoint(sr_run, tmp_path, capsys) -> None:
    # `visattn eval` on an SR checkpoint: PSNR / SSIM over a folder of HR images, the same numbers as the task's own
    # evaluation of the same model and images, written to eval.json; wrong task or no data: one-line errors.
    from visattn.checkpoint import load_model

    hr = tmp_path / "hr"
    hr.mkdir()
    g = np.random.default_rng(1)
    for i in range(2):
        Image.fromarray(g.integers(0, 255, (26, 30, 3), dtype=np.uint8)).save(hr / f"h{i}.png")
    assert main(["eval", "--checkpoint", str(sr_run), "--data", str(hr), "--out", str(tmp_path / "ev"),
                 "--threads", "1"]) == 0
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["task"] == "sr" and report["degradation"]["scale"] == 2 and report["val_count"] == 2
    assert report["data"] == str(hr)
    model, _ = load_model(sr_run)
    items = load_benchmark(hr, 3, scale=2, input_dirs=BicubicDownscale(2).given_inputs)
    expected = RestorationTask(RestorationData(train=[], val=items, source={}), BicubicDownscale(2),
                               patch=2).evaluate(model)
    assert report["val_psnr"] == pytest.approx(expected["val_psnr"]) and math.isfinite(report["val_psnr"])
    assert report["val_bicubic_psnr"] == pytest.approx(expected["val_bicubic_psnr"])
    assert "PSNR" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(sr_run), "--data", str(hr), "--task", "denoise"]) == 1
    assert "upscales x2; --task denoise" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(sr_run)]) == 1
    assert "pass --data" in capsys.readouterr().err


# --- generic over every registered restoration task -------------------------------------------------------------------


def _degradation_of(name: str) -> Degradation:
    cls = get_task(name)
    return cls.make_degradation(cls.Options())


def _tiny_grl(d: Degradation) -> torch.nn.Module:
    torch.manual_seed(0)
    return visattn.create_model("grl_tiny", **{**GRL.test_overrides, **d.model_overrides()}).eval()


def _smooth(shape: tuple[int, ...]) -> torch.Tensor:
    # a smooth colour gradient in [0.2, 0.8]: little to lose in downscaling, no clipping of sigma-25 noise
    H, W = shape[-2:]
    yy = torch.linspace(0, 1, H, dtype=torch.float64)[:, None]
    xx = torch.linspace(0, 1, W, dtype=torch.float64)[None, :]
    channels = [0.2 + 0.6 * (a * yy + (1 - a) * xx) for a in (0.0, 0.5, 1.0)]
    return torch.stack(channels).expand(*shape).float().contiguous()


def test_builtin_restoration_tasks_are_registered() -> None:
    assert {"sr", "denoise"} <= set(RESTORATION_TASKS)
    assert get_task("sr").main_metric == get_task("denoise").main_metric == "val_psnr"


@pytest.mark.parametrize("name", RESTORATION_TASKS)
def test_degradation_shape_range_and_baseline(name: str) -> None:
    d = _degradation_of(name)
    s = d.scale
    clean = torch.rand(2, 3, 8 * s * 2, 8 * s * 3, generator=torch.Generator().manual_seed(0))
    out = d(clean, torch.Generator().manual_seed(1))
    assert out.shape == (2, 3, clean.shape[-2] // s, clean.shape[-1] // s) and torch.isfinite(out).all()
    if d.clipped:
        assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert float(out.mean()) == pytest.approx(float(clean.mean()), abs=0.01)    # no brightness shift
    torch.testing.assert_close(out, d(clean, torch.Generator().manual_seed(1)))  # the generator decides
    torch.testing.assert_close(d.eval_input(clean, 3), d.eval_input(clean, 3))  # evaluation is deterministic
    base = d.baseline(out, tuple(clean.shape[-2:]))
    assert base.shape == clean.shape and torch.equal(base, quantize(base))       # 8-bit, clean-sized
    assert d.metric_space in ("y", "rgb") and d.baseline_name and d.output_suffix and d.input_suffix
    # the baseline on a smooth gradient: a finite PSNR well above the degradation's damage on noise
    smooth = _smooth((1, 3, 16 * s, 16 * s))
    value = float(psnr(d.baseline(d(smooth, torch.Generator().manual_seed(2))), smooth, border=d.border,
                       y_channel=d.metric_space == "y")[0])
    assert math.isfinite(value) and value > 18


def test_baseline_known_values() -> None:
    smooth = _smooth((1, 3, 96, 96))
    for s in (2, 3, 4):                                   # bicubic of bicubic on a gradient: almost lossless
        d = BicubicDownscale(s)
        value = float(psnr(d.baseline(d(smooth, torch.Generator())), smooth, border=s)[0])
        assert 40 < value < 80
    d = GaussianNoise(25)                                 # the noisy input: 20 log10(255 / 25) = 20.17 dB
    value = float(psnr(d.baseline(d(smooth, torch.Generator().manual_seed(0))), smooth, y_channel=False)[0])
    assert value == pytest.approx(20 * math.log10(255 / 25), abs=0.1)


def test_degradation_parameters_are_validated() -> None:
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="integer scale of at least 2"):
            BicubicDownscale(bad)
    for bad in (0, -1, float("nan"), 300):
        with pytest.raises(ValueError, match=r"sigma must be a number in \(0, 255\]"):
            GaussianNoise(bad)


@pytest.mark.parametrize("name", RESTORATION_TASKS)
def test_one_step_reduces_the_loss(name: str) -> None:
    d = _degradation_of(name)
    task = _task(d, patch=max(16, 8 * d.scale))
    model = _tiny_grl(d)
    assert model.config.upscale == d.scale
    x, y = task.augment(task.collate([task.train_set[i] for i in range(4)]), torch.Generator().manual_seed(0), 4, 0)
    loss = task.loss(task.forward(model, x), y)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # a plain gradient step of length 0.01 in weight space (a fresh GRL's gradient norm varies ~10x between tasks),
    # shortened to 0.003 / 0.001 if it overshoots (it does for JPEG q10 of noise: +0.001, while 0.003 gives -0.018)
    norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    start = [p.detach().clone() for p in model.parameters()]
    changes = []
    for length in (0.01, 0.003, 0.001):
        with torch.no_grad():
            for p, p0 in zip(model.parameters(), start):
                p.copy_(p0 - length / norm * p.grad)
            changes.append(float(task.loss(task.forward(model, x), y)) - float(loss.detach()))
        if changes[-1] < -1e-4:
            break
    assert changes[-1] < -1e-4, changes


@pytest.mark.parametrize("name", RESTORATION_TASKS)
def test_tiled_restore_of_an_odd_image_agrees_with_whole_image(name: str) -> None:
    # A fresh GRL's grouped stripes and anchors mix each tile globally, so tiles cannot equal the whole image (the
    # local-model test above shows the blend is exact when context fits the overlap). Measured on this random model
    # (45x57 input, tile 24, overlap 12): mean |tiled - whole| is 4% (sr x4) / 32% (denoise) of the model's own
    # mean change over the baseline, PSNR(tiled, whole) 40.2 / 19.6 dB.
    d = _degradation_of(name)
    model = _tiny_grl(d)
    x = d.eval_input(_smooth((1, 3, 46 * d.scale, 58 * d.scale)), 0)[..., :45, :57]   # odd input size
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_forward(model, x, scale=d.scale, tile=24, overlap=12)
    assert tiled.shape == whole.shape == (1, 3, 45 * d.scale, 57 * d.scale) and torch.isfinite(tiled).all()
    change = (whole - d.baseline(x)).abs().mean()
    assert float((tiled - whole).abs().mean() / change) < 0.5
    # one tile covering the image is the whole-image call (to float rounding: the second call reads cached tables)
    torch.testing.assert_close(tiled_forward(model, x, scale=d.scale, tile=64, overlap=12), whole)


@pytest.mark.parametrize("name", RESTORATION_TASKS)
def test_cli_train_eval_restore_round_trip(name: str, tmp_path) -> None:
    d = _degradation_of(name)
    g = np.random.default_rng(0)
    data, bench = tmp_path / "hq", tmp_path / "bench"
    data.mkdir()
    bench.mkdir()
    for i in range(2):
        Image.fromarray(g.integers(0, 255, (40, 44, 3), dtype=np.uint8)).save(data / f"img{i}.png")
        Image.fromarray(g.integers(0, 255, (35, 33, 3), dtype=np.uint8)).save(bench / f"b{i}.png")
    run = tmp_path / "run"
    assert main(["train", "--task", name, *TINY_GRL, "--data", str(data), "--val-data", str(bench),
                 "--img-size", str(8 * max(d.scale, 4)), "--train-limit", "1", "--epochs", "1", "--batch-size", "10",
                 "--threads", "1", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["metric"] == "val_psnr" and summary["val_count"] == 2 and summary["steps"] == 10
    assert math.isfinite(summary["val_psnr"]) and math.isfinite(summary[f"val_{d.baseline_name}_psnr"])
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == name and meta["config"]["upscale"] == d.scale and meta["degradation"] == d.meta()
    assert main(["eval", "--checkpoint", str(run), "--threads", "1"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["val_psnr"] == pytest.approx(summary["val_psnr"], abs=1e-3) and report["data"] == str(bench)
    out = tmp_path / "restored"
    h, w = 35 // d.size_multiple * d.size_multiple, 33 // d.size_multiple * d.size_multiple  # a mosaic: even sides
    with Image.open(bench / "b0.png") as im:
        im.crop((0, 0, w, h)).save(tmp_path / "b0.png")
    assert main(["restore", "--checkpoint", str(run), "--out", str(out), "--tile", "16", "--tile-overlap", "8",
                 "--threads", "1", str(tmp_path / "b0.png")]) == 0
    with Image.open(out / f"b0{d.output_suffix}.png") as im:
        assert im.size == (w * d.scale, h * d.scale)
    assert main(["restore", "--checkpoint", str(run), "--out", str(out), "--degrade", "--suffix", "_demo",
                 "--threads", "1", str(bench / "b1.png")]) == 0
    with Image.open(out / f"b1{d.input_suffix}.png") as small, Image.open(out / "b1_demo.png") as restored:
        assert small.size == (math.ceil(w / d.scale), math.ceil(h / d.scale))
        assert restored.size == (small.size[0] * d.scale, small.size[1] * d.scale)


def test_predict_points_to_restore(sr_run, tmp_path, capsys) -> None:
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", "--checkpoint", str(sr_run), str(tmp_path / "a.png")]) == 1
    assert "visattn restore" in capsys.readouterr().err


def test_restore_option_errors(sr_run, tmp_path, capsys) -> None:
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    assert main(["restore", "--checkpoint", str(sr_run), "--sigma", "10", str(tmp_path / "a.png")]) == 1
    assert "--sigma is not an option of --task sr" in capsys.readouterr().err
    assert main(["restore", "--checkpoint", str(sr_run), "--task", "classification", str(tmp_path / "a.png")]) == 1
    assert "not classification" in capsys.readouterr().err
    assert main(["train", "--task", "denoise", "--sigma", "-5", "--epochs", "1"]) == 1
    assert "sigma must be a number" in capsys.readouterr().err
