"""``visattn predict``: run a saved model on input files, as its task answers: the top-k classes of images for a
classifier (of videos, with the times of the clips used, for a video classifier), a mask of a query image for a
few-shot segmenter (``--support IMAGE MASK``, ``--query IMAGE``).

    visattn predict --checkpoint runs/digits image1.png image2.jpg --topk 3
    visattn predict --model maxvit_tiny_tf_224.in1k photo.jpg      # published weights, their preprocessing
    visattn predict --model mvit_v2_s clip.mp4                     # Kinetics-400 classes, 5 clips of 16x4
    visattn predict --checkpoint runs/catnet --support s.png s_mask.png --query q.png --out pred/
"""

from __future__ import annotations

import argparse

from ._common import add_runtime_args, add_task_args
from .eval import add_model_source_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a saved model on files (top-k classes, few-shot masks...)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="FILE",
                   help="input files (images for a classifier, videos for a video classifier)")
    add_model_source_args(p)
    p.add_argument("--topk", "-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--out", "-o", metavar="DIR", help="folder for files the task writes (default .)")
    add_task_args(p)
    add_runtime_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..tasks.base import PredictRequest
    from ._common import apply_runtime
    from .eval import load_model_from_args, task_for_saved_model

    device = apply_runtime(args)
    request = PredictRequest(inputs=list(args.inputs), topk=args.topk, out=Path(args.out) if args.out else None,
                             json=args.json, device=device)                  # checks --topk before loading
    model, meta = load_model_from_args(args)
    _, task_cls, options = task_for_saved_model(args, model, meta)
    return task_cls.predict(model.to(device), meta, options, request)
