"""``visattn train``: train a registered model on a registered task (``--task``, default classification).

    visattn train --model maxvit_tiny --set dims=32,64,128,256 --data digits --epochs 10 --out runs/digits
    visattn train --task sr --scale 2 --epochs 8                # GRL super-resolution on the built-in photos
    visattn train --resume runs/digits                      # continue where a run stopped
    visattn train --task video --init-from-image mvitv2_small.fb_in1k   # a video MViT from inflated image weights
    torchrun --nproc-per-node 2 -m visattn.cli train ...    # the same command on several processes (DDP)
    torchrun --nproc-per-node 8 -m visattn.cli train --model davit_giant --fsdp ...   # sharded (FSDP2)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_model_args, add_task_args, parse_overrides, task_options_given


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a task (classification, restoration, few-shot...)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_task_args(p, default_help="classification")
    p.add_argument("--data", help="built-in data name or a directory (default: the task's, e.g. digits)")
    p.add_argument("--out", "-o", help="run folder (default: runs/<model>-<data>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its latest checkpoint")
    p.add_argument("--pretrained", metavar="CKPT|TAG",
                   help="initialise from a weights file (visattn, timm or official) or published weights (a tag such "
                        "as maxvit_tiny_tf_224.in1k, which also picks --model); the classifier is replaced when the "
                        "task's classes differ")
    p.add_argument("--init-from-image", metavar="CKPT|TAG",
                   help="video models: initialise from image weights (a visattn checkpoint, a timm / official file or "
                        "a tag such as mvitv2_small.fb_in1k), 2-D kernels inflated over time, temporal position "
                        "tables zero (docs/video.md)")
    p.add_argument("--inflate", choices=["average", "centre"],
                   help="with --init-from-image: repeat 2-D kernels over time and divide by the kernel's frames "
                        "(average, the default) or put them at the centre frame (centre)")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--batch-size", "-b", type=int, help="global batch size (default 64)")
    opt.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    opt.add_argument("--min-lr", type=float, help="final learning rate of the cosine schedule (default 1e-5)")
    opt.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.05)")
    opt.add_argument("--warmup-epochs", type=float, help="linear warm-up length in epochs (default 1)")
    opt.add_argument("--clip-grad", type=float, help="max gradient norm, 0 to disable (default 1.0)")
    opt.add_argument("--amp", choices=["none", "bf16", "fp16"], help="mixed precision (fp16 needs CUDA)")
    opt.add_argument("--ema", dest="ema_decay", type=float, metavar="DECAY", help="EMA of weights, e.g. 0.999")
    opt.add_argument("--grad-checkpointing", action="store_true", default=None, help="trade compute for memory")
    opt.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    opt.add_argument("--fsdp", action="store_true", default=None,
                     help="shard parameters, gradients and optimizer state over the processes (FSDP2) instead of "
                          "replicating the model (DDP); checkpoints are then sharded. Without torchrun: one process")
    opt.add_argument("--no-sync-bn", dest="sync_bn", action="store_false", default=None,
                     help="under torchrun, keep BatchNorm statistics per process")
    opt.add_argument("--bn-momentum", type=float,
                     help="BatchNorm momentum override; MaxViT's 0.01 (TF decay 0.99) needs thousands of steps "
                          "before its running statistics fit, use 0.1 for short runs")
    opt.add_argument("--seed", type=int)
    opt.add_argument("--deterministic", action="store_true", default=None,
                     help="torch.use_deterministic_algorithms (bitwise-reproducible resume on CPU)")
    data = p.add_argument_group("data and augmentation")
    data.add_argument("--img-size", type=int, help="input size (default: the data's, 32 for digits)")
    data.add_argument("--val-fraction", type=float, help="held-out fraction of a directory without val/ (0.1)")
    data.add_argument("--train-limit", type=int, metavar="N", help="use only N training images")
    data.add_argument("--val-limit", type=int, metavar="N", help="use only N validation images")
    out = p.add_argument_group("checkpoints and logging")
    out.add_argument("--save-every", type=int, metavar="STEPS", help="also checkpoint every N steps")
    out.add_argument("--divergence-factor", type=float, metavar="F",
                     help="stop when the running loss (EMA over ~10 steps) exceeds F times its lowest level (default "
                          "10; 0: stop only on a non-finite loss)")
    out.add_argument("--keep", type=int, help="checkpoints to keep (default 2)")
    out.add_argument("--log-every", type=int, metavar="STEPS", help="metrics row every N steps (default 10)")
    out.add_argument("--eval-batch-size", type=int)
    rt = p.add_argument_group("runtime (may change on --resume)")
    rt.add_argument("--device", help="auto (default), cpu, cuda")
    rt.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    rt.add_argument("--threads", type=int, help="torch CPU threads")
    rt.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar (default: when stderr is a terminal)")
    p.set_defaults(run=run)


_ARG_TO_FIELD = {"batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs", "clip_grad", "amp", "ema_decay",
                 "grad_checkpointing", "compile", "fsdp", "sync_bn", "bn_momentum", "seed", "deterministic", "img_size",
                 "val_fraction", "train_limit", "val_limit", "save_every", "keep", "log_every", "eval_batch_size",
                 "epochs", "data", "model", "pretrained", "device", "workers", "threads", "progress", "task",
                 "divergence_factor", "init_from_image", "inflate"}


def run(args: argparse.Namespace) -> int:
    import contextlib
    import dataclasses
    import logging

    from ..checkpoint import latest_checkpoint, load_checkpoint
    from ..tasks import get_task
    from ..train import RESCUE_FIELDS, RUNTIME_FIELDS, TrainConfig, config_from_saved, train

    log = logging.getLogger("visattn")
    given = {k: v for k, v in vars(args).items() if k in _ARG_TO_FIELD and v is not None}
    if args.resume:
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"--resume {run_dir}: no such run folder")
        if latest_checkpoint(run_dir) is None:
            raise ValueError(f"--resume {run_dir}: no checkpoint in it (checkpoints/latest is missing)")
        saved = load_checkpoint(run_dir).train_meta["config"]
        ignored = sorted(k for k in given if k not in RUNTIME_FIELDS + RESCUE_FIELDS and given[k] != saved.get(k))
        for key in RESCUE_FIELDS:
            if key in given and given[key] != saved.get(key):
                log.warning("resuming with --%s %g (the run had %g); the schedule continues from the saved step",
                            key.replace("_", "-"), given[key], saved.get(key))
        options = task_options_given(args, saved.get("task", "classification"))
        ignored += sorted(k for k, v in options.items() if v != saved.get("task_options", {}).get(k))
        if args.overrides or args.out or ignored:
            log.warning("resuming with the run's saved settings; ignoring %s",
                        ", ".join(["--" + k.replace("_", "-") for k in ignored] + (["--set"] if args.overrides else [])
                                  + (["--out"] if args.out else [])))
        cfg = config_from_saved({**saved, "out": str(run_dir)}, given)
        train(cfg, resume=True)
        return 0
    if given.get("pretrained") and "model" not in given and not Path(given["pretrained"]).exists():
        from ..weights.registry import resolve_pretrained

        with contextlib.suppress(ValueError):                          # not a tag: build_model says so
            given["model"] = resolve_pretrained(given["pretrained"])[0]
    task = given.get("task", "classification")
    options = task_options_given(args, task)
    given = {**get_task(task).defaults, **given}
    cfg = TrainConfig(**given, task_options=options, model_overrides=parse_overrides(args.overrides))
    if not args.out:
        data_name = Path(cfg.data).name or "data"
        cfg = dataclasses.replace(cfg, out=f"runs/{cfg.model}-{data_name}")
    else:
        cfg = dataclasses.replace(cfg, out=args.out)
    if latest_checkpoint(cfg.out) is not None:
        raise ValueError(f"{cfg.out} already holds a training run: continue it with `visattn train --resume "
                         f"{cfg.out}` or pick another --out")
    train(cfg)
    return 0
