"""One training loop for every task: AdamW, warm-up + cosine, mixed precision, EMA, DDP or FSDP2, atomic checkpoints.

Reproducibility is by construction. The order of the training set in epoch ``e`` is a permutation seeded by
(seed, e); step ``i`` of that epoch takes the next ``batch_size`` indices (the *global* batch); the random numbers of
its augmentation come from a generator seeded by (seed, e, i) and are drawn for the whole global batch. A process
of a ``torchrun`` job takes its contiguous slice of that batch, so N processes see exactly the images one process
would. A checkpoint stores the step, the optimizer, EMA and RNG states; ``--resume`` skips the steps already done
and continues bit for bit (in deterministic CPU mode).

With ``fsdp`` the model (and its EMA copy) is sharded over the processes with FSDP2 instead of replicated by DDP
(``distributed.shard_model``); checkpoints are then sharded (``checkpoint.save_sharded_checkpoint``), the final
model is gathered whole on the main process, and every process evaluates the whole validation split (an FSDP
forward is a collective, so all processes must run the same batches).

Outputs in the run folder: ``metrics.jsonl`` (a row per logged step and per epoch), ``metrics.csv`` (epochs),
``curves.png``, ``confusion.png``, ``checkpoints/`` (see ``checkpoint.py``), the final ``model.safetensors`` +
``model.json`` (EMA weights when EMA is on) and ``summary.json``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import (
    checkpoint_root,
    discard_checkpoints_after,
    last_validated_checkpoint,
    export_model,
    latest_checkpoint,
    load_checkpoint,
    load_model,
    load_sharded_state,
    model_meta,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    save_checkpoint,
    save_sharded_checkpoint,
    write_json_atomic,
)
from .distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    convert_sync_batchnorm,
    full_state_dict,
    init_distributed,
    release_distributed,
    shard_model,
)
from .tasks import options_to_dict
from .tasks.base import EvalContext, RunSettings, Task

__all__ = ["RESCUE_FIELDS", "RUNTIME_FIELDS", "DivergenceGuard", "ModelEma", "TrainConfig", "TrainError", "lr_at",
           "train", "validate_config"]

log = logging.getLogger("visattn")


class TrainError(RuntimeError):
    """Training cannot go on (diverged, or a setting the model or hardware cannot honour); a one-line message."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint; ``--resume`` reuses it)."""

    task: str = "classification"
    task_options: dict[str, Any] = field(default_factory=dict)   # the task's own settings (its Options fields)
    model: str = "maxvit_tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    init_from_image: str | None = None   # video models: image weights inflated over time (visattn.weights.inflate)
    inflate: str = "average"             # how --init-from-image inflates 2-D kernels: average | centre
    data: str = "digits"
    img_size: int | None = None          # None: the data source's default
    epochs: int = 10
    batch_size: int = 64                 # global batch, split across processes
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    clip_grad: float = 1.0               # max gradient norm; 0 disables clipping
    amp: str = "none"                    # none | bf16 | fp16 (CUDA only, with a gradient scaler)
    ema_decay: float = 0.0               # 0 disables the EMA of weights
    grad_checkpointing: bool = False
    compile: bool = False
    fsdp: bool = False                   # shard parameters, gradients and optimizer state (FSDP2) instead of DDP
    sync_bn: bool = True                 # synchronise BatchNorm statistics across processes under torchrun
    bn_momentum: float | None = None     # override BatchNorm momentum (MaxViT's 0.01 lags in short runs)
    seed: int = 0
    deterministic: bool = False
    out: str = "runs/train"
    save_every: int = 0                  # also checkpoint every N steps inside an epoch (0: epoch ends only)
    divergence_factor: float = 10.0      # stop when the running loss exceeds this times its lowest level (0: off)
    keep: int = 2
    log_every: int = 10
    val_fraction: float = 0.1
    train_limit: int | None = None
    val_limit: int | None = None
    eval_batch_size: int | None = None
    # runtime settings: may differ between a run and its resumption
    device: str = "auto"
    workers: int = 0
    threads: int | None = None
    progress: bool | None = None         # None: a progress bar when stderr is a terminal


