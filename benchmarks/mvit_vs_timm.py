"""Inference speed of visattn MViTv2 against timm's, same weights, timed in alternation in one process.

Run in the reference environment (timm installed; visattn comes from this checkout's ``src``):

    REF/bin/python benchmarks/mvit_vs_timm.py [--model mvitv2_tiny] [--batch 8] [--size 224] [--threads 2]

timm's randomly initialised weights are loaded into the visattn model; the logits must agree before anything is
timed. Each round runs one forward pass of each model, in alternating order, so load changes on a shared machine
hit both alike. Prints the median images per second of each and the ratio visattn / timm (> 1: visattn faster).
fp32, eval mode, ``torch.inference_mode``.
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


def _seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mvitv2_tiny", help="an mvitv2_* name known to both libraries")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    reference = timm.create_model(args.model, img_size=args.size).eval()
    # timm's class-token models add the pooled query to the class token; reproduce that for the comparison.
    extra = {"residual_pool_cls": True} if args.model.endswith("_cls") else {}
    ours = visattn.create_model(args.model, img_size=(args.size, args.size),
                                num_classes=reference.num_classes, **extra).eval()
    visattn.load_pretrained(ours, reference.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size)

    with torch.inference_mode():
        diff = (ours(x) - reference(x)).abs().max().item()
        print(f"{args.model}: max |logits difference| with the same weights = {diff:.2e}")
        if diff > 1e-3:
            raise SystemExit("outputs disagree; refusing to compare speeds")
        for _ in range(args.warmup):
            _seconds(reference, x)
            _seconds(ours, x)
        times: dict[str, list[float]] = {"timm": [], "visattn": []}
        for i in range(args.rounds):
            pair = [("timm", reference), ("visattn", ours)]
            for name, model in (pair if i % 2 == 0 else pair[::-1]):
                times[name].append(_seconds(model, x))

    rate = {name: args.batch / statistics.median(t) for name, t in times.items()}
    print(f"fp32 eval, batch {args.batch} at {args.size}x{args.size}, {args.threads} threads, {args.rounds} "
          f"alternating rounds, torch {torch.__version__}, timm {timm.__version__}")
    for name in ("timm", "visattn"):
        print(f"  {name:8s} {rate[name]:8.2f} img/s  (median {statistics.median(times[name]) * 1e3:.1f} ms, "
              f"min {min(times[name]) * 1e3:.1f} ms)")
    print(f"ratio visattn / timm = {rate['visattn'] / rate['timm']:.3f}")


if __name__ == "__main__":
    main()
