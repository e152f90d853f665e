"""CAT-Net vs the prototype-only baseline on the built-in MNI152 few-shot task, trained and evaluated side by side.

    .venv/bin/python benchmarks/catnet_fewshot.py                     # 400 steps each, held-out deep_grey_matter
    .venv/bin/python benchmarks/catnet_fewshot.py --steps 1000 --threads 2

Both models use the same small ResNet (``--set``-style overrides below), the same seeded episodes (4 per step,
1-shot, classes white_matter / cortex / cerebellum / ventricles on training volumes 1-4), the same optimiser and
schedule, and the same SSL-ALPNet evaluation (3 chunks, support volume 0, query volumes 5-7). The baseline is
``prototype_only=True``: masked average pooling of the support features + cosine similarity with a regressed
threshold, no MIFE fusion and no attention. Prints both held-out Dice numbers and writes
``benchmarks/results/catnet_fewshot.csv`` (appended, one pair of rows per run).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from visattn.tasks.fewshot import FewShotConfig, load_fewshot_data, train_fewshot  # noqa: E402

# The small ResNet of the main job: bottleneck stages of 1 block, widths 16-128, 64-d features, 4 CMAT modules.
SMALL = {"depths": (1, 1, 1, 1), "widths": (16, 32, 64, 128), "stem_width": 16, "dim": 64, "num_heads": 4,
         "mlp_ratio": 4.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/catnet_fewshot_bench")
    args = parser.parse_args()
    data = load_fewshot_data("mni152")
    rows = []
    for name, extra in (("catnet", {}), ("prototype_only", {"prototype_only": True})):
        cfg = FewShotConfig(model="catnet_r50", model_overrides={**SMALL, **extra}, steps=args.steps, batch_size=4,
                            seed=args.seed, threads=args.threads, log_every=50, out=f"{args.out}/{name}")
        summary = train_fewshot(cfg, data=data)
        rows.append({"model": name, "steps": args.steps, "seed": args.seed,
                     **{k: round(v, 4) for k, v in summary.items() if k.startswith("dice_") or k == "mean_dice"},
                     "train_time_s": round(summary["train_time_s"], 1)})
    print(f"\nheld-out {', '.join(data.test_classes)} Dice after {args.steps} steps (seed {args.seed}):")
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
