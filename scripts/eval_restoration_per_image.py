"""Per-image metrics of a restoration run on its recorded evaluation images: the model (whole images and, with
``--tile``, tiled inference) next to the degradation's baseline.

    PYTHONPATH=src python scripts/eval_restoration_per_image.py runs/grl-jpeg --tile 64
"""

from __future__ import annotations

import argparse

import torch

from visattn.checkpoint import load_model
from visattn.tasks import get_task, options_from_dict
from visattn.tasks.base import EvalContext
from visattn.tasks.restoration.data import EvalImages


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--tile", type=int, default=0,
                   help="also evaluate with tiles of this side, overlap 16 as the evaluation's (0: no)")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, meta = load_model(args.run)
    cls = get_task(meta["task"])
    options = options_from_dict(cls.Options, meta.get("task_options", {}))
    task = cls.for_evaluation(meta, options)
    b = task.degradation.baseline_name
    names = list(task.degradation.metrics())
    items, prepare = list(task.val_set.items), task.prepare_eval
    for i, (name, clean, _) in enumerate(items):
        # image i alone, degraded with its own evaluation seed
        task.prepare_eval = lambda c, g, _index, i=i: prepare(c, g, i)
        ctx = EvalContext(dataset=EvalImages([items[i]]))
        task.eval_tile = 0
        whole = task.evaluate(model, ctx)
        row = [f"{name} {clean.shape[-1]}x{clean.shape[-2]}"]
        row += [f"{m} {whole[f'val_{m}']:.4f} ({b} {whole[f'val_{b}_{m}']:.4f})" for m in names]
        if args.tile:
            task.eval_tile = args.tile
            tiled = task.evaluate(model, ctx)
            row += [f"tiled {m} {tiled[f'val_{m}']:.4f}" for m in names]
        print("  ".join(row))


if __name__ == "__main__":
    main()
