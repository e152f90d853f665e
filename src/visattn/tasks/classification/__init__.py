"""Image classification: built-in digits or an ImageFolder directory; top-1 / top-5 accuracy (``--task
classification``, the default). Data in ``data.py``, the task in ``task.py``."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import register_task


@dataclass(frozen=True)
class ClassificationOptions:
    """Preprocessing and loss settings (None: the data source's default, e.g. 32px digits without flips)."""

    crop_pct: float | None = field(default=None, metadata={"help": "eval centre-crop fraction"})
    crop_scale: tuple[float, ...] | None = field(default=None, metadata={
        "nargs": 2, "metavar": ("LO", "HI"), "help": "random-resized-crop area range"})
    hflip: float | None = field(default=None, metadata={"help": "horizontal flip probability"})
    mean: tuple[float, ...] | None = field(default=None, metadata={"nargs": 3, "help": "normalisation mean"})
    std: tuple[float, ...] | None = field(default=None, metadata={"nargs": 3, "help": "normalisation std"})
    label_smoothing: float = field(default=0.1, metadata={"help": "cross-entropy label smoothing (default 0.1)"})
    max_bad_fraction: float = field(default=0.01, metadata={
        "help": "stop training once more than this fraction of the training images failed to decode "
                "(default 0.01; unreadable images are skipped and counted up to it)"})


register_task("classification", "visattn.tasks.classification.task:ClassificationTask",
              options=ClassificationOptions,
              help="image classification (built-in digits or an ImageFolder directory; the default)")
