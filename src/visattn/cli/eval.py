"""``visattn eval``: the metrics of a saved model on its task's evaluation data (the split it was validated on, or
``--data``): top-1 / top-5 and a confusion matrix for classifiers, PSNR / SSIM against the classical baseline for
restoration, Dice for few-shot segmentation; ``eval.json`` beside the checkpoint or in ``--out``.

    visattn eval --checkpoint runs/digits                  # the split the run was validated on
    visattn eval --checkpoint model.safetensors --data path/to/imagefolder --out eval/
    visattn eval --model maxvit_tiny_tf_224.in1k --data imagenet_val/   # published weights; class folders named
                                                                        # by synset (n01440764) or label name
    visattn eval --model mvit_v2_s --data kinetics_val/     # Kinetics-400 weights; class folders named by label
                                                            # (air_drumming/ or "air drumming/"), or a list
"""

from __future__ import annotations

import argparse

from ._common import add_runtime_args, add_task_args


def add_model_source_args(p: argparse.ArgumentParser) -> None:
    """``--checkpoint``, ``--model`` and ``--set``, shared with ``visattn predict``."""
    p.add_argument("--checkpoint", "-c", help="run folder, checkpoint folder or .safetensors file; without it, "
                                              "--model names published weights")
    p.add_argument("--model", "-m", help="published weights (a tag such as maxvit_tiny_tf_224.in1k, or a model "
                                         "name with published weights: its default tag; `visattn list --pretrained`); "
                                         "with --checkpoint: the expected architecture, a visattn name or a "
                                         "timm / torchvision name or tag (required for weights without "
                                         "model.json)")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="model config override for a model built from --model, repeatable")


def load_model_from_args(args: argparse.Namespace):
    """(model, meta) for ``--checkpoint`` / ``--model`` / ``--set``: a saved model, or published weights."""
    from ..checkpoint import load_model, load_published_model
    from ._common import parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.checkpoint:
        return load_model(args.checkpoint, model_name=args.model, overrides=overrides)
    if not args.model:
        raise ValueError("pass --checkpoint (a saved model) or --model naming published weights "
                         "(`visattn list --pretrained`)")
    return load_published_model(args.model, overrides=overrides)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a saved model on its task's data (accuracy, PSNR/SSIM, Dice...)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_source_args(p)
    p.add_argument("--data", help="built-in name or directory (default: the data the model was trained on)")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="val: the held-out split (the test split of built-in data)")
    p.add_argument("--batch-size", "-b", type=int, default=64)
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only N samples")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes decoding the data (default 0)")
    p.add_argument("--out", "-o", help="folder for eval.json and figures (default: beside the checkpoint)")
    add_task_args(p)
    add_runtime_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    import torch

    from ..checkpoint import resolve_model_file, write_json_atomic
    from ..tasks.base import EvalContext
    from ._common import apply_runtime

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    device = apply_runtime(args)
    model, meta = load_model_from_args(args)
    name, task_cls, options = task_for_saved_model(args, model, meta)
    task = task_cls.for_evaluation(meta, options, args.data, limit=args.limit, split=args.split)
    model.to(device)

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()

    dataset = task.val_set if args.split == "val" else task.train_set
    if dataset is None:
        raise ValueError(f"the {name} task has no {args.split} split to evaluate")
    result = task.evaluate(model, EvalContext(batch_size=args.batch_size, device=device, autocast=autocast,
                                              dataset=dataset, workers=args.workers))
    if args.checkpoint:
        weights, _ = resolve_model_file(args.checkpoint)
        source, out = str(weights), Path(args.out) if args.out else weights.parent
    else:
        source, out = meta["weights"], Path(args.out or ".")
    model_name = meta.get("model", args.model)
    report = {"checkpoint": source, "model": model_name, "task": name, "data": args.data or
              meta.get("data", {}).get("source"), "split": args.split,
              **{k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in result.items()}}
    write_json_atomic(out / "eval.json", report)
    print(task.eval_report(result, out, title=f"{model_name} ({args.split})"))
    print(f"wrote {out / 'eval.json'}")
    return 0


def task_for_saved_model(args: argparse.Namespace, model: object, meta: dict) -> tuple[str, type, object]:
    """The task a saved model is evaluated or run with (``--task``, else the one it was trained on, else what the
    model kind implies), checked against the model, and its options: the saved ones, then those given now."""
    from ..tasks import get_task, options_from_dict
    from ..train import check_model_for_task
    from ._common import task_options_given

    name = args.task or meta.get("task") or _task_of_model(model)
    task_cls = get_task(name)
    check_model_for_task(type(model), task_cls, meta.get("model") or type(model).__name__)
    options = options_from_dict(task_cls.Options, {**meta.get("task_options", {}), **task_options_given(args, name)},
                                what=f"options of task {name!r}")
    return name, task_cls, options


def _task_of_model(model: object) -> str:
    # weights without model.json (timm, torchvision or official files) and published weights: the model kind decides
    kind = getattr(type(model), "task", "classification")
    if kind == "restoration":
        return "sr" if getattr(model.config, "upscale", 1) > 1 else "denoise"
    if kind == "classification" and getattr(type(model), "input_ndim", 4) == 5:
        return "video"
    return kind