RUNTIME_FIELDS = ("device", "workers", "threads", "progress")
# settings ``--resume`` accepts anew, to rescue a run that diverged (the schedule continues from the saved step)
RESCUE_FIELDS = ("lr", "min_lr")


def validate_config(cfg: TrainConfig) -> None:
    """A clear error for settings that cannot make a run (before any data is loaded or file written)."""
    def need(ok: bool, flag: str, what: str, value: Any) -> None:
        if not ok:
            raise TrainError(f"{flag} must be {what}, got {value!r}")

    need(cfg.epochs >= 1, "--epochs", "at least 1", cfg.epochs)
    need(cfg.batch_size >= 1, "--batch-size", "at least 1", cfg.batch_size)
    need(cfg.img_size is None or cfg.img_size >= 1, "--img-size", "a positive number of pixels", cfg.img_size)
    for flag, value in (("--lr", cfg.lr), ("--min-lr", cfg.min_lr), ("--weight-decay", cfg.weight_decay),
                        ("--warmup-epochs", cfg.warmup_epochs), ("--clip-grad", cfg.clip_grad),
                        ("--divergence-factor", cfg.divergence_factor)):
        need(math.isfinite(value) and value >= 0, flag, "a finite number >= 0", value)
    need(cfg.lr > 0, "--lr", "positive", cfg.lr)
    need(0 <= cfg.ema_decay < 1, "--ema", "in [0, 1)", cfg.ema_decay)
    need(0 < cfg.val_fraction < 1, "--val-fraction", "in (0, 1)", cfg.val_fraction)
    need(cfg.inflate in ("average", "centre"), "--inflate", "'average' or 'centre'", cfg.inflate)
    if cfg.init_from_image and cfg.pretrained:
        raise TrainError("--init-from-image and --pretrained both initialise the model: pass one")
    need(cfg.keep >= 1, "--keep", "at least 1", cfg.keep)
    need(cfg.save_every >= 0 and cfg.log_every >= 0, "--save-every / --log-every", ">= 0",
         (cfg.save_every, cfg.log_every))
    for flag, value in (("--train-limit", cfg.train_limit), ("--val-limit", cfg.val_limit),
                        ("--eval-batch-size", cfg.eval_batch_size), ("--workers", cfg.workers or 0),
                        ("--threads", cfg.threads)):
        need(value is None or value >= (0 if flag == "--workers" else 1), flag, "positive", value)


class DivergenceGuard:
    """Stops a run whose loss runs away.

    Rule: the step loss (averaged over the global batch) is non-finite, or, once 10 steps are taken, its running
    level (an exponential moving average with decay 0.9, about the last 10 steps) exceeds ``factor`` times the
    lowest running level seen so far. A healthy run's level falls or wobbles by far less than 10x; a run whose
    learning rate is too high climbs to hundreds or thousands of times its best level within a few steps.
    """

    def __init__(self, factor: float, state: list[float] | None = None):
        self.factor = factor
        self.level, self.lowest, self.steps = state if state else (None, math.inf, 0)

    def update(self, loss: float) -> str | None:
        """Record a step's loss; a reason to stop, or None."""
        if not math.isfinite(loss):
            return f"loss is {loss}"
        self.level = loss if self.level is None else 0.9 * self.level + 0.1 * loss
        self.steps += 1
        if self.steps >= 10:
            if self.factor and self.level > self.factor * self.lowest:
                return (f"the running loss {self.level:.4g} is over {self.factor:g}x its lowest level "
                        f"{self.lowest:.4g}")
            self.lowest = min(self.lowest, self.level)
        return None

    def state(self) -> list[float]:
        return [self.level, self.lowest, self.steps]


def lr_at(step: int, *, total: int, warmup: int, base: float, minimum: float) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up to ``base``, then cosine to ``minimum``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return minimum + 0.5 * (base - minimum) * (1 + math.cos(math.pi * t))


