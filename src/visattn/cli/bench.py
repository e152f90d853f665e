"""``visattn bench``: throughput, latency, peak memory and GMACs over resolutions; CSV + log-log PNGs.

    visattn bench --attention multi_axis --sizes 16,32,64,128 --out bench/   # vs global attention (baseline)
    visattn bench --model maxvit_tiny --sizes 224,320,448 --mode fwdbwd --dtype bf16
    visattn bench --model mvitv2_small_video                 # clips/s of 16 x 224 x 224 clips, batch 1
    visattn bench --model mvitv2_small_video --frames 32 --sizes 224,288

With --attention, plain global self-attention of the same width is measured beside each mechanism, so the plot of
cost against pixels shows linear growth (slope 1) against quadratic (slope 2). Video models are measured per clip
(clips/s, GMACs and peak memory per clip) of --frames frames (default: the model's configured frame count).
"""

from __future__ import annotations

import argparse

from ._common import add_runtime_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time / memory / GMACs of models or attention modules over resolutions",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to measure (repeatable)")
    what.add_argument("--model", "-m", action="append", default=[], help="registered model name")
    what.add_argument("--attention", "-a", action="append", default=[], help="registered attention name")
    what.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                      help="model config override or attention constructor argument (e.g. dim=64)")
    what.add_argument("--no-baseline", dest="baseline", action="store_false",
                      help="do not add global attention beside attention modules")
    p.add_argument("--sizes", help="resolutions: N or HxW, comma separated (default 16,32,64,96 with --attention; "
                                   "with --model only: the models' configured input size, else 224)")
    p.add_argument("--frames", type=int, metavar="T",
                   help="video models: frames per clip (default: the model's configured frame count, e.g. 16)")
    p.add_argument("--batch-size", "-b", type=int, default=1)
    p.add_argument("--mode", choices=["fwd", "fwdbwd"], default="fwd")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true",
                   help="also measure each module torch.compile'd (rows named '<name> (compiled)') beside eager")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=10.0, help="stop timing one point after this long")
    p.add_argument("--baseline-patch", type=int, default=4,
                   help="with --model: add global attention over patch x patch tokens of width 64 (a ViT stage at "
                        "that stride; 0 or 1: none)")
    p.add_argument("--global-max-tokens", type=int, default=9216,
                   help="time global attention only up to this many tokens (GMACs are always counted)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory pass")
    p.add_argument("--out", "-o", default="bench", help="folder for bench.csv and the PNGs (default bench/)")
    add_runtime_args(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import csv
    import io
    import sys
    from pathlib import Path

    from ..bench import GlobalAttention, Target, bench_rows
    from ..registry import get_model_config
    from ..checkpoint import atomic_write_bytes
    from ..plots import plot_per_pixel, plot_scaling
    from ..registry import create_attention, create_model, get_attention_class, get_model_class
    from ._common import apply_runtime, parse_overrides, parse_sizes

    if not args.model and not args.attention:
        raise ValueError("nothing to measure: pass --model NAME and/or --attention NAME")
    for flag, value, low in (("--batch-size", args.batch_size, 1), ("--iters", args.iters, 1),
                             ("--warmup", args.warmup, 0), ("--max-seconds", args.max_seconds, 1e-9)):
        if not value >= low:
            raise ValueError(f"{flag} must be {'at least 1' if low == 1 else '>= 0' if low == 0 else 'positive'}, "
                             f"got {value}")
    device = apply_runtime(args)
    overrides = parse_overrides(args.overrides)
    if args.sizes:
        sizes = parse_sizes(args.sizes)
    elif args.attention:
        sizes = parse_sizes("16,32,64,96")
    else:                                                               # the models' own input size (H, W)
        configured = {tuple(getattr(get_model_config(n, **overrides), "img_size", (224, 224))[-2:])
                      for n in args.model}
        sizes = sorted(configured, key=lambda s: s[0] * s[1])
    video = [n for n in args.model if getattr(get_model_class(n), "input_ndim", 4) == 5]
    if args.frames is not None:
        if not video:
            raise ValueError("--frames applies to video models; none of the --model names is one")
        for name in video:
            low = get_model_class(name).min_input_frames or 1
            if args.frames < low:
                raise ValueError(f"--frames {args.frames}: {name} needs at least {low} frame(s)")
    targets: list[Target] = []
    for name in args.model:
        cls = get_model_class(name)
        small = min(min(s) for s in sizes)
        if small < cls.min_input_size:
            raise ValueError(f"size {small} is too small for {name}: it needs at least {cls.min_input_size}")
        targets.append(Target(name, "model", lambda name=name: create_model(name, **overrides)))
    # the global-attention baseline is an image (one frame of patches): it stands beside image models only
    if len(video) < len(args.model) and args.baseline and args.baseline_patch > 1:
        patch = args.baseline_patch
        targets.append(Target(f"global(dim=64, patch {patch})", "baseline",
                              lambda: GlobalAttention(64, 32, patch=patch)))
    for name in args.attention:
        cls = get_attention_class(name)
        kwargs = {**cls.example_kwargs(), **overrides}
        targets.append(Target(name, "attention", lambda name=name, kwargs=kwargs: create_attention(name, **kwargs)))
        if args.baseline and not any(t.name.startswith("global(dim=") and "patch" not in t.name for t in targets):
            dim, head_dim = kwargs["dim"], kwargs.get("head_dim", 32)
            targets.append(Target(f"global(dim={dim})", "baseline",
                                  lambda dim=dim, head_dim=head_dim: GlobalAttention(dim, head_dim)))
    rows = []
    for target in targets:
        max_tokens = args.global_max_tokens if target.kind == "baseline" else None
        if max_tokens is not None and "patch" in target.name:          # tokens = pixels / patch^2
            max_tokens *= args.baseline_patch ** 2
        for compiled in (False, True) if args.compile else (False,):
            run_target = Target(f"{target.name} (compiled)", target.kind, target.build) if compiled else target
            rows += bench_rows([run_target], sizes, batch=args.batch_size, mode=args.mode, dtype=args.dtype,
                               device=device, compile=compiled, warmup=args.warmup, iters=args.iters,
                               max_seconds=args.max_seconds, max_tokens=max_tokens, memory=args.memory,
                               frames=args.frames)
    out = Path(args.out)
    columns = ["name", "kind", "height", "width", "frames", "pixels", "batch", "mode", "dtype", "device", "compile",
               "ms", "ms_min", "img_per_s", "clips_per_s", "peak_mem_mb", "gmacs", "note"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "bench.csv", buf.getvalue().encode())
    title = f"{args.mode}, {args.dtype}, batch {args.batch_size}, {device.type}"
    clip_rows = [r for r in rows if r.get("frames")]
    per = "image" if not clip_rows else "clip" if len(clip_rows) == len(rows) else "image (clip for video models)"
    pixels = "pixels per frame" if clip_rows else "pixels"
    pngs = [plot_scaling(rows, out / "bench_ms.png", metric="ms", title=f"latency vs {pixels} ({title})",
                         xlabel=f"{pixels} (H x W)"),
            plot_scaling(rows, out / "bench_gmacs.png", metric="gmacs", title=f"GMACs per {per} vs {pixels}",
                         xlabel=f"{pixels} (H x W)"),
            plot_per_pixel(rows, out / "bench_per_pixel.png", title=f"cost per pixel, relative ({title})")]
    atomic_write_bytes(out / "environment.txt", environment_report(sys.argv, device, args.threads).encode())
    print(f"{'name':<24} {'input':>12} {'ms':>10} {'throughput':>18} {'peak MiB':>10} {'GMACs':>14}   "
          f"({args.mode}, {args.dtype}, batch {args.batch_size}; video models per clip)")
    for r in rows:
        video_row = bool(r.get("frames"))
        where = f"{r['frames']}x{r['height']}x{r['width']}" if video_row else f"{r['height']}x{r['width']}"
        rate = r.get("clips_per_s") if video_row else r.get("img_per_s")
        rate = f"{rate:.2f} {'clips/s' if video_row else 'img/s'}" if rate else "-"
        g = r.get("gmacs")
        gmacs = "-" if g is None else f"{g:.2f}" if g >= 1 else f"{g:.3g}"
        gmacs += ("/clip" if video_row else "/img") if g is not None else ""
        print(f"{r['name']:<24} {where:>12} {_fmt(r.get('ms'), '.2f'):>10} {rate:>18} "
              f"{_fmt(r.get('peak_mem_mb'), '.1f'):>10} {gmacs:>14}")
    if len({(r["height"], r["width"]) for r in rows}) > 1:
        print(f"\n{'name':<24} {'slope(ms)':>10} {'slope(GMACs)':>13}   (log-log slope vs pixels: 1 linear, "
              "2 quadratic)")
        for name in dict.fromkeys(r["name"] for r in rows):
            print(f"{name:<24} {_slope(rows, name, 'ms'):>10} {_slope(rows, name, 'gmacs'):>13}")
        print(f"\n{'name':<24} {'sizes':>15} {'time/px':>8} {'(best)':>8} {'mem/px':>8} {'GMACs/px':>9}   (per pixel "
              "at the largest size over the smallest: linear stays near 1; time of the median and of the fastest "
              "call)")
        for name in dict.fromkeys(r["name"] for r in rows):
            ratios = [_per_pixel_ratio(rows, name, metric) for metric in ("ms", "ms_min", "peak_mem_mb", "gmacs")]
            print(f"{name:<24} {_span(rows, name):>15} {ratios[0]:>8} {ratios[1]:>8} {ratios[2]:>8} {ratios[3]:>9}")
    if args.compile:
        eager = {(r["name"], r["height"], r["width"]): r["ms"] for r in rows if not r["compile"]}
        print(f"{'name':<24} {'size':>9} {'eager ms':>10} {'compiled ms':>12} {'speedup':>8}")
        for r in rows:
            base = eager.get((r["name"].removesuffix(" (compiled)"), r["height"], r["width"]))
            if r["compile"] and r["ms"] and base:
                size = f"{r['height']}x{r['width']}"
                print(f"{r['name'].removesuffix(' (compiled)'):<24} {size:>9} {base:>10.2f} {r['ms']:>12.2f} "
                      f"{base / r['ms']:>7.2f}x")
    print(f"wrote {out / 'bench.csv'}" + "".join(f", {p}" for p in pngs if p))
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _ends(rows: list[dict], name: str, metric: str) -> tuple[tuple[int, float], tuple[int, float]] | None:
    """(pixels, value) at the smallest and the largest size measured, or None without two distinct sizes."""
    pts = sorted((r["pixels"], r[metric]) for r in rows if r["name"] == name and r.get(metric))
    return (pts[0], pts[-1]) if len(pts) >= 2 and pts[0][0] != pts[-1][0] else None


def _span(rows: list[dict], name: str) -> str:
    sizes = sorted((r["pixels"], f"{r['height']}x{r['width']}") for r in rows if r["name"] == name)
    return f"{sizes[-1][1]}/{sizes[0][1]}" if sizes else "-"


def _per_pixel_ratio(rows: list[dict], name: str, metric: str) -> str:
    ends = _ends(rows, name, metric)
    if ends is None:
        return "-"
    (x0, y0), (x1, y1) = ends
    return f"{(y1 / x1) / (y0 / x0):.2f}"


def environment_report(argv: list[str], device: object, threads: int | None) -> str:
    """Where a benchmark ran: command, date, commit, machine, library versions, threads."""
    import datetime
    import os
    import platform
    import subprocess

    import numpy
    import torch

    import visattn

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                                cwd=os.path.dirname(visattn.__file__), timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    from ..machine import cpu_info

    cpu = cpu_info()["model"]
    lines = [
        f"command: visattn bench {' '.join(argv[2:] if argv[1:2] == ['bench'] else argv[1:])}",
        f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"commit: {commit}",
        f"machine: {cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}",
        f"device: {device}, torch threads: {threads or torch.get_num_threads()}",
        (f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
         f"visattn {visattn.__version__}"),
    ]
    from ..allocator import keeping_freed_memory
    from ..machine import describe

    lines.append(describe())
    lines.append("allocator: glibc keeps freed large buffers (visattn.allocator)" if keeping_freed_memory()
                 else "allocator: as the environment set it (no visattn tuning)")
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name()}")
    return "\n".join(lines) + "\n"


def _slope(rows: list[dict], name: str, metric: str) -> str:
    import math

    ends = _ends(rows, name, metric)
    if ends is None:
        return "-"
    (x0, y0), (x1, y1) = ends
    return f"{math.log(y1 / y0) / math.log(x1 / x0):.2f}"
