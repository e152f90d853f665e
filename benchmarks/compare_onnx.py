"""visattn vs timm as ONNX graphs in onnxruntime (CPU): batch-1 latency and batch-8 throughput, fixed and dynamic size.

Runs in the reference environment (timm, onnx, onnxscript and onnxruntime importable; visattn from this checkout's
src/):

    REF/bin/python benchmarks/compare_onnx.py                                # 3 pairs, 2 threads, 5 rounds x 3 calls
    REF/bin/python benchmarks/compare_onnx.py --profile --out benchmarks/results   # + per-op profile, files
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 REF/bin/python ...  # AVX2 caps

For each model pair of ``compare_timm.py`` (timm's random init loaded into visattn, so both compute the same
function):

* three graphs, all with a dynamic batch dimension (so one graph serves batch 1 and batch 8, alike for all three):
  timm's model through ``torch.onnx.export(..., dynamo=True)`` at visattn's opset with only the batch dynamic
  (falling back to the TorchScript exporter if that fails, and saying so); visattn's model through
  ``visattn.export.to_onnx`` at a fixed 224 x 224 (``dynamic_size=False``) and with dynamic height and width;
* every graph's output checked against its PyTorch model (max abs diff, batch 1 and 8), and the dynamic graph at
  another size (200 x 264) too;
* one onnxruntime runner per graph, all with the same options (CPU provider, ``--threads`` intra-op threads, one
  inter-op thread, sequential execution, ``ORT_ENABLE_ALL`` graph optimisation);
* batch-1 latency and batch-8 throughput: ``--rounds`` rounds, each timing ``--iters`` calls of timm's graph, then
  visattn's fixed, then its dynamic one (so load from other processes hits all three alike), after one warm-up call
  each; medians under the wall clock and the process CPU clock;
* ``--profile``: onnxruntime's own profiler (``enable_profiling``) on every graph at ``--profile-batch``, time per
  call by op type, the top 5 of each graph printed.

Targets: visattn fixed vs timm >= 1.0 (speed ratio, higher is faster); dynamic vs fixed within 10% (>= 0.90).
``--out BASE`` writes ``compare_onnx.csv``, ``compare_onnx.png`` and ``compare_onnx.md`` (and
``compare_onnx_profile.csv``) into ``BASE/<machine type>/`` (``visattn.machine.machine_slug``).

onnxruntime reads none of the ISA cap variables: its kernels (MLAS) use the widest instruction set the CPU reports,
so under the caps only the PyTorch side (tracing, the reference outputs) changes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_timm import PAIRS, alternate, build  # also puts this checkout's src/ on the path

import visattn
from visattn.export import ONNX_OPSET, to_onnx
from visattn.machine import CAP_VARIABLES

GRAPHS = ("timm", "fixed", "dynamic")
LEGEND = {"timm": "timm", "fixed": "visattn fixed 224", "dynamic": "visattn dynamic"}
OTHER_SIZE = (200, 264)  # the dynamic graph is also checked here: padding in every family, not square


def export_timm(model: torch.nn.Module, path: Path, example: torch.Tensor, opset: int) -> str:
    """timm's model as visattn's fixed graph is made: ``torch.onnx.export(dynamo=True)``, same opset, fixed height
    and width, dynamic batch. Falls back to the TorchScript exporter; returns the exporter used."""
    from torch.export import Dim

    model.eval()
    try:
        program = torch.onnx.export(model, (example,), input_names=["x"], output_names=["y"], opset_version=opset,
                                    dynamo=True, dynamic_shapes={"x": {0: Dim("batch", min=1, max=1 << 16)}},
                                    external_data=False, verbose=False)
        program.save(str(path))
        return f"dynamo, opset {opset}"
    except Exception as err:  # noqa: BLE001  (any failure of the dynamo exporter: try the other one, and say so)
        print(f"  timm: torch.onnx.export(dynamo=True) failed ({type(err).__name__}: {str(err)[:200]}); "
              "using the TorchScript exporter", flush=True)
    torch.onnx.export(model, (example,), str(path), input_names=["x"], output_names=["y"], opset_version=opset,
                      dynamo=False, dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return f"TorchScript, opset {opset}"


def ort_options(threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def load_graph(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), ort_options(threads, profile_prefix), providers=["CPUExecutionProvider"])


def op_times(sess, x: np.ndarray, runs: int) -> dict[str, float]:
    """Milliseconds per call by op type, from onnxruntime's profile of ``runs`` calls after one warm-up call."""
    for _ in range(runs + 1):
        sess.run(None, {"x": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    calls = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    begin = calls[-runs]                                               # the warm-up call's nodes start before this
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= begin:
            totals[e["args"]["op_name"]] += e["dur"] / 1000 / runs
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def compare(name: str, args: argparse.Namespace, folder: Path) -> tuple[dict, dict[str, dict[str, float]]]:
    ours, theirs = build(name, PAIRS[name])
    ours.eval()
    theirs.eval()
    example = torch.randn(2, 3, args.size, args.size)
    paths = {g: folder / f"{name}_{g}.onnx" for g in GRAPHS}
    seconds = {}
    start = time.perf_counter()
    exporter = export_timm(theirs, paths["timm"], example, ONNX_OPSET)
    seconds["timm"] = time.perf_counter() - start
    for graph, dynamic in (("fixed", False), ("dynamic", True)):
        start = time.perf_counter()
        to_onnx(ours, paths[graph], dynamic_size=dynamic, example=example)
        seconds[graph] = time.perf_counter() - start
    row: dict = {"model": name, "timm_model": PAIRS[name], "timm_exporter": exporter,
                 **{f"export_s_{g}": seconds[g] for g in GRAPHS}}
    print(f"  exported in {' / '.join(f'{seconds[g]:.0f}' for g in GRAPHS)} s (timm / fixed / dynamic); "
          f"timm exporter: {exporter}", flush=True)

    runners = {g: load_graph(paths[g], args.threads) for g in GRAPHS}
    gen = torch.Generator().manual_seed(0)
    x1 = torch.randn(1, 3, args.size, args.size, generator=gen)
    x8 = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    xo = torch.randn(1, 3, *OTHER_SIZE, generator=gen)
    diff = defaultdict(float)
    with torch.inference_mode():
        for x in (x1, x8):
            want = {"timm": theirs(x), "fixed": ours(x), "dynamic": ours(x)}
            diff["eager"] = max(diff["eager"], (want["fixed"] - want["timm"]).abs().max().item())
            for g in GRAPHS:
                got = torch.from_numpy(runners[g].run(None, {"x": x.numpy()})[0])
                diff[g] = max(diff[g], (got - want[g]).abs().max().item())
        got = torch.from_numpy(runners["dynamic"].run(None, {"x": xo.numpy()})[0])
        diff["dynamic_other_size"] = (got - ours(xo)).abs().max().item()
    row.update({f"diff_{k}": v for k, v in diff.items()})

    for label, x in (("b1", x1.numpy()), (f"b{args.batch}", x8.numpy())):
        t = alternate({g: (lambda s=runners[g], x=x: s.run(None, {"x": x})) for g in GRAPHS}, args.rounds, args.iters)
        for g in GRAPHS:
            row[f"{label}_ms_{g}"] = t[g][0] * 1000
            row[f"{label}_cpu_ms_{g}"] = t[g][1] * 1000
            row[f"{label}_img_s_{g}"] = x.shape[0] / t[g][0]
        print(f"  batch {x.shape[0]}: " + ", ".join(f"{g} {t[g][0] * 1000:.1f} ms" for g in GRAPHS), flush=True)
    big = f"b{args.batch}"
    for label in ("b1", big):
        for clock in ("", "cpu_"):
            ms = {g: row[f"{label}_{clock}ms_{g}"] for g in GRAPHS}
            row[f"{label}_{clock}fixed_vs_timm"] = ms["timm"] / ms["fixed"]
            row[f"{label}_{clock}dynamic_vs_fixed"] = ms["fixed"] / ms["dynamic"]
    del runners

    profile: dict[str, dict[str, float]] = {}
    if args.profile:
        xp = torch.randn(args.profile_batch, 3, args.size, args.size, generator=gen).numpy()
        for g in GRAPHS:
            profile[g] = op_times(load_graph(paths[g], args.threads, str(folder / f"{name}_{g}_profile")), xp,
                                  args.profile_runs)
    return row, profile


def _joined(row: dict, template: str, fmt: str) -> str:
    """``row[template.format(g)]`` for the three graphs, formatted and joined by " / "."""
    return " / ".join(format(row[template.format(g)], fmt) for g in GRAPHS)


def speed_table(rows: list[dict], batch: int) -> str:
    big = f"b{batch}"
    head = (f"| model | batch 1 ms: timm / fixed / dynamic | batch {batch} img/s: timm / fixed / dynamic | fixed vs "
            f"timm, batch 1 / {batch}: wall (CPU) | dynamic vs fixed, batch 1 / {batch}: wall (CPU) |")
    lines = [head, "| --- | --- | --- | --- | --- |"]

    def ratio(r: dict, key: str) -> str:
        return " / ".join(f"{r[b + '_' + key]:.2f} ({r[b + '_cpu_' + key]:.2f})" for b in ("b1", big))

    for r in rows:
        lines.append(f"| {r['model']} | {_joined(r, 'b1_ms_{}', '.1f')} | {_joined(r, big + '_img_s_{}', '.2f')} | "
                     f"{ratio(r, 'fixed_vs_timm')} | {ratio(r, 'dynamic_vs_fixed')} |")
    return "\n".join(lines)


def check_table(rows: list[dict]) -> str:
    head = ("| model vs timm | timm exporter | export s: timm / fixed / dynamic | max abs diff vs PyTorch: timm / "
            f"fixed / dynamic (dynamic at {OTHER_SIZE[0]} x {OTHER_SIZE[1]}) | visattn vs timm, PyTorch |")
    lines = [head, "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['model']} vs {r['timm_model']} | {r['timm_exporter']} | "
                     f"{_joined(r, 'export_s_{}', '.0f')} | "
                     f"{_joined(r, 'diff_{}', '.1e')} ({r['diff_dynamic_other_size']:.1e}) | "
                     f"{r['diff_eager']:.1e} |")
    return "\n".join(lines)


def profile_tables(profiles: dict[str, dict[str, dict[str, float]]], batch: int) -> str:
    """Per model: the union of each graph's top 5 op types, ms per call in each graph, and each graph's total."""
    out = []
    for name, prof in profiles.items():
        top = list(dict.fromkeys(op for g in GRAPHS for op in list(prof[g])[:5]))
        top.sort(key=lambda op: -max(prof[g].get(op, 0.0) for g in GRAPHS))
        out += [f"{name}, onnxruntime profile at batch {batch} (ms per call by op type; each graph's top 5):", "",
                "| op type | timm | visattn fixed | visattn dynamic |", "| --- | --- | --- | --- |"]
        out += [f"| {op} | " + " | ".join(f"{prof[g].get(op, 0.0):.1f}" for g in GRAPHS) + " |" for op in top]
        out += ["| all ops | " + " | ".join(f"{sum(prof[g].values()):.1f}" for g in GRAPHS) + " |", ""]
    return "\n".join(out)


def _load() -> str:
    """The machine's load average (1, 5, 15 min): other processes share the cores."""
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(PAIRS), help=f"comma-separated subset of {list(PAIRS)}")
    parser.add_argument("--batch", type=int, default=8, help="the throughput batch (latency is at batch 1)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (and torch's)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="calls per graph per timed round")
    parser.add_argument("--profile", action="store_true", help="also profile every graph with onnxruntime")
    parser.add_argument("--profile-batch", type=int, default=1)
    parser.add_argument("--profile-runs", type=int, default=5)
    parser.add_argument("--onnx-dir", default=None, help="keep the ONNX files here (default: a temporary folder)")
    parser.add_argument("--out", default=None,
                        help="write compare_onnx.csv / .png / .md into OUT/<machine type>/ (visattn.machine_slug)")
    args = parser.parse_args()
    import onnx
    import onnxruntime
    import onnxscript
    import timm

    from visattn.machine import describe

    torch.set_num_threads(args.threads)
    setup = (f"{platform.processor() or platform.machine()}, onnxruntime CPU provider, {args.threads} intra-op "
             f"threads, 1 inter-op thread, ORT_ENABLE_ALL; torch {torch.__version__}, timm {timm.__version__}, "
             f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, onnxscript {onnxscript.__version__}, "
             f"visattn {visattn.__version__}")
    header = [describe(), setup, f"load average (1, 5, 15 min) at start: {_load()}"]
    print("\n".join(header), flush=True)
    names = [n for n in args.models.split(",") if n]
    rows, profiles = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.onnx_dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            print(f"{name} vs {PAIRS[name]}:", flush=True)
            row, profile = compare(name, args, folder)
            rows.append(row)
            if profile:
                profiles[name] = profile

    header.append(f"load average at end: {_load()}")
    title = (f"ONNX in onnxruntime, fp32, {args.size} x {args.size}, {args.threads} threads: batch-1 latency and "
             f"batch-{args.batch} throughput, {args.rounds} alternating rounds of {args.iters} calls (medians); "
             "speed ratios (higher = faster): fixed vs timm (target >= 1.0), dynamic vs fixed (target >= 0.90)")
    tables = [check_table(rows), speed_table(rows, args.batch)]
    if profiles:
        tables.append(profile_tables(profiles, args.profile_batch))
    print(f"\n{title}\n")
    print("\n\n".join(tables), flush=True)

    if args.out:
        from _results import bar_chart, results_dir, write_csv, write_markdown

        out = results_dir(args.out)
        write_csv(out / "compare_onnx.csv", rows)
        if profiles:
            write_csv(out / "compare_onnx_profile.csv",
                      [{"model": n, "graph": g, "op_type": op, "ms_per_call": ms, "batch": args.profile_batch}
                       for n, prof in profiles.items() for g in GRAPHS for op, ms in prof[g].items()])
        big = f"b{args.batch}"
        bar_chart(out / "compare_onnx.png", rows, "model",
                  [("batch 1 latency (lower is better)", "ms per image", {f"b1_ms_{g}": LEGEND[g] for g in GRAPHS}),
                   (f"batch {args.batch} throughput (higher is better)", "img/s",
                    {f"{big}_img_s_{g}": LEGEND[g] for g in GRAPHS})],
                  title=f"onnxruntime CPU, {args.threads} threads, fp32 {args.size} x {args.size}")
        notes = []
        if any(v in os.environ for v in CAP_VARIABLES.values()):
            notes.append("onnxruntime reads none of the ISA cap variables (its MLAS kernels use the widest "
                         "instruction set the CPU reports): the caps changed the PyTorch side only (tracing and the "
                         "reference outputs).")
        write_markdown(out / "compare_onnx.md", "visattn vs timm in onnxruntime", header, [title, *tables], notes)
        print(f"\nwrote {out}/compare_onnx.{{csv,png,md}}")


if __name__ == "__main__":
    main()
