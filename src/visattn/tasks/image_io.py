"""Image files in and out: every Pillow mode decoded to values in [0, 1] by the file's own bit depth.

One decoder serves classification (uint8 RGB), restoration (float, 16-bit precision kept) and few-shot segmentation
(grey levels). Values are scaled by the depth the file stores, never by the data's range:

| Pillow mode                                 | scale                                        | channels |
| ------------------------------------------- | -------------------------------------------- | -------- |
| ``1``                                       | {0, 1}                                       | 1        |
| ``L``, ``LA``, ``La``                       | / 255                                        | 1        |
| ``I;16``, ``I;16B``, ``I;16L``, ``I;16N``   | / 65535                                      | 1        |
| ``I`` (32-bit integer)                      | / (2**bits - 1), bits from the PNG / TIFF    | 1        |
|                                             | header; else 16 if every value fits, else 32 |          |
| ``F`` (32-bit float)                        | taken as [0, 1]; clipped, with a warning     | 1        |
| ``P``, ``PA``                               | the palette's colours / 255                  | 3        |
| ``RGB``, ``RGBA``, ``RGBa``, ``RGBX``       | / 255                                        | 3        |
| ``CMYK``, ``YCbCr``, ``HSV``, ``LAB``       | Pillow's conversion to RGB, / 255            | 3        |
| 16-bit RGB / RGBA / grey+alpha PNG          | / 65535 (decoded here: Pillow reads 8 bits)  | 3 or 1   |

**Alpha rule: transparent pixels are composited over black**, i.e. the decoded colour is ``colour * alpha``
(premultiplied alpha). This holds for every source of transparency: an alpha channel (``LA``, ``RGBA``, ``PA``,
16-bit alpha PNGs) and a transparent colour or palette entry (PNG / GIF ``tRNS``). Black was chosen over white because
it is the colour a premultiplied pipeline (and a zero-padded network input) already means by "nothing here", and it
does not depend on a display background; a fully transparent pixel therefore decodes to 0 whatever colour the file
stores under it.

16-bit colour PNGs are decoded from the file's own data (zlib + the five PNG row filters, in numpy) unless they are
interlaced, in which case Pillow's 8-bit decoding is used with a warning. 16-bit colour TIFFs are read by Pillow at
8 bits, also with a warning. ``write_image`` writes 16-bit grey PNG / TIFF through Pillow and 16-bit colour PNG with
the encoder here.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import DataError

__all__ = ["IMAGE_EXTENSIONS", "decode_image", "png_header", "read_gray", "read_gray_levels", "read_image",
           "read_image_float", "write_image"]

# Every file extension the image datasets (classification folders, restoration folders) accept: what Pillow reads.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

log = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# BT.601 luma weights of MATLAB's rgb2ycbcr (65.481, 128.553, 24.966) / 219: Y rescaled from [16, 235] to [0, 1].
_LUMA = np.array([65.481, 128.553, 24.966], dtype=np.float32) / 219.0


def png_header(path: str | os.PathLike) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None for other files."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError:
        return None
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE:
        return None
    return head[24], head[25]


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"cannot read {path} as an image ({type(err).__name__}: {err})") from err
    return im


# --- 16-bit colour PNG ------------------------------------------------------------------------------------------------

def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _unfilter(raw: bytes, height: int, stride: int, bpp: int) -> np.ndarray:
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth) -> (height, stride) uint8."""
    rows = np.frombuffer(raw, dtype=np.uint8)[:height * (stride + 1)].reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prev = np.zeros(stride, dtype=np.int64)
    for y in range(height):
        kind, line = int(rows[y, 0]), rows[y, 1:].astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: a running sum along each byte lane of a pixel
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) % 256   # (W * bpp,)
        elif kind == 2:
            cur = (line + prev) % 256
        elif kind in (3, 4):  # Average / Paeth depend on the decoded left neighbour: byte by byte
            ln, up, c = line.tolist(), prev.tolist(), [0] * stride
            for i in range(stride):
                a = c[i - bpp] if i >= bpp else 0
                if kind == 3:
                    c[i] = (ln[i] + (a + up[i]) // 2) & 255
                else:
                    b, d = up[i], up[i - bpp] if i >= bpp else 0
                    p = a + b - d
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - d)
                    c[i] = (ln[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else d)) & 255
            cur = np.array(c, dtype=np.int64)
        else:
            raise ValueError(f"PNG row {y} has filter type {kind}; expected 0-4")
        out[y] = cur
        prev = cur
    return out


