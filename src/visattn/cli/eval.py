"""``visattn eval``: top-1 / top-5 accuracy, loss and a confusion matrix of a checkpoint on a data split (image
classifiers); Dice for few-shot segmentation, PSNR / SSIM for super-resolution and denoising models.

    visattn eval --checkpoint runs/digits                  # the split the run was validated on
    visattn eval --checkpoint model.safetensors --data path/to/imagefolder --out eval/
"""

from __future__ import annotations

import argparse

from . import _fewshot, _restoration
from ._common import add_runtime_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: top-1/top-5, loss, confusion matrix PNG",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "-c", required=True, help="run folder, checkpoint folder or .safetensors file")
    p.add_argument("--model", "-m", help="expected architecture (required for weights without model.json)")
    p.add_argument("--data", help="built-in name or ImageFolder directory (default: the data the model was trained on)")
    p.add_argument("--split", choices=["val", "train"], default="val",
                   help="val: the held-out split (the test split of built-in data)")
    p.add_argument("--batch-size", "-b", type=int, default=64)
    p.add_argument("--limit", type=int, metavar="N", help="evaluate only N images")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--out", "-o", help="folder for eval.json and confusion.png (default: beside the checkpoint)")
    p.add_argument("--task", choices=["classification", "fewshot", "sr", "denoise"],
                   help="default: the checkpoint's task (fewshot: Dice on held-out classes, see below; sr / denoise: "
                        "PSNR and SSIM of a restoration model against bicubic / the noisy input, --data a folder "
                        "of HR images or a benchmark folder with HR/ and LR_bicubic/X<s>/)")
    _fewshot.add_eval_args(p)
    add_runtime_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.task == "fewshot":
        return _fewshot.run_eval(args)
    import contextlib
    from pathlib import Path

    import torch

    from ..checkpoint import load_model, resolve_model_file, write_json_atomic
    from ..plots import plot_confusion
    from ..tasks.classification import ClassificationTask, load_classification_data
    from ._common import apply_runtime

    device = apply_runtime(args)
    model, meta = load_model(args.checkpoint, model_name=args.model)
    if meta.get("task") == "fewshot" and args.task is None:
        return _fewshot.run_eval(args)
    if args.task in ("sr", "denoise") or getattr(model, "task", None) == "restoration":
        return _restoration.run_eval(args, model, meta, device)
    if meta.get("task", "classification") != "classification":
        raise ValueError(f"{args.checkpoint} is a {meta['task']} model; eval handles classification checkpoints")
    saved_data = meta.get("data", {})
    source = args.data or saved_data.get("source")
    if not source:
        raise ValueError("the checkpoint does not record its data; pass --data")
    limit = {"val_limit": args.limit} if args.split == "val" else {"train_limit": args.limit}
    data = load_classification_data(source, img_size=meta.get("img_size"), crop_pct=meta.get("crop_pct"),
                                    val_fraction=saved_data.get("val_fraction", 0.1),
                                    split_seed=saved_data.get("split_seed", 0), **limit)
    classes = meta.get("classes") or data.classes
    if list(classes) != list(data.classes):
        raise ValueError(f"the data's classes {data.classes[:5]}... differ from the model's {classes[:5]}...")
    if model.config.num_classes != len(classes):
        raise ValueError(f"the model has {model.config.num_classes} outputs but the data has {len(classes)} classes")
    task = ClassificationTask(data, img_size=meta.get("img_size"), crop_pct=meta.get("crop_pct"),
                              mean=meta.get("mean"), std=meta.get("std"))
    model.to(device)

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext()

    dataset = task.val_set if args.split == "val" else task.train_set
    result = task.evaluate(model, batch_size=args.batch_size, device=device, autocast=autocast, dataset=dataset)
    split_name = "test" if args.split == "val" and data.source.get("builtin") else args.split
    weights, _ = resolve_model_file(args.checkpoint)
    out = Path(args.out) if args.out else weights.parent
    report = {"checkpoint": str(weights), "model": meta.get("model", args.model), "data": source,
              "split": args.split, **{k: v for k, v in result.items() if k != "confusion"},
              "confusion": result["confusion"].tolist(), "classes": list(classes)}
    write_json_atomic(out / "eval.json", report)
    png = plot_confusion(result["confusion"].tolist(), classes, out / "confusion.png",
                         title=f"{report['model']} on {Path(source).name} ({args.split}): "
                               f"top-1 {result['val_top1']:.2f}%")
    print(f"top-1 {result['val_top1']:.2f}%  top-5 {result['val_top5']:.2f}%  loss {result['val_loss']:.4f}  "
          f"({result['val_count']} images, {source} {split_name} split)")
    print(f"wrote {out / 'eval.json'}" + (f" and {png}" if png else ""))
    return 0
