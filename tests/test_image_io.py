"""Image decoding of every Pillow mode and bit depth: files written with known values, decoded values asserted."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from visattn.tasks.base import DataError  # noqa: E402
from visattn.tasks.classification.data import read_image as classification_read_image  # noqa: E402
from visattn.tasks.fewshot.predict import read_mask  # noqa: E402
from visattn.tasks.image_io import (  # noqa: E402
    decode_image,
    read_gray,
    read_gray_levels,
    read_image,
    read_image_float,
    write_image,
)
from visattn.tasks.restoration.data import read_image_float as restoration_read_image_float  # noqa: E402

restoration_write_image = write_image                                  # what visattn restore writes with


def _save(tmp_path, im, name: str):
    path = tmp_path / name
    im.save(path)
    with Image.open(path) as check:
        mode = check.mode
    return path, mode


def _expect(path, rgb: tuple[float, ...], channels: int) -> None:
    arr, _ = decode_image(path)
    assert arr.dtype == np.float32 and arr.shape[-1] == channels
    np.testing.assert_allclose(arr, np.broadcast_to(np.array(rgb, dtype=np.float32), arr.shape), atol=1e-6)


# --- Pillow's modes ---------------------------------------------------------------------------------------------------

def test_mode_1(tmp_path) -> None:
    im = Image.new("1", (3, 2), 0)
    im.putpixel((1, 0), 1)
    path, mode = _save(tmp_path, im, "b.png")
    assert mode == "1"
    arr, bits = decode_image(path)
    assert bits == 8 and arr.shape == (2, 3, 1)
    assert arr[0, 1, 0] == 1.0 and arr.sum() == 1.0


def test_mode_L(tmp_path) -> None:
    path, mode = _save(tmp_path, Image.new("L", (3, 2), 60), "l.png")
    assert mode == "L"
    _expect(path, (60 / 255,), 1)
    assert torch.equal(read_image(path), torch.full((3, 2, 3), 60, dtype=torch.uint8))


@pytest.mark.parametrize("mode,suffix", [("I;16", "png"), ("I;16", "tif"), ("I;16B", "tif")])
def test_16bit_grey(tmp_path, mode, suffix) -> None:
    dtype = np.uint16 if mode == "I;16" else ">u2"
    path, stored = _save(tmp_path, Image.fromarray(np.full((2, 3), 60 * 257, dtype=dtype)), f"g.{suffix}")
    assert stored == mode
    _expect(path, (60 / 255,), 1)
    assert decode_image(path)[1] == 16
    # the uint8 classification decoder: 60 everywhere (Pillow's plain RGB conversion gives 255)
    assert torch.equal(classification_read_image(path), torch.full((3, 2, 3), 60, dtype=torch.uint8))
    x, info = restoration_read_image_float(path)
    assert info == {"channels": 1, "bits": 16, "size": (2, 3)}
    torch.testing.assert_close(x, torch.full((1, 2, 3), 60 / 255))


def test_16bit_grey_keeps_every_level(tmp_path) -> None:
    values = np.array([[0, 1, 65534, 65535], [257, 1000, 30000, 50000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    torch.testing.assert_close(read_gray(tmp_path / "g.png"), torch.from_numpy(values / 65535.0).float())


def test_mode_I_32bit(tmp_path) -> None:
    values = np.array([[0, 2**31 - 1, 2**30]], dtype=np.int32)
    path, mode = _save(tmp_path, Image.fromarray(values), "i.tif")
    assert mode == "I"
    arr, bits = decode_image(path)
    assert bits == 32
    np.testing.assert_allclose(arr[..., 0], values / (2.0**32 - 1), rtol=1e-6)


def test_mode_F(tmp_path, caplog) -> None:
    path, mode = _save(tmp_path, Image.fromarray(np.array([[0.25, 0.5, 1.0]], dtype=np.float32)), "f.tif")
    assert mode == "F"
    np.testing.assert_allclose(decode_image(path)[0][..., 0], [[0.25, 0.5, 1.0]])
    path, _ = _save(tmp_path, Image.fromarray(np.array([[-1.0, 0.5, 3.0]], dtype=np.float32)), "f2.tif")
    np.testing.assert_allclose(decode_image(path)[0][..., 0], [[0.0, 0.5, 1.0]])
    assert "clipped" in caplog.text


def test_mode_P(tmp_path) -> None:
    im = Image.new("P", (3, 2), 1)
    im.putpalette([0, 0, 0, 10, 20, 30, 255, 255, 255])
    path, mode = _save(tmp_path, im, "p.png")
    assert mode == "P"
    _expect(path, (10 / 255, 20 / 255, 30 / 255), 3)


def test_mode_P_transparent_entry(tmp_path) -> None:
    im = Image.new("P", (3, 2), 1)
    im.putpalette([0, 0, 0, 10, 20, 30, 255, 255, 255])
    im.putpixel((0, 0), 2)
    im.save(tmp_path / "p.png", transparency=2)                        # white palette entry 2 is transparent
    arr, _ = decode_image(tmp_path / "p.png")
    assert arr[0, 0].tolist() == [0.0, 0.0, 0.0]                       # over black, not white
    np.testing.assert_allclose(arr[1, 1], [10 / 255, 20 / 255, 30 / 255], atol=1e-6)


def test_mode_LA(tmp_path) -> None:
    path, mode = _save(tmp_path, Image.new("LA", (3, 2), (200, 51)), "la.png")
    assert mode == "LA"
    _expect(path, (200 / 255 * 51 / 255,), 1)


def test_mode_L_transparent_level(tmp_path) -> None:
    im = Image.new("L", (3, 2), 100)
    im.putpixel((2, 1), 7)
    im.save(tmp_path / "l.png", transparency=100)
    arr, _ = decode_image(tmp_path / "l.png")
    assert arr[0, 0, 0] == 0.0 and arr[1, 2, 0] == pytest.approx(7 / 255)


def test_mode_RGB(tmp_path) -> None:
    path, mode = _save(tmp_path, Image.new("RGB", (3, 2), (10, 128, 250)), "rgb.png")
    assert mode == "RGB"
    _expect(path, (10 / 255, 128 / 255, 250 / 255), 3)
    assert read_image(path)[:, 0, 0].tolist() == [10, 128, 250]


def test_mode_RGB_transparent_colour(tmp_path) -> None:
    im = Image.new("RGB", (3, 2), (255, 255, 255))
    im.putpixel((0, 0), (1, 2, 3))
    im.save(tmp_path / "rgb.png", transparency=(255, 255, 255))
    arr, _ = decode_image(tmp_path / "rgb.png")
    assert arr[1, 1].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(arr[0, 0], np.array([1, 2, 3]) / 255, atol=1e-6)


def test_mode_RGBA_over_black(tmp_path) -> None:
    im = Image.new("RGBA", (2, 1), (255, 255, 255, 0))                # fully transparent white
    im.putpixel((1, 0), (200, 100, 50, 128))
    path, mode = _save(tmp_path, im, "rgba.png")
    assert mode == "RGBA"
    arr, _ = decode_image(path)
    assert arr[0, 0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(arr[0, 1], np.array([200, 100, 50]) / 255 * 128 / 255, atol=1e-6)
    # every consumer applies the same rule
    assert read_image(path)[:, 0, 0].tolist() == [0, 0, 0]
    assert read_image(path)[:, 0, 1].tolist() == [100, 50, 25]
    torch.testing.assert_close(read_image_float(path)[0][:, 0, 1], torch.from_numpy(arr[0, 1]))


def test_mode_CMYK(tmp_path) -> None:
    path, mode = _save(tmp_path, Image.new("CMYK", (3, 2), (0, 255, 0, 0)), "cmyk.tif")
    assert mode == "CMYK"
    _expect(path, (1.0, 0.0, 1.0), 3)                                  # no magenta ink absorbs green only


def test_mode_YCbCr(tmp_path) -> None:
    path, mode = _save(tmp_path, Image.new("YCbCr", (3, 2), (128, 128, 128)), "ycc.tif")
    assert mode == "YCbCr"
    _expect(path, (128 / 255,) * 3, 3)                                 # neutral chroma: a grey of the luma


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(DataError, match="not found"):
        decode_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read"):
        read_image(tmp_path / "bad.png")


# --- 16-bit colour PNGs (Pillow reads these at 8 bits) ----------------------------------------------------------------

def _filter_rows(rows: np.ndarray, bpp: int) -> bytes:
    """PNG-encode (H, stride) uint8 rows, row y with filter type y % 5 (the test's own encoder)."""
    out, prev = [], np.zeros(rows.shape[1], dtype=np.int64)
    for y, row in enumerate(rows.astype(np.int64)):
        kind = y % 5
        left = np.concatenate([np.zeros(bpp, dtype=np.int64), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, dtype=np.int64), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        out.append(bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes())
        prev = row
    return b"".join(out)


def _png16(path, values: np.ndarray, colour: int, trns: bytes | None = None) -> None:
    height, width, channels = values.shape
    rows = values.astype(">u2").reshape(height, width * channels).view(np.uint8)   # (H, W * C * 2) bytes

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    body = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0))
    body += chunk(b"tRNS", trns) if trns else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(_filter_rows(rows, channels * 2)))
                     + chunk(b"IEND", b""))


