"""The task interface: what the training loop and the command line need from a task, and nothing else.

A task is a plug-in. It lives in one package under ``tasks/`` (or anywhere: a test registers one in a few lines),
implements :class:`Task` and registers itself with :func:`visattn.tasks.register_task`. ``visattn train --task NAME``,
``visattn eval`` and ``visattn predict`` then dispatch to it; ``train.py``, ``cli/`` and ``export.py`` never name a
task.

The life of a task in training (``visattn.train.train``):

1. ``Task.for_training(run, options)`` builds it from the run's settings (:class:`RunSettings`: data source, input
   size, limits, seed...) and the task's own options (a frozen dataclass, ``Task.Options``, whose fields become
   command-line flags and are stored in every checkpoint).
2. The loop builds the model from the registry with ``model_overrides()`` and checks that the model serves the task
   (``model_task``, ``input_ndim`` against the model class's ``task`` / ``input_ndim``).
3. ``start_epoch(epoch, seed)`` runs before each epoch's DataLoader starts. Each step takes ``batch_size`` indices
   of ``train_set`` (a map-style dataset; the same global order for any number of processes), ``collate`` turns
   the items into a batch, and ``augment(batch, generator, global_batch, offset)`` returns ``(inputs, targets)``
   for this process's slice. Random numbers come from ``generator`` and are drawn for the whole *global* batch,
   then sliced: N processes see exactly what one process would.
4. ``forward(model, inputs)`` runs the model (``model(inputs)`` unless the task overrides it), ``loss(outputs,
   targets)`` gives the scalar to minimise, ``train_stats(outputs, targets)`` sums to report (``{"top1": 100 *
   correct}`` is reported as ``train_top1``, the sum over the epoch divided by the number of samples).
5. At the end of every epoch ``evaluate(model, ctx)`` returns metrics; ``main_metric`` (higher is better) picks the
   best epoch. ``epoch_summary(row)`` is the line printed per epoch, ``write_plots(run, rows, result)`` draws what
   the task wants in the run folder.
6. ``model_meta()`` is stored in ``model.json`` beside the weights: what inference needs (class names, input size,
   normalisation, degradation, the task's options).

Evaluation and prediction of a saved model (``visattn eval`` / ``visattn predict``): ``Task.for_evaluation(meta,
options, source)`` rebuilds the task from the checkpoint's ``model.json`` (``source`` overrides its data);
``eval_report(result)`` is the line ``visattn eval`` prints and ``predict(model, meta, request)`` answers ``visattn
predict``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # the registry imports this module without torch (``visattn --help`` stays instant)
    import torch
    from torch import Tensor, nn

    from ..distributed import DistInfo

__all__ = ["DataError", "EvalContext", "NoOptions", "PredictRequest", "RunSettings", "Task"]


class DataError(ValueError):
    """A problem with the user's data (missing directory, no images, unknown class): a one-line, actionable message."""


@dataclass(frozen=True)
class NoOptions:
    """The options of a task that has none."""


@dataclass(frozen=True)
class RunSettings:
    """The settings of a training run that every task reads (a view of ``TrainConfig``)."""

    data: str
    img_size: int | None = None          # None: the task's / data source's default
    val_fraction: float = 0.1
    train_limit: int | None = None
    val_limit: int | None = None
    seed: int = 0
    model_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    # classification preprocessing (other tasks ignore them)
    crop_pct: float | None = None
    crop_scale: tuple[float, float] | None = None
    hflip: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    label_smoothing: float = 0.1


@dataclass
class EvalContext:
    """How ``Task.evaluate`` runs: batch size, device, processes, autocast, DataLoader workers, and the split."""

    batch_size: int = 16
    device: Any = "cpu"
    dist_info: DistInfo | None = None
    autocast: Callable[[], contextlib.AbstractContextManager] | None = None
    workers: int = 0
    dataset: Any = None                  # None: the task's validation split

    def amp(self) -> contextlib.AbstractContextManager:
        return self.autocast() if self.autocast else contextlib.nullcontext()


@dataclass
class PredictRequest:
    """What ``visattn predict`` hands a task: input files, how many classes to show, where to write, JSON or text."""

    inputs: Sequence[str]
    topk: int = 5
    out: Path | None = None
    json: bool = False
    device: Any = "cpu"

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"--topk must be at least 1, got {self.topk}")