class ModelEma:
    """Exponential moving average of a model's weights, evaluated as its own copy of the model.

    The decay ramps up as min(decay, (1 + t) / (10 + t)) (TensorFlow's ``ExponentialMovingAverage`` with
    ``num_updates``), so short runs are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for ema_v, v in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_v.is_floating_point():
                ema_v.lerp_(v.detach(), 1 - d)
            else:
                ema_v.copy_(v)


def _mix(*values: int) -> int:
    """A 63-bit seed from small integers (for per-epoch and per-step generators)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v + 0x632BE59BD9B4E019 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if present, else CPU) or an explicit device; a clear error if CUDA is asked for but absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError(f"--device {name}: CUDA is not available here (use --device cpu)")
    return device


def build_task(cfg: TrainConfig) -> Task:
    """The registered task of ``cfg.task``, built from the run's settings and the task's options."""
    from .tasks import get_task, options_from_dict

    task_cls = get_task(cfg.task)
    options = options_from_dict(task_cls.Options, cfg.task_options, what=f"options of task {cfg.task!r}")
    run = RunSettings(data=cfg.data, img_size=cfg.img_size, val_fraction=cfg.val_fraction,
                      train_limit=cfg.train_limit, val_limit=cfg.val_limit, seed=cfg.seed,
                      model_overrides=dict(cfg.model_overrides))
    return task_cls.for_training(run, options)


def check_model_for_task(model_cls: type, task: Task | type, model_name: str) -> None:
    """A clear error when a model cannot serve a task (a video model for an image task, a classifier for SR...)."""
    kind = getattr(model_cls, "task", "classification")
    ndim = getattr(model_cls, "input_ndim", 4)
    if kind != task.model_task or ndim != task.input_ndim:
        what = {4: "image", 5: "video"}
        raise TrainError(f"{model_name} is a {what.get(ndim, f'{ndim}-D')} {kind} model; the {task.name!r} task "
                         f"trains {what.get(task.input_ndim, '')} {task.model_task} models")


def build_model(cfg: TrainConfig, task: Task) -> nn.Module:
    """The model for ``task``: fresh from the registry, or from ``cfg.pretrained`` (a saved model or weights file,
    or published weights: a tag such as ``maxvit_tiny_tf_224.in1k`` or ``maxvit_tiny.in1k_224``) with a new
    classifier (and a log line) where the task's classes differ."""
    from .registry import create_model, get_model_class
    from .weights.registry import resolve_pretrained

    cls = get_model_class(cfg.model)
    check_model_for_task(cls, task, cfg.model)
    if cfg.init_from_image and getattr(cls, "input_ndim", 4) != 5:
        raise TrainError(f"--init-from-image initialises a video model from image weights; {cfg.model} is an image "
                         "model: use --pretrained")
    size = task.img_size
    if size < getattr(cls, "min_input_size", 1):
        raise TrainError(f"--img-size {size} is too small for {cfg.model}: it needs at least {cls.min_input_size}")
    overrides = {**cfg.model_overrides, **task.model_overrides()}
    tag = None
    if cfg.pretrained and not Path(cfg.pretrained).exists():
        try:
            variant, tag = resolve_pretrained(cfg.pretrained)
        except ValueError as err:
            raise TrainError(f"--pretrained {cfg.pretrained}: no such file, and {err}") from None
        if variant != cfg.model:
            raise TrainError(f"--pretrained {cfg.pretrained} holds {variant} weights ({tag.name}), not {cfg.model}; "
                             f"pass --model {variant}")
    if tag is not None:
        model = create_model(cfg.model, pretrained=tag.name, **overrides)  # head.fc left fresh if classes differ
        log.info("initialised %s from the published weights %s", cfg.model, tag.name)
    elif cfg.pretrained:
        model, _ = load_model(cfg.pretrained, model_name=cfg.model,
                              overrides={k: v for k, v in cfg.model_overrides.items() if k != "num_classes"})
        if "num_classes" in overrides and model.config.num_classes != overrides["num_classes"]:
            model.reset_classifier(overrides["num_classes"])
    elif cfg.init_from_image:
        model = create_model(cfg.model, **overrides)
        _init_from_image(model, cfg)
    else:
        model = create_model(cfg.model, **overrides)
    task.prepare_model(model)
    model.eval()
    try:
        with torch.no_grad():
            model(*model.example_inputs(1, size))
    except ValueError as err:
        raise TrainError(f"{cfg.model} cannot take {size}x{size} inputs: {str(err).splitlines()[0]}") from err
    return model.train()