def test_16bit_rgb_png_every_row_filter(tmp_path) -> None:
    g = np.random.default_rng(0)
    values = g.integers(0, 65536, size=(10, 7, 3), dtype=np.uint16)
    values[0, 0] = (60 * 257, 0, 65535)
    _png16(tmp_path / "rgb16.png", values, colour=2)
    arr, bits = decode_image(tmp_path / "rgb16.png")
    assert bits == 16
    np.testing.assert_allclose(arr, values / 65535.0, atol=1e-7)
    # Pillow reads the same file at 8 bits: its values are the high bytes of ours
    with Image.open(tmp_path / "rgb16.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), (values >> 8).astype(np.uint8))
    assert read_image_float(tmp_path / "rgb16.png")[1]["bits"] == 16
    assert read_image(tmp_path / "rgb16.png")[:, 0, 0].tolist() == [60, 0, 255]


def test_16bit_rgba_and_grey_alpha_png(tmp_path) -> None:
    rgba = np.array([[[65535, 65535, 65535, 0], [60 * 257, 30000, 65535, 32768]]], dtype=np.uint16)
    _png16(tmp_path / "rgba16.png", rgba, colour=6)
    arr, _ = decode_image(tmp_path / "rgba16.png")
    np.testing.assert_allclose(arr, rgba[..., :3] / 65535.0 * (rgba[..., 3:] / 65535.0), atol=1e-6)
    assert arr[0, 0].tolist() == [0.0, 0.0, 0.0]
    ga = np.array([[[40000, 65535], [65535, 0]]], dtype=np.uint16)
    _png16(tmp_path / "ga16.png", ga, colour=4)
    arr, _ = decode_image(tmp_path / "ga16.png")
    np.testing.assert_allclose(arr[..., 0], [[40000 / 65535, 0.0]], atol=1e-6)


def test_16bit_rgb_png_transparent_colour(tmp_path) -> None:
    values = np.array([[[1, 2, 3], [4, 5, 6]]], dtype=np.uint16)
    _png16(tmp_path / "k.png", values, colour=2, trns=struct.pack(">HHH", 1, 2, 3))
    arr, _ = decode_image(tmp_path / "k.png")
    assert arr[0, 0].tolist() == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(arr[0, 1], np.array([4, 5, 6]) / 65535.0)


@pytest.mark.parametrize("channels,suffix", [(1, "png"), (3, "png"), (1, "tif")])
def test_write_image_16bit_round_trip(tmp_path, channels, suffix) -> None:
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 65536, size=(channels, 5, 4)) / 65535.0).float()
    restoration_write_image(tmp_path / f"o.{suffix}", x, bits=16)
    y, info = restoration_read_image_float(tmp_path / f"o.{suffix}")
    assert info["bits"] == 16 and info["channels"] == channels
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_write_image_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(ValueError, match="C = 1 or 3"):
        write_image(tmp_path / "o.png", torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        write_image(tmp_path / "o.png", torch.zeros(1, 4, 4), bits=12)


# --- grey levels for masks ------------------------------------------------------------------------------------------

def test_gray_levels_of_masks(tmp_path) -> None:
    mask = np.array([[0, 1, 1], [0, 0, 1]], dtype=np.uint8)
    Image.fromarray(mask).save(tmp_path / "m01.png")
    Image.fromarray(mask * 255).save(tmp_path / "m255.png")
    Image.fromarray(mask.astype(np.uint16) * 65535).save(tmp_path / "m16.png")
    for name in ("m01.png", "m255.png", "m16.png"):
        assert torch.equal(read_mask(tmp_path / name, (2, 3)), torch.from_numpy(mask.astype(bool))), name
    assert torch.equal(read_gray_levels(tmp_path / "m01.png"), torch.from_numpy(mask).float())
