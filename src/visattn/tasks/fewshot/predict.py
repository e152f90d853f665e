"""Few-shot prediction on image files (``visattn predict --task fewshot``: K support images with binary masks and a
query image -> the query's mask and an overlay) and the run's training curves."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import DataError
from ..image_io import read_gray_levels as _read_gray
from .data import zscore

__all__ = ["plot_fewshot_curves", "predict_files", "read_mask"]


def read_mask(path: str | os.PathLike, size: tuple[int, int]) -> Tensor:
    """A binary mask file ({0, 1} or {0, 255}) of the given (H, W) as a bool tensor; clear errors otherwise."""
    mask = _read_gray(path)
    if tuple(mask.shape) != tuple(size):
        raise DataError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}: "
                        "a mask must have its image's size")
    values = set(mask.unique().tolist())
    if not values <= {0.0, 1.0} and not values <= {0.0, 255.0}:
        shown = sorted(values)[:6]
        raise DataError(f"mask {path} is not binary: values {shown}{' ...' if len(values) > 6 else ''}; save it "
                        "with only 0 (background) and 1 or 255 (foreground), without antialiasing")
    if not values - {0.0}:
        raise DataError(f"mask {path} is empty: a support mask needs foreground pixels")
    return mask > 0


def _prepare(image: Tensor, size: int) -> Tensor:
    """(H, W) grey image -> (3, size, size), z-scored like the training volumes."""
    x = F.interpolate(image[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return zscore(x)[None].expand(3, -1, -1)


def predict_files(model: nn.Module, supports: Sequence[tuple[str, str]], query: str, out_dir: Path, *,
                  img_size: int | None = None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Segment ``query`` from K (image, mask) support files; write ``<query>_mask.png`` (0/255, the query's size)
    and ``<query>_overlay.png``. Every input is read and checked first, and both files are renamed into place only
    after both are written, so a bad input leaves nothing behind."""
    from PIL import Image

    size = int(img_size or 256)
    q_img = _read_gray(query)
    shots, masks = [], []
    for image_path, mask_path in supports:
        img = _read_gray(image_path)
        masks.append(F.interpolate(read_mask(mask_path, tuple(img.shape))[None, None].float(), size=(size, size),
                                   mode="area")[0, 0].clamp(0, 1))
        shots.append(_prepare(img, size))
    for m, (_, mask_path) in zip(masks, supports):
        if float(m.max()) == 0:
            raise DataError(f"mask {mask_path} has no foreground left at {size}x{size}")
    x = _prepare(q_img, size)[None].to(device)
    s = torch.stack(shots)[None].to(device)
    sm = torch.stack(masks)[None].to(device)
    model.eval()
    with torch.no_grad():
        logits = model(x, support=s, support_mask=sm)[:, -1:]         # (1, 1, size, size)
        prob = F.interpolate(logits.float().cpu(), size=tuple(q_img.shape), mode="bilinear",
                             align_corners=False)[0, 0].sigmoid()
    pred = prob > 0.5
    gray = q_img - q_img.min()
    gray = (gray / (gray.max() + 1e-6) * 255).round().to(torch.uint8)
    rgb = gray[..., None].expand(-1, -1, 3).clone()
    red = torch.tensor([255, 0, 0], dtype=torch.float32)
    rgb[pred] = (0.55 * rgb[pred].float() + 0.45 * red).round().to(torch.uint8)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(query).stem
    targets = {"mask": out_dir / f"{stem}_mask.png", "overlay": out_dir / f"{stem}_overlay.png"}
    arrays = {"mask": (pred.to(torch.uint8) * 255).numpy(), "overlay": rgb.numpy()}
    temps = {}
    try:
        for key, path in targets.items():
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            Image.fromarray(arrays[key]).save(tmp, format="PNG")
            temps[key] = tmp
        for key, path in targets.items():
            os.replace(temps.pop(key), path)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
    return {**{k: str(v) for k, v in targets.items()}, "foreground_fraction": float(pred.float().mean())}


def plot_fewshot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Training loss (per logged step and per epoch) and held-out Dice (per epoch) from ``metrics.jsonl`` rows."""
    from ...plots import _save, have_matplotlib

    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.5, label="train (step)")
    if epochs:
        ax_loss.plot([r["step"] for r in epochs], [r["train_loss"] for r in epochs], "o-", label="train (epoch)")
        x = [r["epoch"] for r in epochs]
        ax_dice.plot(x, [r["train_dice"] for r in epochs], "o-", label="training episodes")
        ax_dice.plot(x, [r["val_mean_dice"] for r in epochs], "s-", label="held-out classes (mean)")
        if any("ema_val_mean_dice" in r for r in epochs):
            ax_dice.plot(x, [r.get("ema_val_mean_dice") for r in epochs], "^-", label="EMA held-out (mean)")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Dice", ylim=(0, 1))
    for ax in (ax_loss, ax_dice):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)
