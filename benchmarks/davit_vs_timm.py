"""Side-by-side inference speed of visattn DaViT and timm DaViT, same weights, one process.

Run in the reference environment (timm installed; visattn is imported from this checkout's ``src``):

    REF/bin/python benchmarks/davit_vs_timm.py [--model davit_tiny] [--batch 8] [--size 224] [--threads 2]

Both models get timm's randomly initialised weights; the script first checks that their logits agree, then times
one forward pass of each in alternation (so drifting machine load hits both alike) and prints the median images
per second of each and the ratio visattn / timm (> 1: visattn is faster). fp32, eval mode, no autograd.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import timm  # noqa: E402

import visattn  # noqa: E402


def _time_once(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="davit_tiny", help="a davit_* name known to both libraries")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = timm.create_model(args.model).eval()
    ours = visattn.create_model(args.model).eval()
    visattn.load_pretrained(ours, reference.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size)

    with torch.inference_mode():
        diff = (ours(x) - reference(x)).abs().max().item()
        print(f"{args.model}: max |logits difference| with the same weights = {diff:.2e}")
        if diff > 1e-3:
            raise SystemExit("outputs disagree; refusing to compare speeds")
        for _ in range(args.warmup):
            _time_once(reference, x)
            _time_once(ours, x)
        times: dict[str, list[float]] = {"timm": [], "visattn": []}
        for i in range(args.rounds):
            order = [("timm", reference), ("visattn", ours)]
            if i % 2:
                order.reverse()
            for name, model in order:
                times[name].append(_time_once(model, x))

    rate = {name: args.batch / statistics.median(t) for name, t in times.items()}
    print(f"fp32 eval, batch {args.batch} at {args.size}x{args.size}, {args.threads} threads, "
          f"{args.rounds} alternating rounds, torch {torch.__version__}, timm {timm.__version__}")
    for name in ("timm", "visattn"):
        print(f"  {name:8s} {rate[name]:8.2f} img/s  (median {statistics.median(times[name]) * 1e3:.1f} ms, "
              f"min {min(times[name]) * 1e3:.1f} ms)")
    print(f"ratio visattn / timm = {rate['visattn'] / rate['timm']:.3f}")


if __name__ == "__main__":
    main()
