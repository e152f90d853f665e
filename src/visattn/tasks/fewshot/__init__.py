"""Few-shot segmentation (1-way K-shot, ``--task fewshot``): CAT-Net-style models trained on episodes of a query
slice and K support slices with masks, evaluated with the SSL-ALPNet protocol on held-out classes.

Modules: ``data.py`` (volumes, NIfTI reading, the built-in MNI152 volumes), ``episodes.py`` (episode sampling and
augmentation), ``metrics.py`` (the per-iteration loss, Dice, the evaluation protocol), ``predict.py`` (image files,
plots) and ``task.py`` (the task of the shared training loop). This file imports the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import register_task


@dataclass(frozen=True)
class FewShotOptions:
    """Episodes, class split, evaluation protocol, loss and backbone initialisation; ``support`` / ``query`` are
    the inputs of ``visattn predict``."""

    shots: int = field(default=1, metadata={"help": "support slices per episode and per evaluation chunk, K "
                                                    "(default 1)"})
    train_classes: tuple[str, ...] | None = field(default=None, metadata={
        "metavar": "A,B", "help": "classes to train on (default: every class but the held-out ones)"})
    test_classes: tuple[str, ...] | None = field(default=None, metadata={
        "metavar": "C,D", "help": "held-out classes to evaluate (default: mni152's deep_grey_matter, a "
                                  "directory's last class)"})
    fold: int = field(default=0, metadata={"help": "which fifth of a directory's volumes is the test split (0-4)"})
    n_part: int = field(default=3, metadata={"help": "support chunks per volume in evaluation (default 3)"})
    support_volume: int = field(default=0, metadata={"help": "index of the support volume in the evaluation split "
                                                             "(default 0)"})
    bg_weight: float = field(default=0.1, metadata={"help": "background weight of the loss (default 0.1, the "
                                                            "official config's)"})
    self_supervised: bool = field(default=False, metadata={
        "help": "train on supervoxel_<id>.nii.gz pseudo-labels (SSL-ALPNet) instead of the classes"})
    backbone_weights: str | None = field(default=None, metadata={
        "metavar": "PTH", "help": "a torchvision ResNet checkpoint loaded into the model's backbone"})
    episodes_per_epoch: int = field(default=400, metadata={
        "metavar": "N", "help": "training episodes per epoch (default 400: 100 steps of 4)"})
    support: tuple[tuple[str, str], ...] | None = field(default=None, metadata={
        "nargs": 2, "action": "append", "metavar": ("IMAGE", "MASK"),
        "help": "predict: a support image and its binary mask (repeat for K shots)"})
    query: str | None = field(default=None, metadata={"metavar": "IMAGE", "help": "predict: the image to segment"})


register_task("fewshot", "visattn.tasks.fewshot.task:FewShotTask", options=FewShotOptions,
              help="few-shot segmentation, 1-way K-shot (CAT-Net; built-in mni152 or a NIfTI directory)")
