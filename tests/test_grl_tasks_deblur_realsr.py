"""Motion / defocus deblurring and real-world SR: kernels, degradations, paired folders, the GRL heads they need
(6 -> 3 channels, nearest+conv), official key manifests of the new variants, and the CLI end to end."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from PIL import Image

import visattn
from visattn.cli import main
from visattn.models.grl import REFERENCE_PARAMS, remap_state_dict
from visattn.tasks import get_task
from visattn.tasks.base import DataError, RunSettings
from visattn.tasks.restoration.blur import (
    DefocusBlur,
    MotionBlur,
    blur,
    disk_kernel,
    half_disk_kernels,
    motion_kernel,
)
from visattn.tasks.restoration.data import (
    RestorationData,
    find_pair_groups,
    load_benchmark,
    load_pairs,
    load_restoration_data,
)
from visattn.tasks.restoration.deblur import DefocusDeblurTask, MotionDeblurTask
from visattn.tasks.restoration.metrics import quantize
from visattn.tasks.restoration.realsr import SecondOrderDegradation, gaussian_kernel, jpeg
from visattn.tasks.restoration.tiling import tiled_forward

from .conftest import GOLDEN

TINY = dict(embed_dim=16, depths=(2,), num_heads_window=(2,), num_heads_stripe=(2,), window_size=8,
            stripe_size=(8, None), stripe_groups=(None, 4), cpb_hidden=16, drop_path_rate=0.0)
TINY_FLAGS = ["--set", "embed_dim=16", "--set", "depths=[2]", "--set", "num_heads_window=[2]", "--set",
              "num_heads_stripe=[2]", "--set", "window_size=8", "--set", "stripe_size=8,null", "--set",
              "stripe_groups=null,4", "--set", "cpb_hidden=16"]

# --- kernels --------------------------------------------------------------------------------------------------------


def test_motion_kernels_are_normalised_centred_paths() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = []
    for size in (5, 15, 31):
        for _ in range(5):
            k = motion_kernel(size, g)
            assert k.shape == (size, size) and float(k.min()) >= 0
            assert float(k.sum()) == pytest.approx(1.0, abs=1e-5)
            ys, xs = torch.meshgrid(torch.arange(size.__float__()), torch.arange(size.__float__()), indexing="ij")
            c = (size - 1) / 2
            assert float((k * ys).sum()) == pytest.approx(c, abs=0.05) and float((k * xs).sum()) == pytest.approx(
                c, abs=0.05)                                                  # centred: no shift of the image
            sizes.append(int((k > 0).sum()))
    assert max(sizes) < 31 * 31 / 4                                       # a thin path, not a filled blob
    # the length decides how far the path reaches; the generator decides the path
    short = motion_kernel(31, torch.Generator().manual_seed(1), length=2.0)
    long = motion_kernel(31, torch.Generator().manual_seed(1), length=26.0)
    assert int((short > 0).sum()) < int((long > 0).sum())
    torch.testing.assert_close(motion_kernel(15, torch.Generator().manual_seed(3)),
                               motion_kernel(15, torch.Generator().manual_seed(3)))
    for bad in (4, 1):
        with pytest.raises(ValueError, match="odd size of at least 3"):
            motion_kernel(bad, g)
    with pytest.raises(ValueError, match="motion length must be in"):
        motion_kernel(9, g, length=7.0)


@pytest.mark.parametrize("radius", [0.4, 1.0, 2.5, 6.0])
def test_disk_kernel_radius_and_area(radius: float) -> None:
    k = disk_kernel(radius)
    size = 2 * math.ceil(radius) + 1
    assert k.shape == (size, size) and float(k.sum()) == pytest.approx(1.0, abs=1e-6)
    c = (size - 1) / 2
    r = torch.hypot(*torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij"))
    assert float(k[r > radius + 0.71].sum()) == 0                                    # nothing outside the circle
    inside = k[r < radius - 0.71]
    if inside.numel():
        torch.testing.assert_close(inside, torch.full_like(inside, float(k.max())))  # flat inside
        # the unnormalised coverage integrates to the disk's area
        assert float(k.sum() / k.max()) == pytest.approx(math.pi * radius ** 2, rel=0.05)
    left, right = half_disk_kernels(radius)
    torch.testing.assert_close((left + right) / 2, k)
    assert float(left[:, int(c) + 1:].sum()) == 0 and float(right[:, :int(c)].sum()) == 0
    with pytest.raises(ValueError, match="radius > 0"):
        disk_kernel(0.0)


def test_blur_is_a_centred_convolution() -> None:
    # a single bright pixel becomes the kernel itself, unflipped (true convolution), at the same place
    k = motion_kernel(9, torch.Generator().manual_seed(4))
    x = torch.zeros(1, 1, 21, 21)
    x[..., 10, 10] = 1
    torch.testing.assert_close(blur(x, k)[0, 0, 6:15, 6:15], k)
    g = gaussian_kernel(7, 1.0, 3.0, 0.0)                                 # sigma 3 along y: long along the column
    assert float(g.sum()) == pytest.approx(1.0, abs=1e-6) and float(g[:, 3].sum()) > 2 * float(g[3, :].sum())
    torch.testing.assert_close(gaussian_kernel(7, 1.0, 3.0, math.pi / 2), g.T)    # a quarter turn swaps the axes


# --- degradations ---------------------------------------------------------------------------------------------------


def test_degradation_shapes_ranges_and_baselines() -> None:
    clean = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    for d, in_ch, out_hw in ((MotionBlur(11), 3, (40, 52)), (DefocusBlur(3.0), 3, (40, 52)),
                             (DefocusBlur(3.0, dual_pixel=True), 6, (40, 52)), (SecondOrderDegradation(4), 3, (10, 13)),
                             (SecondOrderDegradation(2), 3, (20, 26))):
        out = d(clean, torch.Generator().manual_seed(1))
        assert out.shape == (2, in_ch, *out_hw) and 0 <= float(out.min()) and float(out.max()) <= 1
        assert torch.equal(out, quantize(out))                              # 8-bit, as saved inputs are
        base = d.baseline(out, (40, 52))
        assert base.shape == clean.shape
        assert not torch.equal(out, d(clean, torch.Generator().manual_seed(2)))   # random per draw
    # dual-pixel: the average of the views is the full-disk (combined) blur of the same radius
    d = DefocusBlur(3.0, min_radius=3.0, dual_pixel=True)
    views = d(clean, torch.Generator())
    torch.testing.assert_close(d.baseline(views), quantize(blur(clean, disk_kernel(3.0))), atol=1 / 255 + 1e-6,
                               rtol=0)
    assert d.model_overrides() == {"upscale": 1, "in_chans": 6, "out_chans": 3}


def test_second_order_degradation_is_reproducible_and_degrades() -> None:
    d = SecondOrderDegradation(4)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    a, b = d(x, torch.Generator().manual_seed(7)), d(x, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)
    assert d(torch.rand(1, 3, 35, 33), torch.Generator()).shape == (1, 3, 9, 9)      # ceil, as restore --degrade
    # Pillow JPEG: a flat image survives, quality matters on texture
    flat = torch.full((1, 3, 16, 16), 0.4)
    torch.testing.assert_close(jpeg(flat, 50), quantize(flat), atol=2 / 255, rtol=0)
    assert float((jpeg(x, 10) - x).abs().mean()) > float((jpeg(x, 95) - x).abs().mean())
    assert jpeg(x[:, :1], 50).shape == (1, 1, 64, 64)


def test_degradation_parameters_are_validated() -> None:
    for bad in (4, 3, True, 9.0):
        with pytest.raises(ValueError, match="odd integer of at least 5"):
            MotionBlur(bad)
    with pytest.raises(ValueError, match=r"max_radius must be a number in \(0, 64\]"):
        DefocusBlur(0)
    with pytest.raises(ValueError, match="exceeds max_radius"):
        DefocusBlur(2.0, min_radius=3.0)
    for bad in (3, 1, True):
        with pytest.raises(ValueError, match="scale 2 or 4"):
            SecondOrderDegradation(bad)


# --- GRL heads ------------------------------------------------------------------------------------------------------


def test_grl_six_to_three_channels_has_no_input_residual() -> None:
    torch.manual_seed(0)
    model = visattn.create_model("grl_tiny", **TINY, upscale=1, in_chans=6, out_chans=3).eval()
    assert model.output_shape((2, 6, 20, 24)) == (2, 3, 20, 24)
    x = torch.rand(2, 6, 20, 24)
    with torch.no_grad():
        assert model(x).shape == (2, 3, 20, 24)
        torch.nn.init.zeros_(model.conv_last.weight)
        torch.nn.init.zeros_(model.conv_last.bias)
        assert float(model(x).abs().max()) == 0                  # official: conv_last alone when in != out
    same = visattn.create_model("grl_tiny", **TINY, upscale=1).eval()
    with torch.no_grad():
        torch.nn.init.zeros_(same.conv_last.weight)
        torch.nn.init.zeros_(same.conv_last.bias)
        torch.testing.assert_close(same(x[:, :3]), x[:, :3])    # in == out: the input is added back
    with pytest.raises(ValueError, match="RGB .* gives 3 output channels"):
        visattn.create_model("grl_tiny", **TINY, upscale=1, out_chans=1)


def test_grl_nearest_conv_upsampler() -> None:
    torch.manual_seed(0)
    model = visattn.create_model("grl_tiny", **TINY, upscale=4, upsampler="nearest+conv", upsample_features=8).eval()
    names = {k.rsplit(".", 1)[0] for k in model.state_dict() if not k.startswith("stages")}
    assert {"conv_before_upsample.0", "conv_up1", "conv_up2", "conv_hr", "conv_last"} <= names
    x = torch.rand(1, 3, 13, 17)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, 3, 52, 68)
        # written out from the definition: conv, lrelu(0.01); (nearest x2, conv, lrelu(0.2)) x 2; conv, lrelu; conv
        xp = model._pad(x)
        feat = model.conv_first(xp - model.mean)
        body = model.conv_after_body(model.forward_features(feat)) + feat
        y = torch.nn.functional.leaky_relu(model.conv_before_upsample[0](body), 0.01)
        for conv in (model.conv_up1, model.conv_up2):
            y = torch.nn.functional.leaky_relu(conv(y.repeat_interleave(2, -2).repeat_interleave(2, -1)), 0.2)
        ref = model.conv_last(torch.nn.functional.leaky_relu(model.conv_hr(y), 0.2)) + model.mean
    torch.testing.assert_close(out, ref[..., :52, :68])
    with pytest.raises(ValueError, match="nearest\\+conv upsampler upscales x4 only"):
        visattn.create_model("grl_tiny", **TINY, upscale=2, upsampler="nearest+conv")


def _official_shapes(name: str) -> dict[str, list[int]]:
    return json.loads((GOLDEN / f"grl_manifest_{name}.json").read_text())["shapes"]


def _derived_manifest(variant: str) -> dict[str, list[int]]:
    # Official keys and shapes of the new variants, derived from the official manifests by the official constructor
    # (models/networks/grl.py): windows, stripes and the anchor factor change only buffers (dropped on loading);
    # in_channels 6 widens conv_first; upsampler "nearest+conv" replaces upsample.up.* by conv_up1, conv_up2,
    # conv_hr (num_out_feats 64, 3x3) before the same conv_last.
    if variant in ("grl_base_deblur_motion", "grl_base_deblur_defocus"):
        return _official_shapes("grl_base_denoise")
    if variant == "grl_base_deblur_defocus_dp":
        return {**_official_shapes("grl_base_denoise"), "conv_first.weight": [180, 6, 3, 3]}
    shapes = {k: v for k, v in _official_shapes("grl_base").items() if not k.startswith("upsample.")}
    for conv in ("conv_up1", "conv_up2", "conv_hr"):
        shapes.update({f"{conv}.weight": [64, 64, 3, 3], f"{conv}.bias": [64]})
    return shapes


@pytest.mark.parametrize("variant", ["grl_base_deblur_motion", "grl_base_deblur_defocus", "grl_base_deblur_defocus_dp",
                                     "grl_base_realsr"])
def test_new_variants_load_official_keys(variant: str) -> None:
    shapes = _derived_manifest(variant)
    with torch.device("meta"):
        model = visattn.create_model(variant)
        state = {f"model.{k}": torch.empty(v) for k, v in shapes.items()}
    own = model.state_dict()
    mapped = remap_state_dict(state, model)
    assert sorted(mapped) == sorted(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    params = sum(math.prod(v) for k, v in shapes.items() if not k.startswith(("table_", "index_", "mask_")))
    assert sum(p.numel() for p in model.parameters()) == params == REFERENCE_PARAMS[variant]


# --- paired folders -------------------------------------------------------------------------------------------------


def _save(path, arr) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _gopro(root, rng, names=("000001", "000002"), size=(40, 44)) -> None:
    for split, seqs in (("train", ("GOPR0001", "GOPR0002")), ("test", ("GOPR0003",))):
        for seq in seqs:
            for n in names:
                sharp = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                _save(root / split / seq / "sharp" / f"{n}.png", sharp)
                _save(root / split / seq / "blur" / f"{n}.png", (sharp // 2 + 60).astype(np.uint8))


def test_paired_folders_pair_by_name_and_refuse_mismatches(tmp_path) -> None:
    rng = np.random.default_rng(0)
    _gopro(tmp_path / "GoPro", rng)
    groups = find_pair_groups(tmp_path / "GoPro")
    assert [(g.target.parent.name, g.split) for g in groups] == [("GOPR0003", "val"), ("GOPR0001", "train"),
                                                                 ("GOPR0002", "train")]
    items = load_pairs(groups, root=tmp_path / "GoPro")
    assert [n for n, _, _ in items][:3] == ["test/GOPR0003/000001", "test/GOPR0003/000002", "train/GOPR0001/000001"]
    name, clean, given = items[0]
    assert clean.shape == given.shape == (3, 40, 44)
    assert torch.equal(given, (clean // 2 + 60).to(torch.uint8))
    # a file on one side only, and a size mismatch: errors that name them
    _save(tmp_path / "GoPro" / "test" / "GOPR0003" / "blur" / "extra.png", np.zeros((40, 44, 3), np.uint8))
    with pytest.raises(DataError, match=r"GOPR0003/blur and .*GOPR0003/sharp must hold the same file names .*: only "
                                        r"in blur/: extra; only in sharp/: none"):
        load_pairs(find_pair_groups(tmp_path / "GoPro"))
    (tmp_path / "GoPro" / "test" / "GOPR0003" / "blur" / "extra.png").unlink()
    _save(tmp_path / "GoPro" / "test" / "GOPR0003" / "blur" / "000002.png", np.zeros((20, 44, 3), np.uint8))
    with pytest.raises(DataError, match="input size \\(20, 44\\) differs from its target's \\(40, 44\\)"):
        load_pairs(find_pair_groups(tmp_path / "GoPro"))


def _dpdd(root, rng, size=(36, 40)) -> None:
    for split, names in (("train", ("a", "b", "c")), ("test", ("t",))):
        for n in names:
            sharp = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
            _save(root / f"{split}_c" / "target" / f"{n}.png", sharp)
            _save(root / f"{split}_c" / "source" / f"{n}.png", sharp // 2)
            _save(root / f"{split}_l" / "source" / f"{n}.png", sharp // 3)
            _save(root / f"{split}_r" / "source" / f"{n}.png", sharp // 4)


def test_dpdd_layout_single_and_dual_pixel(tmp_path) -> None:
    _dpdd(tmp_path / "dd_dp", np.random.default_rng(1))
    single = load_pairs(find_pair_groups(tmp_path / "dd_dp", 1))
    dual = load_pairs(find_pair_groups(tmp_path / "dd_dp", 2))
    assert len(single) == len(dual) == 4
    _, clean, given = dual[0]
    assert given.shape == (6, 36, 40)
    assert torch.equal(given[:3], clean // 3) and torch.equal(given[3:], clean // 4)        # left, then right
    assert torch.equal(single[0][2], single[0][1] // 2)                                     # the combined image


def test_one_paired_folder_reader_for_every_task(tmp_path, caplog) -> None:
    # GoPro folders train a JPEG model as they train a deblurring one, with the same names and split
    _gopro(tmp_path / "GoPro", np.random.default_rng(4))
    for name in ("jpeg", "deblur-motion"):
        cls = get_task(name)
        task = cls.for_training(RunSettings(data=str(tmp_path / "GoPro"), img_size=16), cls.Options())
        assert task.data.source["paired"] is True and len(task.data.train) == 4 and task.data.train[0][1].shape[0] == 6
        assert [n for n, _, _ in task.data.val] == ["test/GOPR0003/000001", "test/GOPR0003/000002"]
    # input/ + target/ at the top (the JPEG layout) for deblurring; a val/ of clean images beside paired train/
    for n in ("a", "b"):
        sharp = np.random.default_rng(5).integers(0, 255, (24, 20, 3), dtype=np.uint8)
        _save(tmp_path / "mixed" / "train" / "target" / f"{n}.png", sharp)
        _save(tmp_path / "mixed" / "train" / "input" / f"{n}.jpg", sharp)
    _save(tmp_path / "mixed" / "val" / "clean.png", np.zeros((24, 20, 3), np.uint8))
    cls = get_task("deblur-motion")
    task = cls.for_training(RunSettings(data=str(tmp_path / "mixed"), img_size=16), cls.Options(kernel_size=5))
    assert [n for n, _ in task.data.train] == ["train/a", "train/b"]
    assert [(n, given) for n, _, given in task.data.val] == [("clean", None)]          # input synthesised
    # evaluation items of a run validated on --val-data: the training folder is not read at all
    data = load_restoration_data(str(tmp_path / "gone"), scale=1, channels=3, patch=16,
                                 val_data=str(tmp_path / "GoPro" / "test"), eval_only=True)
    assert not data.train and len(data.val) == 2
    # x2 pairs (an SR benchmark as input/ + target/): the input must be half its target
    _save(tmp_path / "sr" / "target" / "a.png", np.zeros((20, 24, 3), np.uint8))
    _save(tmp_path / "sr" / "input" / "a.png", np.zeros((10, 12, 3), np.uint8))
    (name, clean, given), = load_benchmark(tmp_path / "sr", 3, scale=2)
    assert clean.shape == (3, 20, 24) and given.shape == (3, 10, 12)
    _save(tmp_path / "sr" / "input" / "a.png", np.zeros((10, 11, 3), np.uint8))
    with pytest.raises(DataError, match=r"input size \(10, 11\) is not 1 / 2 of its target's \(20, 24\)"):
        load_benchmark(tmp_path / "sr", 3, scale=2)
    (tmp_path / "sr" / "input" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")          # skipped at scan time
    with pytest.raises(DataError, match=r"only in input/: none; only in target/: a"):
        load_benchmark(tmp_path / "sr", 3, scale=2)


def test_paired_augment_keeps_input_and_target_aligned() -> None:
    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(3, 24, 24, generator=g) * 255).to(torch.uint8)
    left, right = clean // 3, clean // 4
    data = RestorationData(train=[("p", torch.cat([left, right, clean]))], val=[], source={})
    task = DefocusDeblurTask(data, DefocusBlur(2.0, dual_pixel=True), patch=16, channels=3)
    batch = task.collate([task.train_set[i] for i in range(16)])
    x, y = task.augment(batch, torch.Generator().manual_seed(1), 16, 0)
    assert x.shape == (16, 6, 16, 16) and y.shape == (16, 3, 16, 16)
    hflips = 0
    for xi, yi in zip(x, y):
        ref = torch.floor(yi * 255 / 3) / 255
        if torch.equal(xi[:3], ref):
            assert torch.equal(xi[3:], torch.floor(yi * 255 / 4) / 255)
        else:                                # a horizontal flip swaps the views: the right one comes first
            hflips += 1
            assert torch.equal(xi[:3], torch.floor(yi * 255 / 4) / 255) and torch.equal(xi[3:], ref)
    assert 0 < hflips < 16
    # single-view pairs take any of the 8 flips / rotations, the same for input and target
    data = RestorationData(train=[("p", torch.cat([clean // 2, clean]))], val=[], source={})
    task = MotionDeblurTask(data, MotionBlur(5), patch=16, channels=3)
    x, y = task.augment(task.collate([task.train_set[i] for i in range(8)]), torch.Generator().manual_seed(2), 8, 0)
    torch.testing.assert_close(x, torch.floor(y * 255 / 2) / 255)


def test_blurred_baseline_on_a_known_image() -> None:
    # a given input 51 levels above its target everywhere: the baseline (the input itself, RGB, no border crop)
    # scores 20 log10(255 / 51) = 13.98 dB and MAE 0.2
    u8 = ((torch.arange(30) % 2) * 102 + 51).to(torch.uint8).expand(3, 24, 30).contiguous()      # stripes 51 / 153
    item = ("stripes", u8, u8 + 51)
    task = MotionDeblurTask(RestorationData(train=[], val=[item], source={}), MotionBlur(5), patch=1, channels=3)
    model = visattn.create_model("grl_tiny", **TINY, upscale=1)
    result = task.evaluate(model)
    assert result["val_blurred_psnr"] == pytest.approx(20 * math.log10(255 / 51), abs=1e-6)   # float32 inputs
    assert result["val_blurred_mae"] == pytest.approx(0.2, abs=1e-6)
    assert math.isfinite(result["val_psnr"]) and result["val_mae"] == result["val_loss"]


def test_one_step_reduces_the_loss_dual_pixel_and_nearest_conv() -> None:
    g = torch.Generator().manual_seed(0)
    train = [("a", (torch.rand(3, 40, 48, generator=g) * 255).to(torch.uint8))]
    for d, extra in ((DefocusBlur(2.0, dual_pixel=True), {}),
                     (SecondOrderDegradation(4), {"upsampler": "nearest+conv", "upsample_features": 8})):
        cls = DefocusDeblurTask if d.name == "defocus_blur" else get_task("real-sr")
        task = cls(RestorationData(train=train, val=[], source={}), d, patch=32, channels=3)
        torch.manual_seed(0)
        model = visattn.create_model("grl_tiny", **{**TINY, **task.model_overrides(), **extra})
        task.check_model(model)
        x, y = task.augment(task.collate([task.train_set[i] for i in range(4)]), torch.Generator().manual_seed(0), 4,
                            0)
        loss = task.loss(task.forward(model, x), y)
        loss.backward()
        norm = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
        torch.optim.SGD(model.parameters(), lr=0.01 / norm).step()
        with torch.no_grad():
            assert float(task.loss(task.forward(model, x), y)) < float(loss.detach()) - 1e-4
    with pytest.raises(ValueError, match="feeds 6 channels; the model takes 3"):
        task = DefocusDeblurTask(RestorationData(train=train, val=[], source={}), DefocusBlur(2.0, dual_pixel=True),
                                 patch=32, channels=3)
        task.check_model(visattn.create_model("grl_tiny", **TINY, upscale=1))


def test_tiled_dual_pixel_restore_agrees_with_whole_image() -> None:
    # Measured on this random 6 -> 3 model (45x57 input, tile 24, overlap 12): mean |tiled - whole| is 6.6% of the
    # mean output (the stripes and anchors of a fresh GRL mix each tile globally; see test_grl_restoration.py).
    torch.manual_seed(0)
    model = visattn.create_model("grl_tiny", **TINY, upscale=1, in_chans=6, out_chans=3).eval()
    x = DefocusBlur(2.0, dual_pixel=True)(torch.rand(1, 3, 45, 57, generator=torch.Generator().manual_seed(0)),
                                          torch.Generator())
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_forward(model, x, tile=24, overlap=12)
        torch.testing.assert_close(tiled_forward(model, x, tile=64, overlap=12), whole)
    assert tiled.shape == whole.shape == (1, 3, 45, 57)
    assert float((tiled - whole).abs().mean() / whole.abs().mean()) < 0.1


# --- CLI ------------------------------------------------------------------------------------------------------------


def test_cli_motion_deblur_on_gopro_pairs(tmp_path) -> None:
    _gopro(tmp_path / "GoPro", np.random.default_rng(2))
    run = tmp_path / "run"
    assert main(["train", "--task", "deblur-motion", "--kernel-size", "7", *TINY_FLAGS, "--data",
                 str(tmp_path / "GoPro"), "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--threads", "1",
                 "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_count"] == 2 and math.isfinite(summary["val_psnr"]) and "val_blurred_mae" in summary
    meta = json.loads((run / "model.json").read_text())
    assert meta["task"] == "deblur-motion" and meta["data"]["paired"] is True and meta["config"]["upscale"] == 1
    # eval re-reads the recorded test pairs and reproduces the run's validation; a folder of pairs as --data too
    assert main(["eval", "--checkpoint", str(run), "--threads", "1"]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["val_psnr"] == pytest.approx(summary["val_psnr"], abs=1e-3)
    assert report["val_blurred_psnr"] == pytest.approx(summary["val_blurred_psnr"], abs=1e-9)
    assert main(["eval", "--checkpoint", str(run), "--data", str(tmp_path / "GoPro" / "test"), "--out",
                 str(tmp_path / "ev"), "--threads", "1"]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["val_psnr"] == pytest.approx(
        summary["val_psnr"], abs=1e-3)
    blurred = tmp_path / "GoPro" / "test" / "GOPR0003" / "blur" / "000001.png"
    assert main(["restore", "--checkpoint", str(run), "--out", str(tmp_path / "out"), "--threads", "1",
                 str(blurred)]) == 0
    with Image.open(tmp_path / "out" / "000001_deblurred.png") as im:
        assert im.size == (44, 40)


def test_cli_dual_pixel_defocus_on_dpdd(tmp_path, capsys) -> None:
    _dpdd(tmp_path / "dd_dp", np.random.default_rng(3))
    run = tmp_path / "run"
    assert main(["train", "--task", "deblur-defocus", "--dual-pixel", "--max-radius", "2", *TINY_FLAGS, "--data",
                 str(tmp_path / "dd_dp"), "--img-size", "32", "--epochs", "1", "--batch-size", "6", "--threads",
                 "1", "--out", str(run)]) == 0
    meta = json.loads((run / "model.json").read_text())
    assert meta["config"]["in_chans"] == 6 and meta["config"]["out_chans"] == 3
    assert meta["task_options"]["dual_pixel"] is True
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_count"] == 1 and math.isfinite(summary["val_mae"])
    assert main(["eval", "--checkpoint", str(run), "--threads", "1"]) == 0
    assert json.loads((run / "eval.json").read_text())["val_psnr"] == pytest.approx(summary["val_psnr"], abs=1e-3)
    # visattn restore finds the right view of DPDD's left one (test_l/source/ -> test_r/source/); one image alone is
    # refused with what it needs
    left = tmp_path / "dd_dp" / "test_l" / "source" / "t.png"
    assert main(["restore", "--checkpoint", str(run), "--out", str(tmp_path / "out"), "--threads", "1",
                 str(left)]) == 0
    assert f"{left} + {tmp_path / 'dd_dp' / 'test_r' / 'source' / 't.png'} (40x36)" in capsys.readouterr().out
    with Image.open(tmp_path / "out" / "t_deblurred.png") as im:
        assert im.size == (40, 36) and im.mode == "RGB"
    photo = tmp_path / "dd_dp" / "test_c" / "target" / "t.png"
    assert main(["restore", "--checkpoint", str(run), "--out", str(tmp_path / "out2"), "--threads", "1",
                 str(photo)]) == 1
    assert "takes the left and right views: pass --right-view FILE" in capsys.readouterr().err


def test_cli_restore_dual_pixel_views(tmp_path, capsys) -> None:
    # a random 6 -> 3 model: IMAGE is the left view, --right-view (or a <stem>_R file) the right one; the output is
    # the model's tiled inference on (left, right) in that order
    from visattn.checkpoint import export_model, model_meta

    torch.manual_seed(0)
    model = visattn.create_model("grl_tiny", **TINY, upscale=1, in_chans=6, out_chans=3).eval()
    export_model(tmp_path / "dp", model.state_dict(), model_meta(model, task="deblur-defocus"))  # options implied
    single = visattn.create_model("grl_tiny", **TINY, upscale=1)
    export_model(tmp_path / "single", single.state_dict(), model_meta(single, task="deblur-defocus"))
    g = np.random.default_rng(6)
    views = [g.integers(0, 255, (45, 57, 3), dtype=np.uint8) for _ in range(2)]
    for name, arr in (("scene_L", views[0]), ("scene_R", views[1]), ("other", views[1])):
        _save(tmp_path / f"{name}.png", arr)
    _save(tmp_path / "small.png", views[1][:40])
    args = ["restore", "--checkpoint", str(tmp_path / "dp"), "--tile", "24", "--tile-overlap", "8", "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "a"), "--right-view", str(tmp_path / "other.png"),
                 str(tmp_path / "scene_L.png")]) == 0
    x = torch.from_numpy(np.concatenate(views, -1)).permute(2, 0, 1)[None].float() / 255        # (1, 6, 45, 57)
    with torch.no_grad():
        expected = quantize(tiled_forward(model, x, tile=24, overlap=8).clamp(0, 1))[0]
        swapped = quantize(tiled_forward(model, x[:, [3, 4, 5, 0, 1, 2]], tile=24, overlap=8).clamp(0, 1))[0]
    with Image.open(tmp_path / "a" / "scene_L_deblurred.png") as im:
        got = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    assert got.shape == (3, 45, 57) and torch.equal(got, expected) and not torch.equal(got, swapped)
    # DPDD-style names: scene_R.png beside scene_L.png is its right view
    assert main([*args, "--out", str(tmp_path / "b"), str(tmp_path / "scene_L.png")]) == 0
    assert f"+ {tmp_path / 'scene_R.png'} (57x45)" in capsys.readouterr().out
    assert (tmp_path / "b" / "scene_L_deblurred.png").read_bytes() == (
        tmp_path / "a" / "scene_L_deblurred.png").read_bytes()
    # --degrade synthesises both views of a clean image and saves them as <stem>_blurred_L / _R
    assert main([*args, "--out", str(tmp_path / "c"), "--degrade", str(tmp_path / "other.png")]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["other_blurred_L.png", "other_blurred_R.png",
                                                                  "other_deblurred.png"]
    # errors that say what is expected
    for extra, message in (([str(tmp_path / "other.png")], "takes the left and right views: pass --right-view"),
                           (["--right-view", str(tmp_path / "small.png"), str(tmp_path / "scene_L.png")],
                            "the left view is 57x45 pixels but its right view .*small.png is 57x40"),
                           (["--right-view", str(tmp_path / "other.png"), str(tmp_path / "scene_L.png"),
                             str(tmp_path / "other.png")], "one --right-view per IMAGE, in order: 2 image"),
                           (["--right-view", str(tmp_path / "absent.png"), str(tmp_path / "scene_L.png")],
                            "no such file: .*absent.png")):
        assert main([*args, "--out", str(tmp_path / "d"), *extra]) == 1
        assert re.search(message, capsys.readouterr().err)
    assert main(["restore", "--checkpoint", str(tmp_path / "single"), "--right-view", str(tmp_path / "other.png"),
                 str(tmp_path / "scene_L.png")]) == 1
    assert "--right-view is for dual-pixel models (6 input channels" in capsys.readouterr().err
