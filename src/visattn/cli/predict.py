"""``visattn predict``: the top-k classes of a trained classifier for image files.

    visattn predict --checkpoint runs/digits image1.png image2.jpg --topk 3
"""

from __future__ import annotations

import argparse

from . import _fewshot
from ._common import add_runtime_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="top-k classes with probabilities for image files",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", metavar="IMAGE")
    p.add_argument("--task", choices=["classification", "fewshot"], default="classification")
    p.add_argument("--checkpoint", "-c", required=True, help="run folder, checkpoint folder or .safetensors file")
    p.add_argument("--model", "-m", help="expected architecture (required for weights without model.json)")
    p.add_argument("--topk", "-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    _fewshot.add_predict_args(p)
    add_runtime_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.task == "fewshot":
        return _fewshot.run_predict(args)
    if not args.images:
        raise ValueError("no IMAGE given (few-shot segmentation: --task fewshot --support IMAGE MASK --query IMAGE)")
    import json
    import logging

    import torch

    from ..checkpoint import load_model
    from ..tasks.augment import apply_crops, center_crops, normalize
    from ..tasks.classification import IMAGENET_MEAN, IMAGENET_STD, read_image
    from ._common import apply_runtime

    log = logging.getLogger("visattn")
    device = apply_runtime(args)
    model, meta = load_model(args.checkpoint, model_name=args.model)
    model.to(device)
    size = int(meta.get("img_size") or 224)
    crop_pct = float(meta.get("crop_pct") or 0.875)
    mean, std = meta.get("mean") or IMAGENET_MEAN, meta.get("std") or IMAGENET_STD
    classes = meta.get("classes") or [str(i) for i in range(model.config.num_classes)]
    results, skipped = [], 0
    for path in args.images:
        try:
            image = read_image(path, round(size / crop_pct))[None]     # (1, 3, S, S) uint8
        except Exception as err:  # missing, corrupt or non-image file: skip it and say which
            log.warning("skipping %s: %s", path, err)
            skipped += 1
            continue
        x = normalize(apply_crops(image, center_crops(1, crop_pct), size), mean, std).to(device)
        with torch.no_grad():
            probs = model(x).float().softmax(-1)[0].cpu()
        top = probs.topk(min(args.topk, len(probs)))
        preds = [{"class": classes[i], "index": int(i), "prob": float(p)} for p, i in zip(top.values, top.indices)]
        results.append({"image": path, "top": preds})
        if not args.json:
            print(f"{path}: " + ", ".join(f"{p['class']} ({p['prob']:.3f})" for p in preds))
    if args.json:
        print(json.dumps(results, indent=2))
    if skipped:
        log.warning("skipped %d of %d image(s)", skipped, len(args.images))
    if not results:
        raise ValueError("no readable image among the inputs")
    return 0
