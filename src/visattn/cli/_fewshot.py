"""``--task fewshot`` for ``visattn train``, ``eval`` and ``predict`` (standard library only at import time).

    visattn train --task fewshot --model catnet_r50 --set depths=1,1,1,1 --steps 400 --out runs/catnet
    visattn eval --task fewshot --checkpoint runs/catnet
    visattn predict --task fewshot --checkpoint runs/catnet --support s.png s_mask.png --query q.png --out pred/

The train, eval and predict modules add these arguments and hand ``--task fewshot`` to the functions here; the
training loop is the episodic one of ``tasks/fewshot.py`` (it reuses the engine's checkpoint and schedule pieces).
"""

from __future__ import annotations

import argparse

__all__ = ["add_train_args", "add_eval_args", "add_predict_args", "run_train", "run_eval", "run_predict"]


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def add_train_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("few-shot segmentation (--task fewshot; --data mni152 or a NIfTI directory)")
    g.add_argument("--steps", type=int, help="fewshot: optimizer steps (default 1000)")
    g.add_argument("--shots", type=int, help="fewshot: support images per episode, K (default 1)")
    g.add_argument("--train-classes", type=_names, metavar="A,B", help="fewshot: classes to train on")
    g.add_argument("--test-classes", type=_names, metavar="C", help="fewshot: held-out classes to evaluate")
    g.add_argument("--fold", type=int, help="fewshot: which fifth of a directory's volumes is the test split")
    g.add_argument("--n-part", type=int, help="fewshot: support chunks per volume in evaluation (default 3)")
    g.add_argument("--support-volume", type=int, help="fewshot: index of the support volume in the test split")
    g.add_argument("--eval-every", type=int, metavar="STEPS", help="fewshot: evaluate and checkpoint every N steps")
    g.add_argument("--warmup-steps", type=int, help="fewshot: linear warm-up steps (default 50)")
    g.add_argument("--bg-weight", type=float, help="fewshot: background weight of the loss (default 0.1)")
    g.add_argument("--backbone-weights", metavar="PTH", help="fewshot: torchvision ResNet checkpoint for the backbone")
    g.add_argument("--self-supervised", action="store_true", default=None,
                   help="fewshot: train on supervoxel_<id>.nii.gz pseudo-labels (SSL-ALPNet) instead of the classes")


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("few-shot segmentation (--task fewshot)")
    g.add_argument("--test-classes", type=_names, metavar="C", help="fewshot: classes to evaluate (default: the "
                                                                     "run's held-out classes)")
    g.add_argument("--shots", type=int, help="fewshot: support slices per chunk (default: the run's)")
    g.add_argument("--n-part", type=int, help="fewshot: support chunks per volume (default: the run's)")
    g.add_argument("--support-volume", type=int, help="fewshot: support volume index in the test split")
    g.add_argument("--fold", type=int, help="fewshot: test fold of a directory (default: the run's)")


def add_predict_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("few-shot segmentation (--task fewshot)")
    g.add_argument("--support", nargs=2, action="append", metavar=("IMAGE", "MASK"),
                   help="fewshot: a support image and its binary mask (repeat for K shots)")
    g.add_argument("--query", metavar="IMAGE", help="fewshot: the image to segment")
    g.add_argument("--out", "-o", metavar="DIR", help="fewshot: folder for mask.png and overlay.png (default .)")


def run_train(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from ..checkpoint import latest_checkpoint
    from ..tasks.fewshot import FewShotConfig, train_fewshot
    from ._common import parse_overrides

    if getattr(args, "resume", None):
        raise ValueError("--resume is not supported for --task fewshot yet; start a new run (episodes are seeded "
                         "per step, so a rerun with the same settings repeats the same training)")
    fields = {f.name for f in dataclasses.fields(FewShotConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None and k != "model_overrides"}
    given.setdefault("model", "catnet_r50")
    given.setdefault("data", "mni152")
    cfg = FewShotConfig(**given, model_overrides=parse_overrides(args.overrides))
    if not args.out:
        cfg = dataclasses.replace(cfg, out=f"runs/{cfg.model}-{Path(cfg.data).name or 'data'}")
    if latest_checkpoint(cfg.out) is not None:
        raise ValueError(f"{cfg.out} already holds a training run; pick another --out")
    train_fewshot(cfg)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import load_model, resolve_model_file, write_json_atomic
    from ..tasks.fewshot import evaluate_fewshot, load_fewshot_data
    from ._common import apply_runtime

    device = apply_runtime(args)
    model, meta = load_model(args.checkpoint, model_name=args.model)
    if meta.get("task") != "fewshot":
        raise ValueError(f"{args.checkpoint} is not a few-shot checkpoint (task {meta.get('task', 'unknown')!r})")
    saved = meta.get("data", {})
    source = args.data or saved.get("source")
    test_classes = list(args.test_classes or meta.get("test_classes") or [])
    data = load_fewshot_data(source, img_size=meta.get("img_size"), train_classes=meta.get("train_classes"),
                             test_classes=test_classes or None,
                             fold=args.fold if args.fold is not None else saved.get("fold", 0))
    shots = args.shots or meta.get("shots", 1)
    n_part = args.n_part or meta.get("n_part", 3)
    support = args.support_volume if args.support_volume is not None else meta.get("support_volume", 0)
    result = evaluate_fewshot(model.to(device), data.test, data.classes, data.test_classes, support_volume=support,
                              n_part=n_part, shots=shots, batch_size=args.batch_size, device=device)
    weights, _ = resolve_model_file(args.checkpoint)
    out = Path(args.out) if args.out else weights.parent
    write_json_atomic(out / "eval.json", {"checkpoint": str(weights), "model": meta.get("model"), "data": source,
                                          "shots": shots, "n_part": n_part, "support_volume": support, **result})
    print("Dice: " + ", ".join(f"{n} {result[f'dice_{n}']:.4f}" for n in data.test_classes)
          + f"  (mean {result['mean_dice']:.4f}; {shots}-shot, {n_part} chunks, {source})")
    print(f"wrote {out / 'eval.json'}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..checkpoint import load_model
    from ..tasks.fewshot import predict_files
    from ._common import apply_runtime

    if not args.support or not args.query:
        raise ValueError("--task fewshot needs --support IMAGE MASK (repeatable) and --query IMAGE")
    if args.images:
        raise ValueError(f"--task fewshot takes --query IMAGE, not positional images ({args.images[0]})")
    device = apply_runtime(args)
    model, meta = load_model(args.checkpoint, model_name=args.model)
    if getattr(type(model), "task", None) != "fewshot":
        raise ValueError(f"{args.checkpoint} holds a {type(model).__name__}, not a few-shot model")
    written = predict_files(model.to(device), [tuple(s) for s in args.support], args.query, Path(args.out or "."),
                            img_size=meta.get("img_size"), device=device)
    print(f"foreground {written['foreground_fraction'] * 100:.1f}% of the query; wrote {written['mask']} and "
          f"{written['overlay']}")
    return 0
