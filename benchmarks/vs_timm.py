"""visattn vs timm, side by side in one process: same weights, same input, outputs compared, then timed alternately.

Runs in the reference environment (timm installed; visattn imported from this checkout's src/):

    REF/bin/python benchmarks/vs_timm.py                      # maxvit_tiny vs maxvit_tiny_tf_224
    REF/bin/python benchmarks/vs_timm.py --pair davit_tiny=davit_tiny --batch 8 --size 224 --threads 2

For each pair it loads timm's random-initialised weights into the visattn model with ``visattn.load_pretrained``,
checks the logits agree (max abs difference printed), then runs ``--rounds`` rounds, each timing ``--iters``
forward passes of timm and of visattn back to back, and prints the median img/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import visattn  # noqa: E402

DEFAULT_PAIRS = ["maxvit_tiny=maxvit_tiny_tf_224"]


CLOCK = time.perf_counter


def _time(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    start = CLOCK()
    for _ in range(iters):
        model(x)
    return CLOCK() - start


def compare(ours_name: str, timm_name: str, args: argparse.Namespace) -> dict[str, float]:
    import timm

    torch.manual_seed(0)
    theirs = timm.create_model(timm_name, pretrained=False, num_classes=1000).eval()
    ours = visattn.create_model(ours_name).eval()
    visattn.load_pretrained(ours, theirs.state_dict())
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.inference_mode():
        diff = (ours(x) - theirs(x)).abs().max().item()
        for m in (theirs, ours):  # warm-up
            _time(m, x, 2)
        t_theirs, t_ours = [], []
        for _ in range(args.rounds):
            t_theirs.append(_time(theirs, x, args.iters))
            t_ours.append(_time(ours, x, args.iters))
    n = args.batch * args.iters
    ips_theirs = n / statistics.median(t_theirs)
    ips_ours = n / statistics.median(t_ours)
    return {"max_abs_diff": diff, "timm_img_s": ips_theirs, "visattn_img_s": ips_ours, "ratio": ips_ours / ips_theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", action="append", help="visattn_name=timm_name (repeatable)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: process CPU time, steadier on a shared machine (use with --threads 1)")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, fp32 eval, batch {args.batch} at {args.size}, "
          f"{args.clock} clock")
    print(f"{'visattn':<16}{'timm':<24}{'max|diff|':>10}{'timm img/s':>12}{'ours img/s':>12}{'ratio':>8}")
    for pair in args.pair or DEFAULT_PAIRS:
        ours_name, timm_name = pair.split("=")
        r = compare(ours_name, timm_name, args)
        print(f"{ours_name:<16}{timm_name:<24}{r['max_abs_diff']:>10.2e}{r['timm_img_s']:>12.2f}"
              f"{r['visattn_img_s']:>12.2f}{r['ratio']:>8.2f}")


if __name__ == "__main__":
    main()
