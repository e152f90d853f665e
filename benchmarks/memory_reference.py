"""What this machine does to memory-bound work as a map grows: the per-pixel reference for the attention sweeps.

An attention module with linear FLOPs still runs elementwise ops, permutes (window partitions) and small
matmuls whose speed is set by memory traffic, and a (1, H, W, 64) fp32 map is 12.8 MB at 224 x 224 (about the size
of a server CPU's last-level cache) but 205 MB at 896 x 896. This script times three such ops on those maps - an
add into a fresh tensor, the same add into a preallocated one, and a permuted copy (what a window partition does) -
and prints milliseconds per 224 x 224 pixels and the ratio to 224. Any per-pixel growth here is the machine's
memory hierarchy, not an algorithm's cost.

    .venv/bin/python benchmarks/memory_reference.py [--threads 2] [--dim 64] [--sizes 224,448,896]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], iters: int) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sizes", default="224,448,896")
    parser.add_argument("--iters", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, (1, H, W, {args.dim}) fp32 maps; "
          f"ms per 224 x 224 pixels (ratio to {sizes[0]})")
    print("| op | " + " | ".join(f"{s} x {s}" for s in sizes) + " |")
    print("| --- |" + " --- |" * len(sizes))
    rows: dict[str, list[float]] = {"add, fresh output": [], "add, preallocated output": [],
                                    "permuted copy (H <-> W)": []}
    for size in sizes:
        x = torch.randn(1, size, size, args.dim)
        out = torch.empty_like(x)
        per = (size * size) / 224**2
        rows["add, fresh output"].append(median_ms(lambda: x + 1, args.iters) / per)
        rows["add, preallocated output"].append(median_ms(lambda: torch.add(x, 1, out=out), args.iters) / per)
        rows["permuted copy (H <-> W)"].append(median_ms(lambda: x.transpose(1, 2).contiguous(), args.iters) / per)
    for name, values in rows.items():
        cells = [f"{v:.2f} ({v / values[0]:.2f})" for v in values]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