def _init_from_image(model: nn.Module, cfg: TrainConfig) -> None:
    """Fill a fresh video model from image weights (``--init-from-image``), logging where every key went."""
    from .weights.inflate import inflate_image_to_video, load_image_state_dict

    try:
        state, image_model = load_image_state_dict(cfg.init_from_image)
        report = inflate_image_to_video(state, model, mode=cfg.inflate)
    except ValueError as err:
        raise TrainError(f"--init-from-image {cfg.init_from_image}: {err}") from None
    filled = report.filled_fraction(model)
    log.info("initialised %s from the image model %s (%s), %s inflation: %.1f%% of the values; %s", cfg.model,
             image_model, cfg.init_from_image, cfg.inflate, 100 * filled, report.summary())
    if filled < 0.5:
        raise TrainError(f"--init-from-image {cfg.init_from_image}: only {100 * filled:.1f}% of {cfg.model}'s values "
                         f"have a counterpart in {image_model}; pass the image variant of the same widths and depths "
                         f"(mvitv2_small for mvitv2_small_video)")


def _to_device(value: Any, device: torch.device) -> Any:
    """Tensors, and tuples / lists / dicts of them, moved to ``device``."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and anything the model lists in ``no_weight_decay()`` (timm convention)."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip or name.endswith("relative_position_bias_table") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class _Metrics:
    """metrics.jsonl writer (main process only); on resume, rows after the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        self.rows: list[dict[str, Any]] = []
        if enabled and resume_step is not None and path.exists():
            self.rows = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= resume_step]
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def add(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def _progress(enabled: bool, total: int, desc: str) -> Any:
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)