def _decode_png16(path: Path) -> np.ndarray | None:
    """A non-interlaced 16-bit colour or grey+alpha PNG as (H, W, C) float32 in [0, 1] (alpha composited), or None."""
    data = path.read_bytes()
    chunks = _png_chunks(data)
    ihdr = chunks[0][1]
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", ihdr[:13])
    samples = {2: 3, 4: 2, 6: 4}.get(colour)
    if depth != 16 or samples is None:
        return None
    if interlace:
        log.warning("%s: interlaced 16-bit colour PNG decoded at 8 bits by Pillow", path)
        return None
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * samples * 2
    rows = _unfilter(raw, height, stride, samples * 2)                  # (H, W * C * 2) bytes
    arr = rows.view(">u2").reshape(height, width, samples).astype(np.float32) / 65535.0  # (H, W, C)
    if samples in (2, 4):
        return _composite(arr[..., :-1], arr[..., -1:])
    trns = [body for kind, body in chunks if kind == b"tRNS"]
    if trns and len(trns[0]) >= 6:  # a transparent colour key
        key = np.array(struct.unpack(">HHH", trns[0][:6]), dtype=np.float32) / 65535.0
        arr = _composite(arr, ~np.all(arr == key, axis=-1, keepdims=True))
    return arr


def _write_png16(path: Path, arr: np.ndarray) -> None:
    """(H, W, C) uint16 with C in {1, 3} as a 16-bit PNG (filter None on every row)."""
    height, width, channels = arr.shape
    colour = {1: 0, 3: 2}[channels]
    rows = arr.astype(">u2").reshape(height, width * channels).view(np.uint8)  # (H, W * C * 2) bytes

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()
    path.write_bytes(_PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


# --- decoding ---------------------------------------------------------------------------------------------------------

def _composite(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    # the alpha rule of this module: over black (premultiplied colour)
    return colour * alpha.astype(np.float32)


def _integer_bits(im, path: Path, arr: np.ndarray) -> int:
    # bits of a mode-"I" image: the file's header, else the smallest of 16 / 32 that holds every value
    png = png_header(path)
    if png is not None:
        return png[0]
    tag = getattr(im, "tag_v2", None)
    bits = tag.get(258) if tag is not None else None
    if bits:
        return int(bits[0] if isinstance(bits, tuple) else bits)
    return 16 if arr.size == 0 or int(arr.max()) <= 65535 else 32


def decode_image(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode any image file Pillow reads to (H, W, C) float32 in [0, 1], C = 1 (grey) or 3 (colour).

    Returns:
        the image (alpha composited over black) and the bit depth of its samples (8, 16 or 32).

    Raises:
        DataError: the file is missing or not a readable image.
    """
    path = Path(path)
    png = png_header(path)
    if png is not None and png[0] == 16 and png[1] in (2, 4, 6):
        try:
            arr = _decode_png16(path)
        except (zlib.error, ValueError, struct.error) as err:
            raise DataError(f"cannot read {path} as an image (damaged PNG data: {err})") from err
        if arr is not None:
            return arr, 16
    with _open(path) as im:
        mode, info = im.mode, im.info
        if "transparency" in info and mode in ("1", "L", "P", "RGB", "I", "I;16", "I;16B", "I;16L", "I;16N"):
            if mode == "P" or mode == "RGB":
                im, mode = im.convert("RGBA"), "RGBA"
            elif mode in ("1", "L"):
                im, mode = im.convert("LA"), "LA"
        bits = 8
        if mode.startswith("I;16") or mode == "I":
            values = np.asarray(im)
            bits = 16 if mode.startswith("I;16") else _integer_bits(im, path, values)
            arr = (values.astype(np.float64) / (2.0 ** bits - 1)).clip(0, 1).astype(np.float32)[..., None]  # (H, W, 1)
            key = info.get("transparency")
            if isinstance(key, int):  # tRNS on 16-bit grey: one transparent level
                arr = _composite(arr, (values != key)[..., None])
        elif mode == "F":
            arr = np.asarray(im).astype(np.float32)[..., None]                 # (H, W, 1)
            if arr.size and (arr.min() < 0 or arr.max() > 1):
                log.warning("%s: float image outside [0, 1] (%g to %g) clipped", path, arr.min(), arr.max())
            arr, bits = arr.clip(0, 1), 32
        elif mode in ("1", "L"):
            arr = np.asarray(im.convert("L")).astype(np.float32)[..., None] / 255.0  # (H, W, 1)
        elif mode in ("LA", "La"):
            la = np.asarray(im.convert("LA")).astype(np.float32) / 255.0        # (H, W, 2)
            arr = _composite(la[..., :1], la[..., 1:])
        elif mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in info):
            rgba = np.asarray(im.convert("RGBA")).astype(np.float32) / 255.0    # (H, W, 4)
            arr = _composite(rgba[..., :3], rgba[..., 3:])
        else:  # RGB, RGBX, P, CMYK, YCbCr, HSV, LAB: Pillow's conversion to RGB
            try:
                rgb = im.convert("RGB")
            except ValueError as err:
                raise DataError(f"cannot convert {path} (mode {mode}) to RGB: {err}") from err
            arr = np.asarray(rgb).astype(np.float32) / 255.0                   # (H, W, 3)
            tiff_bits = im.tag_v2.get(258) if hasattr(im, "tag_v2") else None
            if (png is not None and png[0] == 16) or (isinstance(tiff_bits, tuple) and max(tiff_bits) > 8):
                log.warning("%s: 16-bit colour image decoded at 8 bits (Pillow cannot read more)", path)
    return arr, bits


# --- the three consumers ----------------------------------------------------------------------------------------------

def read_image(path: str | os.PathLike, size: int | None = None) -> Tensor:
    """Decode an image file to a uint8 (3, H, W) RGB tensor, squashed to (size, size) if ``size`` is given.

    Grey images become three equal channels; other depths are rounded to 8 bits (16-bit 60 * 257 -> 60).
    """
    from PIL import Image

    path = Path(path)
    with _open(path) as im:
        plain = im.mode in ("RGB", "L") and "transparency" not in im.info and png_header(path) in (None, (8, 0), (8, 2))
        if plain:  # the common case, without a float copy of the image
            im = im.convert("RGB")
    if not plain:
        arr, _ = decode_image(path)
        arr = np.ascontiguousarray(np.broadcast_to(arr, arr.shape[:2] + (3,)))   # (H, W, 3)
        im = Image.fromarray((arr * 255).round().astype(np.uint8))
    if size is not None and im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)                   # PIL resizes with antialiasing
    data = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    return data.view(im.size[1], im.size[0], 3).permute(2, 0, 1).contiguous()  # (3, H, W)


def read_image_float(path: str | os.PathLike, channels: int | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Decode an image file to a float (C, H, W) tensor in [0, 1].

    16-bit files keep their precision; alpha is composited over black; palettes are expanded.

    Args:
        path: the file.
        channels: 1 or 3 to convert (RGB -> BT.601 luma rescaled to [0, 1], grey -> three equal channels); None
            keeps the file's.

    Returns:
        the image and ``{"channels": file channels, "bits": 8 or 16, "size": (H, W)}`` (float files report 16 bits,
        so that what is written back keeps more than 8).
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    arr, bits = decode_image(path)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)   # (C, H, W)
    info = {"channels": x.shape[0], "bits": 16 if bits > 8 else 8, "size": tuple(x.shape[-2:])}
    if channels is not None and channels != x.shape[0]:
        if channels == 3:
            x = x.expand(3, -1, -1)
        else:
            x = (x * torch.from_numpy(_LUMA).view(3, 1, 1)).sum(0, keepdim=True).clamp(0, 1)
    return x.contiguous(), info


def read_gray(path: str | os.PathLike) -> Tensor:
    """An image file as a float32 (H, W) tensor in [0, 1]; colour images become BT.601 luma."""
    x, _ = read_image_float(path, channels=1)
    return x[0]


def read_gray_levels(path: str | os.PathLike) -> Tensor:
    """An image file as float32 (H, W) grey levels on the 8-bit scale (0 to 255 whatever the file's depth).

    A mask stored as {0, 1} or {0, 255} in an 8-bit file, or {0, 65535} in a 16-bit file, reads as the same levels
    ({0, 1} / {0, 255}); a mode-"1" file reads as {0, 255}. Levels of 8-bit files are exact integers.
    """
    arr, bits = decode_image(path)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)   # (C, H, W)
    if x.shape[0] == 3:
        x = (x * torch.from_numpy(_LUMA).view(3, 1, 1)).sum(0, keepdim=True).clamp(0, 1)
    levels = x[0] * 255.0
    return levels.round() if bits == 8 else levels


def write_image(path: str | os.PathLike, x: Tensor, *, bits: int = 8) -> None:
    """Save a (C, H, W) [0, 1] image atomically (C = 1 or 3); ``bits=16`` keeps 16 bits for PNG (grey or colour)
    and grey TIFF, other formats are written at 8 bits."""
    from PIL import Image

    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, H, W) image with C = 1 or 3, got shape {tuple(x.shape)}")
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    path = Path(path)
    arr = x.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy()   # (H, W, C)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        if bits == 16 and suffix == ".png":
            _write_png16(tmp, (arr * 65535).round().astype(np.uint16))
        else:
            if bits == 16 and arr.shape[-1] == 1 and suffix in (".tif", ".tiff"):
                im = Image.fromarray((arr[..., 0] * 65535).round().astype(np.uint16))
            else:
                u8 = (arr * 255).round().astype(np.uint8)
                im = Image.fromarray(u8[..., 0] if u8.shape[-1] == 1 else u8)
            im.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
