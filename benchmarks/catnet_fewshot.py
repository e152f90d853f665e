"""CAT-Net vs the prototype-only baseline on the built-in MNI152 few-shot task, trained and evaluated side by side.

    .venv/bin/python benchmarks/catnet_fewshot.py                     # 5 epochs x 100 steps of 4 episodes each
    .venv/bin/python benchmarks/catnet_fewshot.py --epochs 10 --threads 2

Both models go through the shared training loop (``visattn.train.train`` with ``task="fewshot"``) with the same
small ResNet (``SMALL`` below), the same seeded episodes (4 per step, 1-shot, classes white_matter / cortex /
cerebellum / ventricles on training volumes 1-4), the same optimiser and schedule (the task's defaults: AdamW,
lr 1e-3, half an epoch of warm-up, cosine) and the same SSL-ALPNet evaluation (3 chunks, support volume 0, query
volumes 5-7). The baseline is ``prototype_only=True``: masked average pooling of the support features + cosine
similarity with a regressed threshold, no MIFE fusion and no attention. Prints both held-out Dice numbers and
writes ``benchmarks/results/catnet_fewshot.csv`` (appended, one pair of rows per run).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from visattn.tasks.fewshot.task import FewShotTask  # noqa: E402
from visattn.train import TrainConfig, train  # noqa: E402

# The small ResNet of the main job: bottleneck stages of 1 block, widths 16-128, 64-d features, 4 CMAT modules.
SMALL = {"depths": (1, 1, 1, 1), "widths": (16, 32, 64, 128), "stem_width": 16, "dim": 64, "num_heads": 4,
         "mlp_ratio": 4.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--episodes-per-epoch", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/catnet_fewshot_bench")
    args = parser.parse_args()
    rows, test_classes = [], []
    for name, extra in (("catnet", {}), ("prototype_only", {"prototype_only": True})):
        cfg = TrainConfig(**{**FewShotTask.defaults, "epochs": args.epochs}, task="fewshot",
                          task_options={"episodes_per_epoch": args.episodes_per_epoch},
                          model_overrides={**SMALL, **extra}, seed=args.seed, threads=args.threads, log_every=50,
                          progress=False, out=f"{args.out}/{name}")
        start = time.perf_counter()
        result = train(cfg)
        test_classes = [k[len("val_dice_"):] for k in result if k.startswith("val_dice_")]
        rows.append({"model": name, "steps": result["step"], "seed": args.seed,
                     **{f"dice_{c}": round(result[f"val_dice_{c}"], 4) for c in test_classes},
                     "mean_dice": round(result["val_mean_dice"], 4),
                     "train_time_s": round(time.perf_counter() - start, 1)})
    print(f"\nheld-out {', '.join(test_classes)} Dice after {rows[0]['steps']} steps (seed {args.seed}):")
    for r in rows:
        print(f"  {r['model']:>15}: {r['mean_dice']:.4f}  ({r['train_time_s']:.0f} s)")
    print(f"  CAT-Net / baseline: {rows[0]['mean_dice'] / max(rows[1]['mean_dice'], 1e-9):.2f}x")
    out = Path(__file__).resolve().parent / "results" / "catnet_fewshot.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, "a", newline="") as f:                             # one pair of rows per run (seed)
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