class Task:
    """Base class of every task (see the module docstring for the protocol).

    Class attributes a task sets:
        name: the registered name (``--task``); set by ``register_task``.
        model_task: the ``task`` attribute of the models it trains ("classification", "restoration", "fewshot").
        input_ndim: the rank of the model input it feeds (4: images, 5: video).
        main_metric: a key of ``evaluate``'s result, higher is better (best-epoch selection).
        Options: a frozen dataclass of the task's own settings (fields become command-line flags).
        defaults: training-run defaults where this task differs from the engine's (model, data, batch_size, lr...).
        train_stat_names: the keys ``train_stats`` returns.
    """

    name: ClassVar[str] = ""
    model_task: ClassVar[str] = "classification"
    input_ndim: ClassVar[int] = 4
    main_metric: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    defaults: ClassVar[dict[str, Any]] = {}
    #: keys of ``train_stats`` (fixed, so that processes reduce and checkpoints store the same vector)
    train_stat_names: ClassVar[tuple[str, ...]] = ()

    #: training and validation datasets (``train_set`` is None for a task built for evaluation only)
    train_set: Any = None
    val_set: Any = None
    #: side of the square model input of a training sample (the model is probed with it before training)
    img_size: int = 224
    options: Any = None

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def for_training(cls, run: RunSettings, options: Any) -> Task:
        """The task of a training run."""
        raise NotImplementedError(f"task {cls.name!r} cannot train")

    @classmethod
    def for_evaluation(cls, meta: dict[str, Any], options: Any, source: str | None = None, *,
                       limit: int | None = None, split: str = "val") -> Task:
        """The task that evaluates a saved model, from its ``model.json`` (``meta``); ``source`` overrides the data
        it recorded."""
        raise NotImplementedError(f"task {cls.name!r} has no evaluation of saved models")

    # --- training hooks -----------------------------------------------------------------------------------------
    def model_overrides(self) -> dict[str, Any]:
        """Config fields the data decides (``num_classes`` for classification, ``upscale`` for super-resolution)."""
        return {}

    def model_meta(self) -> dict[str, Any]:
        """What inference needs besides the weights (stored in ``model.json``)."""
        return {}

    def prepare_model(self, model: nn.Module) -> None:
        """Adjust a freshly built model before training (e.g. load backbone weights the task's options name)."""

    def describe(self) -> str:
        """A few words on the data for the start-of-training line, e.g. '1437 train / 360 val images at 32px'."""
        return f"{len(self.train_set)} train / {len(self.val_set)} val samples at {self.img_size}px"

    def start_epoch(self, epoch: int, seed: int) -> None:
        """Called before each training epoch's DataLoader is built, so that randomness drawn per item inside the
        dataset (in worker processes, which copy the dataset when the loader starts) can be seeded by (seed, epoch)
        like ``augment``'s (video: which clip of a video is decoded)."""

    def collate(self, items: list[Any]) -> Any:
        """Dataset items -> one batch (default: ``torch.utils.data.default_collate``)."""
        import torch

        return torch.utils.data.default_collate(items)

    def augment(self, batch: Any, generator: torch.Generator, global_batch: int, offset: int) -> tuple[Any, Tensor]:
        """``(inputs, targets)`` of this process's slice ``[offset, offset + local batch)`` of a global batch."""
        raise NotImplementedError

    def forward(self, model: nn.Module, inputs: Any) -> Any:
        """Run the model on a batch's inputs (``inputs`` as ``augment`` returned them, moved to the device)."""
        return model(inputs)

    def loss(self, outputs: Any, targets: Tensor) -> Tensor:
        raise NotImplementedError

    def train_stats(self, outputs: Any, targets: Tensor) -> dict[str, float]:
        """Sums over the batch to report per epoch as ``train_<key>`` (divided by the number of samples)."""
        return {}

    def evaluate(self, model: nn.Module, ctx: EvalContext) -> dict[str, Any]:
        """Metrics on ``ctx.dataset`` (default: the validation split), including ``main_metric`` and ``val_count``.
        Values that are not numbers (a confusion matrix) are kept out of the metrics log."""
        raise NotImplementedError

    def epoch_summary(self, row: dict[str, Any]) -> str:
        """The metrics part of the line printed after every epoch."""
        main = self.main_metric
        ema = f" (ema {row[f'ema_{main}']:.4g})" if f"ema_{main}" in row else ""
        return f"train_loss {row['train_loss']:.4f}  {main} {row[main]:.4g}{ema}"

    def write_plots(self, run: Path, rows: list[dict[str, Any]], result: dict[str, Any], title: str) -> list[str]:
        """Draw the run's plots into ``run``; return the file names written (default: loss / metric curves)."""
        from ..plots import plot_curves

        return ["curves.png"] if plot_curves(rows, run / "curves.png", title=title, metric=self.main_metric) else []

    # --- saved models: evaluation and prediction -----------------------------------------------------------------
    def eval_report(self, result: dict[str, Any], out: Path, title: str) -> str:
        """The line ``visattn eval`` prints (and any figure it writes into ``out``)."""
        return "  ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, (int, float)))

    @classmethod
    def predict(cls, model: nn.Module, meta: dict[str, Any], options: Any, request: PredictRequest) -> int:
        """Answer ``visattn predict`` for a saved model of this task; returns the exit status."""
        raise NotImplementedError(f"visattn predict does not handle the {cls.name!r} task")