def train(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.task``; with ``resume`` continue from the run folder's latest checkpoint.

    Returns:
        the final metrics (also written to ``summary.json``).
    """
    import torch.distributed as dist

    device = resolve_device(cfg.device)
    created = not dist.is_initialized()
    info = init_distributed(device.type, group_of_one=cfg.fsdp)
    created = created and dist.is_initialized()                       # this call made the process group
    try:
        return _train(cfg, resume, device, info)
    finally:
        release_distributed(created)


def _train(cfg: TrainConfig, resume: bool, device: torch.device, info: DistInfo) -> dict[str, Any]:
    # --- processes, devices, determinism ----------------------------------------------------------------------
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank if info.enabled else (device.index or 0))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if cfg.compile:
            torch.use_deterministic_algorithms(True)
        else:  # the public wrapper also imports the inductor config (seconds of start-up) for torch.compile only
            torch._C._set_deterministic_algorithms(True)
    if cfg.amp not in ("none", "bf16", "fp16"):
        raise TrainError(f"--amp must be none, bf16 or fp16, got {cfg.amp!r}")
    if cfg.amp == "bf16" and device.type == "cpu" and info.is_main:
        from .machine import native_bf16

        if not native_bf16():
            log.warning("--amp bf16 on a CPU without AVX512-BF16 or AMX: bf16 matmuls run in fp32 arithmetic here "
                        "(visattn.layers.amp), so bf16 saves activation memory but no time (maxvit_tiny's step: 1.3x "
                        "the fp32 step under AVX2 caps); drop --amp for fp32")
    if cfg.amp == "fp16" and device.type != "cuda":
        raise TrainError("--amp fp16 needs a CUDA device (it uses a gradient scaler); use --amp bf16 on CPU")
    validate_config(cfg)
    if cfg.amp == "fp16" and cfg.fsdp:
        raise TrainError("--amp fp16 is not supported with --fsdp (its gradient scaler does not see sharded "
                         "gradients); use --amp bf16")
    torch.manual_seed(cfg.seed + info.rank)
    run = Path(cfg.out)
    ckpt = None
    if resume:
        if latest_checkpoint(run) is None:
            raise TrainError(f"nothing to resume in {run}: no checkpoints/latest")
        ckpt = load_checkpoint(run)

    # --- data, model, optimizer -------------------------------------------------------------------------------
    from .registry import get_model_config

    get_model_config(cfg.model, **cfg.model_overrides)                 # unknown names fail before data loading
    task = build_task(cfg)
    # resuming: the checkpoint holds the weights, so the image weights are neither needed nor read again
    model = build_model(dataclasses.replace(cfg, init_from_image=None) if resume else cfg, task)
    B = cfg.batch_size
    if B % info.world_size:
        raise TrainError(f"--batch-size {B} (global) is not divisible by the {info.world_size} processes")
    local_B = B // info.world_size
    steps_per_epoch = len(task.train_set) // B
    if steps_per_epoch == 0:
        raise TrainError(f"--batch-size {B} is larger than the {len(task.train_set)} training samples")
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    if cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise TrainError(f"{cfg.model} does not support gradient checkpointing")
        model.set_grad_checkpointing(True)
    if cfg.bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = cfg.bn_momentum
    meta = model_meta(model, **{**task.model_meta(), "task": cfg.task,
                                "task_options": options_to_dict(task.options)})
    model.to(device)
    if info.enabled and cfg.sync_bn:
        model = convert_sync_batchnorm(model, device.type)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if cfg.fsdp:                                                       # the EMA copy is sharded like the model
        for module in (model, *([ema.module] if ema is not None else [])):
            shard_model(module, device.type)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.999))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()

    stat_names = ("loss", "count", *task.train_stat_names)              # epoch sums over the global batches
    guard = DivergenceGuard(cfg.divergence_factor)
    step, sums, best = 0, torch.zeros(len(stat_names), dtype=torch.float64), None
    if ckpt is not None and cfg.fsdp:
        load_sharded_state(ckpt, model=model, optimizer=optimizer, ema=ema.module if ema is not None else None)
    elif ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        optimizer.load_state_dict(optimizer_state_from_flat(ckpt.train_tensors, ckpt.train_meta["optimizer"]))
        if ema is not None:
            ema.module.load_state_dict({k[4:]: v for k, v in ckpt.train_tensors.items() if k.startswith("ema.")})
    if ckpt is not None:
        if ckpt.train_meta.get("scaler"):
            scaler.load_state_dict(ckpt.train_meta["scaler"])
        rng = ckpt.train_tensors.get(f"rng.{info.rank}.cpu", ckpt.train_tensors["rng.0.cpu"])
        torch.set_rng_state(rng)
        if device.type == "cuda" and f"rng.{info.rank}.cuda" in ckpt.train_tensors:
            torch.cuda.set_rng_state(ckpt.train_tensors[f"rng.{info.rank}.cuda"], device)
        step = ckpt.train_meta["step"]
        sums = torch.tensor([_saved_sums(ckpt.train_meta["epoch_sums"]).get(k, 0.0) for k in stat_names],
                            dtype=torch.float64)
        best = ckpt.train_meta.get("best")
        guard = DivergenceGuard(cfg.divergence_factor, ckpt.train_meta.get("loss_level"))
    train_model: nn.Module = model
    if info.enabled and not cfg.fsdp:
        ddp_args = {"device_ids": [device.index]} if device.type == "cuda" else {}
        train_model = nn.parallel.DistributedDataParallel(model, **ddp_args)
    if cfg.compile:
        train_model = torch.compile(train_model)

    metrics = _Metrics(run / "metrics.jsonl", info.is_main, step if ckpt else None)
    show_bar = info.is_main and (sys.stderr.isatty() if cfg.progress is None else cfg.progress)
    last_saved: Path | None = ckpt.path if ckpt else None

    # A checkpoint is good when its weights and buffers are finite and the validation just before it was finite:
    # the epoch-end ones. Pruning never removes the newest good one; on divergence the ones after it go.
    last_good: Path | None = last_validated_checkpoint(run) if ckpt else None

    def diverged(what: str) -> str:
        nonlocal last_saved
        if info.is_main:
            last_saved = discard_checkpoints_after(run, last_good)
        barrier(info)
        kept = (f"the last good checkpoint is {last_good}; continue from it with a lower learning rate: visattn "
                f"train --resume {run} --lr {cfg.lr / 10:g}") if last_good else \
            "no checkpoint had passed a validation yet (checkpoints after the last validation were removed)"
        return f"training diverged ({what}) and stopped; {kept}"
    def save(epoch: int, eval_row: dict[str, Any] | None) -> None:
        nonlocal last_saved, last_good
        # each process checks its own shards (FSDP) or replica; every process learns of any non-finite tensor
        local = [n for n, t in model.state_dict().items()
                 if t.is_floating_point() and not torch.isfinite(getattr(t, "to_local", lambda: t)()).all()]
        bad = sorted({n for names in all_gather_objects(local, info) for n in names})
        if bad:
            raise TrainError(diverged(f"weights became non-finite ({bad[0]}) at step {step}"))
        rng = all_gather_objects(torch.get_rng_state(), info)
        # every process's CUDA generator too, so that a multi-GPU --resume restores each rank's own state
        cuda_rng = all_gather_objects(torch.cuda.get_rng_state(device), info) if device.type == "cuda" else []
        if not info.is_main and not cfg.fsdp:
            if eval_row is not None:
                last_good = checkpoint_root(run) / f"step{step:08d}"
            barrier(info)
            return
        tensors, opt_meta = optimizer_state_to_flat(optimizer.state_dict()) if not cfg.fsdp else ({}, None)
        tensors.update({f"rng.{r}.cpu": s for r, s in enumerate(rng)})
        tensors.update({f"rng.{r}.cuda": s for r, s in enumerate(cuda_rng)})
        if ema is not None and not cfg.fsdp:
            tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
        state = {"step": step, "epoch": epoch, "steps_per_epoch": steps_per_epoch, "world_size": info.world_size,
                 "epoch_sums": dict(zip(stat_names, sums.tolist())), "best": best, "optimizer": opt_meta, "scaler": scaler.state_dict(),
                 "config": dataclasses.asdict(cfg), "eval": eval_row, "loss_level": guard.state()}
        if cfg.fsdp:
            last_saved = save_sharded_checkpoint(run, f"step{step:08d}", model=model, optimizer=optimizer,
                                                 ema=ema.module if ema is not None else None, model_meta=meta,
                                                 train_tensors=tensors, train_meta=state, keep=cfg.keep,
                                                 protect=last_good.name if last_good else None)
            if eval_row is not None:
                last_good = last_saved
            return
        last_saved = save_checkpoint(run, f"step{step:08d}", model_state=model.state_dict(), model_meta=meta,
                                     train_tensors=tensors, train_meta=state, keep=cfg.keep,
                                     protect=last_good.name if last_good else None)
        if eval_row is not None:
            last_good = last_saved
        barrier(info)

    if info.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{'resuming' if ckpt else 'training'} {cfg.model} ({n_params / 1e6:.2f}M parameters) on {cfg.data}"
              f" ({cfg.task}): {task.describe()}, "
              f"{cfg.epochs} epochs x {steps_per_epoch} steps of {B}"
              f"{f' ({info.world_size} processes)' if info.enabled else ''}, device {device.type}"
              f"{f', from step {step}' if ckpt else ''}", flush=True)

    # --- the loop ---------------------------------------------------------------------------------------------
    # a run resumed from its last checkpoint (killed while writing the final model) reports that epoch's metrics
    eval_row: dict[str, Any] = dict(ckpt.train_meta.get("eval") or {}) if ckpt else {}
    result: dict[str, Any] = {}
    for epoch in range(step // steps_per_epoch, cfg.epochs):
        first = step - epoch * steps_per_epoch                         # > 0 when resuming inside this epoch
        order = epoch_order(len(task.train_set), cfg.seed, epoch)
        batches = [order[i * B:(i + 1) * B][info.rank * local_B:(info.rank + 1) * local_B].tolist()
                   for i in range(first, steps_per_epoch)]
        task.start_epoch(epoch, cfg.seed)                              # before the workers copy the dataset
        # Its own generator: creating a loader iterator must not draw from the global RNG (dropout, drop path).
        loader = torch.utils.data.DataLoader(task.train_set, batch_sampler=batches, num_workers=cfg.workers,
                                             collate_fn=task.collate, generator=torch.Generator().manual_seed(epoch))
        bar = _progress(show_bar, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
        if bar is not None:
            bar.update(first)
        train_model.train()
        start = time.perf_counter()
        seen = 0
        for i, batch in enumerate(loader, start=first):
            generator = torch.Generator().manual_seed(_mix(cfg.seed, epoch, i))
            inputs, targets = task.augment(batch, generator, B, info.rank * local_B)
            x = _to_device(inputs, device)
            y = targets.to(device, non_blocking=True)
            lr = lr_at(step, total=total_steps, warmup=warmup, base=cfg.lr, minimum=cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast():
                out = task.forward(train_model, x)
            loss = task.loss(out, y)
            extra = task.train_stats(out, y)
            n = y.shape[0]
            stats = torch.tensor([float(loss.detach()) * n, n, *(extra[k] for k in task.train_stat_names)],
                                 dtype=torch.float64)
            if info.enabled:
                torch.distributed.all_reduce(stats)
            reason = guard.update(float(stats[0] / stats[1]))
            if reason:
                if bar is not None:
                    bar.close()
                raise TrainError(diverged(f"{reason} at epoch {epoch + 1}, step {step + 1}"))
            scaler.scale(loss).backward()
            if cfg.clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model, step)
            step += 1
            sums += stats
            seen += int(stats[1])
            if bar is not None:
                bar.set_postfix(loss=f"{float(stats[0] / stats[1]):.4f}", lr=f"{lr:.2e}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}")
                bar.update(1)
            if cfg.log_every and step % cfg.log_every == 0:
                metrics.add({"kind": "step", "step": step, "epoch": step / steps_per_epoch,
                             "loss": float(stats[0] / stats[1]), "lr": lr})
            if cfg.save_every and step % cfg.save_every == 0 and i + 1 < steps_per_epoch:
                save(epoch, None)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - start

        # --- end of epoch: evaluate, log, checkpoint ------------------------------------------------------------
        eval_bs = cfg.eval_batch_size or max(local_B, 1)
        ctx = EvalContext(batch_size=eval_bs, device=device, dist_info=DistInfo() if cfg.fsdp else info,
                          autocast=autocast, workers=cfg.workers)
        result = task.evaluate(model, ctx)
        eval_row = {"kind": "epoch", "epoch": epoch + 1, "step": step, "lr": lr,
                    "train_loss": float(sums[0] / sums[1]),
                    **{f"train_{k}": float(v / sums[1]) for k, v in zip(stat_names[2:], sums[2:])},
                    **_numbers(result), "img_per_s": seen / elapsed, "epoch_time_s": elapsed}
        if ema is not None:
            ema_result = _numbers(task.evaluate(ema.module, ctx))
            eval_row.update({f"ema_{k}": v for k, v in ema_result.items() if k != "val_count"})
        bad = [k for k, v in eval_row.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise TrainError(diverged(f"validation {bad[0]} is {eval_row[bad[0]]} after epoch {epoch + 1}"))
        main = eval_row.get(f"ema_{task.main_metric}", eval_row[task.main_metric])
        if best is None or main > best["value"]:
            best = {"value": main, "epoch": epoch + 1, "metric": task.main_metric}
        metrics.add(eval_row)
        if info.is_main:
            print(f"epoch {epoch + 1}/{cfg.epochs}  {task.epoch_summary(eval_row)}  lr {lr:.2e}  "
                  f"{eval_row['img_per_s']:.0f} samples/s  {elapsed:.1f}s", flush=True)
        sums = torch.zeros(len(stat_names), dtype=torch.float64)
        save(epoch + 1, eval_row)

    # --- the final model, plots and summary ---------------------------------------------------------------------
    final = ema.module if ema is not None else model
    final_state = full_state_dict(final) if cfg.fsdp else None          # collective: every process gathers
    if info.is_main:
        final_state = final_state or {k: v for k, v in final.state_dict().items()}
        export_model(run, final_state, {**meta, "ema": ema is not None, "step": step})
        summary = {k: v for k, v in eval_row.items() if k != "kind"}
        summary.update({"model": cfg.model, "out": str(run), "best": best, "steps": step})
        write_json_atomic(run / "summary.json", summary)
        _write_csv(run / "metrics.csv", [r for r in metrics.rows if r["kind"] == "epoch"])
        written = ["model.json", "metrics.jsonl",
                   *task.write_plots(run, metrics.rows, result, title=f"{cfg.model} on {cfg.data}")]
        print(f"saved {run / 'model.safetensors'} (+ {', '.join(written)})")
    barrier(info)
    return eval_row


def _numbers(result: dict[str, Any]) -> dict[str, Any]:
    """The metrics of an evaluation that go into the log (numbers; a confusion matrix stays out)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _saved_sums(saved: dict[str, float] | list[float]) -> dict[str, float]:
    # checkpoints before named sums stored [loss * n, correct, n]
    if isinstance(saved, dict):
        return saved
    return {"loss": saved[0], "count": saved[2], "top1": 100.0 * saved[1]}


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import csv
    import io

    if not rows:
        return
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "kind"))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    from .checkpoint import atomic_write_bytes

    atomic_write_bytes(path, buf.getvalue().encode())


