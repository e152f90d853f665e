"""visattn vs timm on every model they share: speed, fraction of the FLOP-bound limit, training step, memory, compile.

Runs in the reference environment (timm importable; visattn imported from this checkout's src/):

    REF/bin/python benchmarks/compare_timm.py                          # inference table, fp32, batch 8, 2 threads
    REF/bin/python benchmarks/compare_timm.py --train --compile        # + training step (fp32, bf16) + compile
    REF/bin/python benchmarks/compare_timm.py --threads 1 --batch 4    # steadier on a shared machine

Everything is measured side by side in one process on the same weights (timm's random init loaded into visattn with
``load_pretrained``; logits compared first):

* inference: ``--rounds`` rounds, each timing ``--iters`` forward passes of timm then of visattn; the medians give
  img/s under both the wall clock and the process CPU clock (the CPU clock is steadier when other processes share the
  cores; at 1 thread it is the fairest number).
* FLOP-bound limit: the fp32 GEMM rate of this machine at these threads (1024^3 matmuls timed inside the same
  alternating rounds, so under the same load), divided by the model's FLOPs (``visattn.bench.count_flops``);
  "of limit" is img/s over that bound.
* training step (``--train``): forward + cross-entropy + backward + AdamW step, fp32 and bf16 autocast, median time
  and peak memory of live tensors (``visattn.bench.peak_memory``; CPU has no allocator statistics).
* compile (``--compile``): ``torch.compile`` of both models, inference img/s compiled and eager, and compile time
  (the wall time of the first call of each compiled model: tracing, inductor's code generation and one pass).
* ``--out BASE``: the tables also as ``compare_timm_<inference|training|compile>.csv`` and ``.png`` (bar charts) and
  ``compare_timm.md`` (command, machine, tables) in ``BASE/<machine type>/`` (``visattn.machine.machine_slug``).
* allocator (``--keep-freed-memory``): glibc keeps freed large buffers for reuse (``visattn.allocator``), for both
  models alike since they share the process; off by default, as in a plain Python process.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import visattn
from visattn.bench import count_flops, peak_memory

PAIRS = {
    "maxvit_tiny": "maxvit_tiny_tf_224",
    "davit_tiny": "davit_tiny",
    "mvitv2_tiny": "mvitv2_tiny",
}


def _clocks(fn: Callable[[], object], iters: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``iters`` calls."""
    w, c = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    return time.perf_counter() - w, time.process_time() - c


