"""Where the time of one inference pass goes, visattn beside timm: CPU op time grouped into kinds.

Runs in the reference environment (timm importable; visattn imported from this checkout's src/):

    REF/bin/python benchmarks/profile_timm.py                       # fp32 eval, batch 8 at 224, 1 thread
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 REF/bin/python benchmarks/profile_timm.py

Both models of each pair (``compare_timm.PAIRS``, the same weights) run one warm-up pass, then ``--passes`` profiled
passes (torch.profiler, CPU); every op's self time is put into one kind (GEMM, convolution, attention kernel, norm,
copy / layout, elementwise, other) and printed as ms per pass and share of the pass, with the pass's GEMM FLOPs over
the time the GEMM kinds took (the rate the matmuls themselves reach). One thread by default: profiles attribute time
steadily even when other processes share the cores; ratios of totals are the profile's, not a timing benchmark's.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_timm import PAIRS, build
from visattn import machine
from visattn.bench import count_flops

KINDS = {
    "GEMM (linear / matmul)": ("linear", "addmm", "aten::mm", "bmm", "matmul", "baddbmm"),
    "convolution": ("convolution", "conv"),
    "attention kernel": ("scaled_dot_product", "flash_attention", "softmax"),
    "norm": ("layer_norm", "batch_norm", "group_norm"),
    "copy / layout": ("copy_", "cat", "clone", "contiguous", "constant_pad", "index", "roll", "fill_", "zero_"),
    "elementwise": ("add", "mul", "gelu", "silu", "sigmoid", "tanh", "div", "sub", "mean", "sum", "relu"),
}


def kind_of(name: str) -> str:
    for kind, keys in KINDS.items():
        if any(k in name for k in keys):
            return kind
    return "other"


def profile(model: torch.nn.Module, x: torch.Tensor, passes: int) -> dict[str, float]:
    """Self CPU ms per pass by kind (leaf ops only: an op's self time counts once)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model.eval()
    with torch.inference_mode():
        model(x)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(passes):
                model(x)
    out: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        out[kind_of(event.key)] += event.self_cpu_time_total / 1e3 / passes
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAIRS), help=f"comma-separated subset of {list(PAIRS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine.describe())
    print(f"{torch.get_num_threads()} thread(s); fp32 eval, batch {args.batch} at {args.size}; self CPU time per pass "
          f"by op kind, {args.passes} profiled passes after one warm-up")
    x = torch.randn(args.batch, 3, args.size, args.size)
    kinds = [*KINDS, "other"]
    for name in args.models.split(","):
        ours, theirs = build(name, PAIRS[name])
        with torch.device("meta"):
            from visattn import create_model

            meta_model = create_model(name)
        flops = count_flops(lambda m=meta_model: m(torch.empty(args.batch, 3, args.size, args.size, device="meta")))
        res = {"timm": profile(theirs, x, args.passes), "visattn": profile(ours, x, args.passes)}
        totals = {k: sum(v.values()) for k, v in res.items()}
        print(f"\n{name} (timm {PAIRS[name]}): {flops / 1e9:.1f} GFLOPs per pass; total ms per pass: timm "
              f"{totals['timm']:.0f}, visattn {totals['visattn']:.0f} (timm / visattn {totals['timm'] / totals['visattn']:.2f})")
        print("| kind | timm ms | timm share | visattn ms | visattn share |")
        print("| --- | --- | --- | --- | --- |")
        for kind in kinds:
            t, o = res["timm"].get(kind, 0.0), res["visattn"].get(kind, 0.0)
            print(f"| {kind} | {t:.0f} | {t / totals['timm']:.0%} | {o:.0f} | {o / totals['visattn']:.0%} |")
        for key in res:
            gemm = res[key].get("GEMM (linear / matmul)", 0.0)
            print(f"{key}: whole pass {flops / totals[key] / 1e6:.0f} GFLOP/s of all FLOPs; the GEMM kind takes "
                  f"{gemm / totals[key]:.0%} of the time")


if __name__ == "__main__":
    main()