def config_from_saved(saved: dict[str, Any], runtime: dict[str, Any]) -> TrainConfig:
    """The TrainConfig of a checkpoint, with runtime settings (device, workers...) replaced by ``runtime``."""
    valid = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = _migrate_saved(saved)
    cfg = TrainConfig(**{k: _tupled(v) for k, v in saved.items() if k in valid})
    return dataclasses.replace(cfg, **{k: v for k, v in runtime.items()
                                       if k in RUNTIME_FIELDS + RESCUE_FIELDS and v is not None})



# runs saved before tasks had options kept them as TrainConfig fields: field -> (task, option)
_LEGACY_OPTIONS = {"crop_pct": ("classification", "crop_pct"), "crop_scale": ("classification", "crop_scale"),
                   "hflip": ("classification", "hflip"), "mean": ("classification", "mean"),
                   "std": ("classification", "std"), "label_smoothing": ("classification", "label_smoothing"),
                   "scale": ("sr", "scale"), "noise_sigma": ("denoise", "sigma"), "val_data": (None, "val_data")}


def _migrate_saved(saved: dict[str, Any]) -> dict[str, Any]:
    if "task_options" in saved:
        return saved
    task = saved.get("task", "classification")
    options = {opt: saved[key] for key, (owner, opt) in _LEGACY_OPTIONS.items()
               if saved.get(key) is not None and owner in (task, None) and not (task != "sr" and key == "scale")}
    return {**{k: v for k, v in saved.items() if k not in _LEGACY_OPTIONS}, "task_options": options}


def _tupled(value: Any) -> Any:
    # JSON stores tuples as lists; configs and model overrides hold tuples.
    if isinstance(value, list):
        return tuple(_tupled(v) for v in value)
    if isinstance(value, dict):
        return {k: _tupled(v) for k, v in value.items()}
    return value