def alternate(fns: dict[str, Callable[[], object]], rounds: int, iters: int) -> dict[str, tuple[float, float]]:
    """Median (wall, cpu) seconds per call of each function, timed in alternating rounds after one warm-up call."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            samples[key].append(_clocks(fn, iters))
    return {k: (statistics.median(s[0] for s in v) / iters, statistics.median(s[1] for s in v) / iters)
            for k, v in samples.items()}


def build(ours_name: str, timm_name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    import timm

    torch.manual_seed(0)
    theirs = timm.create_model(timm_name, pretrained=False, num_classes=1000)
    ours = visattn.create_model(ours_name)
    visattn.load_pretrained(ours, theirs.state_dict())
    return ours, theirs


def inference(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict:
    ours.eval()
    theirs.eval()
    with torch.inference_mode():
        diff = (ours(x) - theirs(x)).abs().max().item()
        # The GEMM that sets the FLOP-bound limit is timed inside the same rounds, under the same load.
        a, b, c = torch.randn(1024, 1024), torch.randn(1024, 1024), torch.empty(1024, 1024)
        t = alternate({"timm": lambda: theirs(x), "ours": lambda: ours(x),
                       "gemm": lambda: [torch.mm(a, b, out=c) for _ in range(8)]}, args.rounds, args.iters)
    out = {f"{k}_{c}": x.shape[0] / t[k][i] for k in ("timm", "ours") for i, c in enumerate(("wall", "cpu"))}
    return {"diff": diff, "gemm_gflops": 8 * 2 * 1024**3 / t["gemm"][0] / 1e9, **out}


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               dtype: torch.dtype | None) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def training(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict:
    y = torch.randint(0, 1000, (x.shape[0],))
    out = {}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        fns = {}
        # copies: the steps change weights and BatchNorm statistics (momentum 0.1 in timm, 0.01 in visattn), which
        # would leave the models no longer equal for the comparisons that follow
        for key, model in (("timm", copy.deepcopy(theirs)), ("ours", copy.deepcopy(ours))):
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            fns[key] = lambda m=model, o=opt, d=dtype: train_step(m, o, x, y, d)
        t = alternate(fns, args.train_rounds, 1)
        mem = {k: peak_memory(fn, x.device) for k, fn in fns.items()}
        out[label] = {"timm_s": t["timm"][0], "ours_s": t["ours"][0], "timm_cpu": t["timm"][1],
                      "ours_cpu": t["ours"][1], "timm_mib": mem["timm"], "ours_mib": mem["ours"]}
    return out


def compiled(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor, args: argparse.Namespace) -> dict:
    ours.eval()
    theirs.eval()
    fns = {"timm": theirs, "ours": ours,
           "timm_c": torch.compile(theirs), "ours_c": torch.compile(ours, fullgraph=args.fullgraph)}
    first: dict[str, float] = {}
    with torch.inference_mode():
        for key, fn in fns.items():  # compile (and warm up) outside the timed rounds; the first call's wall time
            start = time.perf_counter()  # of a compiled model is its compile time (plus one pass)
            fn(x)
            first[key] = time.perf_counter() - start
        diff = (fns["ours_c"](x) - fns["timm"](x)).abs().max().item()
        t = alternate({k: (lambda f=f: f(x)) for k, f in fns.items()}, args.rounds, args.iters)
    return {"diff": diff, "timm_compile_s": first["timm_c"], "ours_compile_s": first["ours_c"],
            **{k: x.shape[0] / v[0] for k, v in t.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAIRS), help=f"comma-separated subset of {list(PAIRS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=2, help="forward passes per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="also time a training step (fp32 and bf16 autocast)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also compare torch.compile'd models")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="raise glibc's mmap/trim thresholds first (visattn.allocator; applies to both models)")
    parser.add_argument("--fullgraph", action=argparse.BooleanOptionalAction, default=True,
                        help="compile visattn with fullgraph=True (any graph break is an error; default on)")
    parser.add_argument("--out", default=None, help="also write the tables as CSV, PNG and Markdown into "
                        "OUT/<machine type>/ (visattn.machine.machine_slug), e.g. --out benchmarks/results")
    args = parser.parse_args()
    import timm

    if args.keep_freed_memory:
        from visattn.allocator import keep_freed_memory

        print(f"allocator: glibc keeps freed large buffers: {keep_freed_memory()}")
    torch.set_num_threads(args.threads)
    from visattn.allocator import keeping_freed_memory
    from visattn.machine import describe

    allocator = ("allocator: glibc keeps freed large buffers (both models)" if keeping_freed_memory()
                 else "allocator: glibc defaults (both models)")
    setup = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads; "
             f"torch {torch.__version__}, timm {timm.__version__}; GEMM rate: 1024^3 fp32 matmuls timed in the same "
             "rounds")
    header = [describe(), allocator, setup]
    print("\n".join(header))
    names = [n for n in args.models.split(",") if n]
    models = {n: build(n, PAIRS[n]) for n in names}
    x = torch.randn(args.batch, 3, args.size, args.size)
    tables: dict[str, list[str]] = {}  # section -> its printed lines (title and Markdown table), for --out
    rows: dict[str, list[dict]] = {}  # section -> one dict per table row, for --out

    def show(section: str, line: str) -> None:
        print(line, flush=True)
        tables.setdefault(section, []).append(line.lstrip("\n"))

    show("inference", f"\nInference, fp32 eval, batch {args.batch} at {args.size}, {args.rounds} alternating rounds of "
         f"{args.iters} passes (img/s; ratio = visattn / timm)")
    show("inference", "| model | max abs diff | timm img/s | visattn img/s | ratio (wall) | ratio (CPU time) | "
         "FLOP-bound img/s | visattn of limit | timm of limit | GEMM GFLOP/s |")
    show("inference", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (ours, theirs) in models.items():
        with torch.device("meta"):
            meta_model = visattn.create_model(name)
        flops = count_flops(lambda m=meta_model: m(torch.empty(1, 3, args.size, args.size, device="meta")))
        r = inference(ours, theirs, x, args)
        limit = r["gemm_gflops"] * 1e9 / flops
        show("inference", f"| {name} | {r['diff']:.1e} | {r['timm_wall']:.2f} | {r['ours_wall']:.2f} | "
             f"{r['ours_wall'] / r['timm_wall']:.2f} | {r['ours_cpu'] / r['timm_cpu']:.2f} | {limit:.2f} | "
             f"{r['ours_wall'] / limit:.0%} | {r['timm_wall'] / limit:.0%} | {r['gemm_gflops']:.0f} |")
        rows.setdefault("inference", []).append(
            {"model": name, "timm_model": PAIRS[name], "batch": args.batch, "size": args.size,
             "max_abs_diff": r["diff"], "timm_img_s": r["timm_wall"], "visattn_img_s": r["ours_wall"],
             "timm_img_s_cpu": r["timm_cpu"], "visattn_img_s_cpu": r["ours_cpu"],
             "ratio_wall": r["ours_wall"] / r["timm_wall"], "ratio_cpu": r["ours_cpu"] / r["timm_cpu"],
             "flop_bound_img_s": limit, "gemm_gflops": r["gemm_gflops"]})

    if args.train:
        xt = x[: args.train_batch] if args.train_batch <= args.batch else torch.randn(args.train_batch, 3, args.size,
                                                                                       args.size)
        show("training", f"\nTraining step (forward + backward + AdamW), batch {xt.shape[0]} at {args.size}; time "
             "ratio = timm s / visattn s (>1: visattn faster), memory ratio = visattn MiB / timm MiB (<1: visattn "
             "smaller)")
        show("training", "| model | dtype | timm s/step | visattn s/step | time ratio (wall) | time ratio (CPU) | "
             "timm peak MiB | visattn peak MiB | memory ratio |")
        show("training", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, (ours, theirs) in models.items():
            for label, r in training(ours, theirs, xt, args).items():
                show("training", f"| {name} | {label} | {r['timm_s']:.2f} | {r['ours_s']:.2f} | "
                     f"{r['timm_s'] / r['ours_s']:.2f} | {r['timm_cpu'] / r['ours_cpu']:.2f} | {r['timm_mib']:.0f} | "
                     f"{r['ours_mib']:.0f} | {r['ours_mib'] / r['timm_mib']:.2f} |")
                rows.setdefault("training", []).append(
                    {"model": name, "dtype": label, "label": f"{name} {label}", "batch": xt.shape[0],
                     "timm_s": r["timm_s"], "visattn_s": r["ours_s"], "timm_cpu_s": r["timm_cpu"],
                     "visattn_cpu_s": r["ours_cpu"], "time_ratio_wall": r["timm_s"] / r["ours_s"],
                     "time_ratio_cpu": r["timm_cpu"] / r["ours_cpu"], "timm_peak_mib": r["timm_mib"],
                     "visattn_peak_mib": r["ours_mib"], "memory_ratio": r["ours_mib"] / r["timm_mib"]})

    if args.compile:
        show("compile", f"\ntorch.compile, fp32 eval, batch {args.batch} at {args.size} (img/s)")
        show("compile", "| model | max abs diff (compiled) | timm eager | timm compiled | visattn eager | visattn "
             "compiled | visattn compiled / eager | visattn / timm (compiled) | compile s timm | compile s visattn |")
        show("compile", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for name, (ours, theirs) in models.items():
            r = compiled(ours, theirs, x, args)
            show("compile", f"| {name} | {r['diff']:.1e} | {r['timm']:.2f} | {r['timm_c']:.2f} | {r['ours']:.2f} | "
                 f"{r['ours_c']:.2f} | {r['ours_c'] / r['ours']:.2f} | {r['ours_c'] / r['timm_c']:.2f} | "
                 f"{r['timm_compile_s']:.1f} | {r['ours_compile_s']:.1f} |")
            rows.setdefault("compile", []).append(
                {"model": name, "batch": args.batch, "max_abs_diff_compiled": r["diff"], "timm_eager_img_s": r["timm"],
                 "timm_compiled_img_s": r["timm_c"], "visattn_eager_img_s": r["ours"],
                 "visattn_compiled_img_s": r["ours_c"], "visattn_compiled_vs_eager": r["ours_c"] / r["ours"],
                 "visattn_vs_timm_compiled": r["ours_c"] / r["timm_c"], "timm_compile_s": r["timm_compile_s"],
                 "visattn_compile_s": r["ours_compile_s"]})

    if args.out:
        write_results(args, header, tables, rows)


def write_results(args: argparse.Namespace, header: list[str], tables: dict[str, list[str]],
                  rows: dict[str, list[dict]]) -> None:
    """``compare_timm_<section>.csv`` / ``.png`` per table and ``compare_timm.md`` with all of them, into
    ``args.out/<machine type>/``."""
    from _results import bar_chart, results_dir, write_csv, write_markdown

    out = results_dir(args.out)
    both = {"timm": "timm", "visattn": "visattn"}
    charts = {
        "inference": ("model", [(f"fp32 eval, batch {args.batch} (higher is better)", "img/s",
                                 {f"{k}_img_s": v for k, v in both.items()})]),
        "training": ("label", [("training step (lower is better)", "s / step",
                                {f"{k}_s": v for k, v in both.items()}),
                               ("peak memory of live tensors", "MiB", {f"{k}_peak_mib": v for k, v in both.items()})]),
        "compile": ("model", [(f"fp32 eval, batch {args.batch} (higher is better)", "img/s",
                               {"timm_eager_img_s": "timm eager", "timm_compiled_img_s": "timm compiled",
                                "visattn_eager_img_s": "visattn eager",
                                "visattn_compiled_img_s": "visattn compiled"})]),
    }
    for section, section_rows in rows.items():
        write_csv(out / f"compare_timm_{section}.csv", section_rows)
        label, panels = charts[section]
        bar_chart(out / f"compare_timm_{section}.png", section_rows, label, panels,
                  title=f"visattn vs timm, PyTorch eager, {args.threads} threads, {args.size} x {args.size}")
    write_markdown(out / "compare_timm.md", "visattn vs timm, PyTorch", header,
                   ["\n".join([lines[0], "", *lines[1:]]) for lines in tables.values()])  # title, blank, table
    sections = ",".join(rows) if len(rows) == 1 else "{" + ",".join(rows) + "}"
    print(f"\nwrote {out}/compare_timm_{sections}.{{csv,png}} and compare_timm.md")


if __name__ == "__main__":
    main()
