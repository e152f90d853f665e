"""Few-shot segmentation for the shared training loop: a batch is a batch of episodes, the loss supervises every
iteration's prediction, and every epoch ends with the SSL-ALPNet evaluation on the held-out classes.

The training set is ``episodes_per_epoch`` indices; they only count episodes. ``augment`` samples the whole global
batch of episodes from the step's generator (the volumes are in memory) and returns this process's slice, so a
resumed or multi-process run trains on exactly the episodes of one uninterrupted process.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..base import DataError, EvalContext, PredictRequest, RunSettings, Task
from . import FewShotOptions
from .data import FewShotData, Volume, load_fewshot_data
from .episodes import sample_episodes, sample_pseudo_episodes
from .metrics import _chunk_supports, evaluate_fewshot, iteration_losses
from .predict import plot_fewshot_curves, predict_files

__all__ = ["FewShotTask"]

Inputs = tuple[Tensor, Tensor, Tensor]        # query (B, 3, S, S), support (B, K, 3, S, S), support mask (B, K, S, S)


class FewShotTask(Task):
    """1-way K-shot segmentation: episodes of the training classes (or supervoxel pseudo-classes), the
    class-weighted binary cross entropy of every prediction, Dice on the held-out classes.

    Metrics of ``evaluate``: ``val_dice_<class>`` per held-out class, ``val_mean_dice`` (the main metric) and
    ``val_count`` (query volumes scored, summed over classes). Per epoch the loop also reports ``train_dice`` (Dice
    of the final prediction on the training episodes) and ``train_loss_first`` / ``train_loss_last`` (the loss of the
    first prediction, M_0, and of the last CMAT module's).

    Args:
        data: volumes and class split from :func:`load_fewshot_data`.
        options: the task's options.
        train: build the episode dataset (False: a task that evaluates a saved model).
        eval_split: which volumes ``val_set`` holds: "val" (the test volumes) or "train".
        limit: evaluate only this many query volumes (None: all).
    """

    model_task = "fewshot"
    input_ndim = 4
    main_metric = "val_mean_dice"
    train_stat_names = ("dice", "loss_first", "loss_last")
    # 5 epochs x 400 episodes / 4 = 500 steps with 50 warm-up steps: the documented built-in run
    defaults: dict[str, Any] = {"model": "catnet_r50", "data": "mni152", "epochs": 5, "batch_size": 4, "lr": 1e-3,
                                "min_lr": 1e-5, "weight_decay": 1e-4, "warmup_epochs": 0.5, "clip_grad": 1.0,
                                "eval_batch_size": 16}

    def __init__(self, data: FewShotData, options: FewShotOptions | None = None, *, train: bool = True,
                 eval_split: str = "val", limit: int | None = None):
        o = options or FewShotOptions()
        for name in ("shots", "n_part", "episodes_per_epoch"):
            if getattr(o, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(o, name)}")
        if not o.bg_weight > 0:
            raise ValueError(f"--bg-weight must be positive, got {o.bg_weight}")
        if limit is not None and limit < 1:
            raise ValueError(f"--limit must be at least 1 query volume, got {limit}")
        if eval_split not in ("val", "train"):
            raise ValueError(f"split must be 'val' or 'train', got {eval_split!r}")
        self.data, self.options = data, o
        self.classes = list(data.classes)
        self.class_ids = [data.classes[n] for n in data.train_classes]
        self.img_size = int(data.source["img_size"])
        self.eval_label = f"{data.source.get('source', '')} {'test' if eval_split == 'val' else 'train'} volumes"
        eval_volumes = self._evaluation_volumes(data.test if eval_split == "val" else data.train, limit)
        self.train_set = range(o.episodes_per_epoch) if train else None
        if eval_split == "val":
            self.val_set = eval_volumes
        else:
            self.val_set, self.train_set = None, eval_volumes
        self._backbone_loaded = False

    def _evaluation_volumes(self, volumes: Sequence[Volume], limit: int | None) -> list[Volume]:
        """The support volume first, then the query volumes (at most ``limit``); fails now, not after an epoch of
        training, if the support volume is out of range or lacks a held-out class."""
        s = self.options.support_volume
        if not 0 <= s < len(volumes):
            raise DataError(f"--support-volume {s} is out of range: the test split has {len(volumes)} volumes")
        for name in self.data.test_classes:
            _chunk_supports(volumes[s], self.data.classes[name], self.options.n_part, self.options.shots)
        queries = [v for i, v in enumerate(volumes) if i != s]
        return [volumes[s], *queries[:limit]]

    @classmethod
    def for_training(cls, run: RunSettings, options: FewShotOptions) -> FewShotTask:
        if options.support or options.query:
            raise ValueError("--support and --query are inputs of `visattn predict --task fewshot`, not of training")
        if run.train_limit is not None:
            raise ValueError("--train-limit does not apply to --task fewshot: set the epoch length with "
                             "--episodes-per-epoch")
        data = load_fewshot_data(run.data, img_size=run.img_size, train_classes=options.train_classes,
                                 test_classes=options.test_classes, fold=options.fold)
        return cls(data, options, limit=run.val_limit)

    @classmethod
    def for_evaluation(cls, meta: dict[str, Any], options: FewShotOptions, source: str | None = None, *,
                       limit: int | None = None, split: str = "val") -> FewShotTask:
        saved = meta.get("data", {})
        source = source or saved.get("source")
        if not source:
            raise ValueError("the checkpoint does not record its data; pass --data")
        options = _with_legacy_meta(meta, options)
        # The run's recorded training classes: asking for one of them as a test class is an error, as in training.
        data = load_fewshot_data(source, img_size=meta.get("img_size"),
                                 train_classes=options.train_classes or meta.get("train_classes"),
                                 test_classes=options.test_classes, fold=options.fold)
        task = cls(data, options, train=False, eval_split=split, limit=limit)
        task.eval_label = f"{source} {'test' if split == 'val' else 'train'} volumes"
        return task

    # --- training hooks -----------------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> None:
        """Load ``--backbone-weights`` (a torchvision ResNet checkpoint) into ``model.backbone``; the loop calls this
        once on the freshly built model, before moving it to the device, building the optimizer and EMA and
        loading a checkpoint to resume."""
        if self.options.backbone_weights:
            from ...weights import load_pretrained

            if not hasattr(model, "backbone"):
                raise ValueError(f"--backbone-weights needs a model with a ResNet backbone, got "
                                 f"{type(model).__name__}")
            load_pretrained(model.backbone, self.options.backbone_weights)
        self._backbone_loaded = True

    def model_meta(self) -> dict[str, Any]:
        o = self.options
        return {"img_size": self.img_size, "classes": self.classes, "train_classes": self.data.train_classes,
                "test_classes": self.data.test_classes, "shots": o.shots, "n_part": o.n_part,
                "support_volume": o.support_volume, "data": self.data.source,
                "normalization": "per-volume z-score of the foreground, 3 channels"}

    def describe(self) -> str:
        d, o = self.data, self.options
        what = "self-supervised pseudo-episodes" if o.self_supervised else \
            f"episodes of {', '.join(d.train_classes)}"
        return (f"{o.episodes_per_epoch} {o.shots}-shot {what} per epoch on {len(d.train)} volumes; held out "
                f"{', '.join(d.test_classes)} on 1 support + {len(self.val_set) - 1} query volumes; "
                f"{self.img_size}px slices")

    def collate(self, items: list[int]) -> Tensor:
        return torch.tensor(items)

    def augment(self, batch: Tensor, generator: torch.Generator, global_batch: int,
                offset: int) -> tuple[Inputs, Tensor]:
        """The episodes ``[offset, offset + len(batch))`` of a global batch sampled from ``generator``."""
        o = self.options
        if o.self_supervised:
            q, qm, s, sm = sample_pseudo_episodes(self.data.train, global_batch, o.shots, generator)
        else:
            q, qm, s, sm = sample_episodes(self.data.train, self.class_ids, global_batch, o.shots, generator)
        part = slice(offset, offset + batch.shape[0])
        return (q[part], s[part], sm[part]), qm[part]

    def forward(self, model: nn.Module, inputs: Inputs) -> Tensor:
        if self.options.backbone_weights and not self._backbone_loaded:
            raise RuntimeError("--backbone-weights was not loaded: the training loop did not call "
                               "Task.prepare_model")
        query, support, support_mask = inputs
        return model(query, support=support, support_mask=support_mask)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The mean over predictions of the class-weighted BCE (every iteration is supervised, as in CAT-Net)."""
        return iteration_losses(logits, targets, self.options.bg_weight).mean()

    @torch.no_grad()
    def train_stats(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        losses = iteration_losses(logits.detach(), targets, self.options.bg_weight)   # (S,)
        pred, truth = logits[:, -1].detach() > 0, targets > 0.5                        # (B, H, W)
        inter = (pred & truth).flatten(1).sum(1).double()
        total = (pred.flatten(1).sum(1) + truth.flatten(1).sum(1)).double()
        dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
        n = targets.shape[0]
        return {"dice": float(dice.sum()), "loss_first": float(losses[0]) * n, "loss_last": float(losses[-1]) * n}

    def evaluate(self, model: nn.Module, ctx: EvalContext) -> dict[str, Any]:
        """The SSL-ALPNet protocol on ``ctx.dataset`` (support volume first, then queries; default: ``val_set``)."""
        volumes = self.val_set if ctx.dataset is None else ctx.dataset
        o = self.options
        res = evaluate_fewshot(model, volumes, self.data.classes, self.data.test_classes, support_volume=0,
                               n_part=o.n_part, shots=o.shots, batch_size=ctx.batch_size, device=ctx.device,
                               dist_info=ctx.dist_info, autocast=ctx.autocast)
        return {"val_mean_dice": res["mean_dice"], **{f"val_dice_{n}": res[f"dice_{n}"] for n in self.data.test_classes},
                "val_count": res["count"]}

    def epoch_summary(self, row: dict[str, Any]) -> str:
        per_class = ", ".join(f"{n} {row[f'val_dice_{n}']:.4f}" for n in self.data.test_classes)
        ema = f" (ema {row['ema_val_mean_dice']:.4f})" if "ema_val_mean_dice" in row else ""
        return (f"train_loss {row['train_loss']:.4f}  train_dice {row['train_dice']:.3f}  held-out Dice "
                f"{per_class}  (mean {row['val_mean_dice']:.4f}){ema}")

    def write_plots(self, run: Path, rows: list[dict[str, Any]], result: dict[str, Any], title: str) -> list[str]:
        return ["curves.png"] if plot_fewshot_curves(rows, run / "curves.png", title=title) else []

    # --- saved models -------------------------------------------------------------------------------------------
    def eval_report(self, result: dict[str, Any], out: Path, title: str) -> str:
        o = self.options
        return ("Dice: " + ", ".join(f"{n} {result[f'val_dice_{n}']:.4f}" for n in self.data.test_classes)
                + f"  (mean {result['val_mean_dice']:.4f}; {o.shots}-shot, {o.n_part} chunks, {self.eval_label}, "
                  f"{result['val_count']} query volume(s) scored)")

    @classmethod
    def predict(cls, model: nn.Module, meta: dict[str, Any], options: FewShotOptions, request: PredictRequest) -> int:
        """Segment ``--query`` from the ``--support IMAGE MASK`` pairs; write its mask and overlay into ``--out``."""
        if not options.support or not options.query:
            raise ValueError("--task fewshot needs --support IMAGE MASK (repeatable) and --query IMAGE")
        if request.inputs:
            raise ValueError(f"--task fewshot takes --query IMAGE, not positional images ({request.inputs[0]})")
        written = predict_files(model, [(str(i), str(m)) for i, m in options.support], options.query,
                                request.out or Path("."), img_size=meta.get("img_size"), device=request.device)
        if request.json:
            print(json.dumps(written, indent=2))
        else:
            print(f"foreground {written['foreground_fraction'] * 100:.1f}% of the query; wrote {written['mask']} and "
                  f"{written['overlay']}")
        return 0


def _with_legacy_meta(meta: dict[str, Any], options: FewShotOptions) -> FewShotOptions:
    """Checkpoints of the former episodic loop record the protocol in ``model.json`` itself, not as task options:
    those values replace the options left at their defaults."""
    if "task_options" in meta:
        return options
    default = FewShotOptions()
    saved = {"shots": meta.get("shots"), "n_part": meta.get("n_part"), "support_volume": meta.get("support_volume"),
             "test_classes": meta.get("test_classes"), "fold": meta.get("data", {}).get("fold")}
    updates = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()
               if v is not None and getattr(options, k) == getattr(default, k)}
    return dataclasses.replace(options, **updates)
