"""visattn's GRL beside the official GRL (ofsoundof/GRL-Image-Restoration): outputs, time per image, peak memory.

Runs in the reference environment with a checkout of the official code (not part of this repository; it needs
fairscale and omegaconf, and imports timm):

    REF/bin/python benchmarks/compare_grl_official.py --official /path/to/GRL-Image-Restoration
    REF/bin/python benchmarks/compare_grl_official.py --official ... --cases grl_tiny@64:7,grl_small_demosaic@256:2

A case is ``VARIANT@SIZE[:ROUNDS]``: a visattn GRL variant (``visattn.models.grl.VARIANTS``) on one SIZE x SIZE
input, batch 1, fp32, eval, ``torch.no_grad``. For each case, in one process:

* the official ``GRL`` (``models/networks/grl.py``) is built with the variant's arguments, its random weights widened
  as ``scripts/make_golden.py`` does (LayerNorm weights N(1, 0.2), linear weights N(0, 0.05), biases N(0, 0.1),
  logit scales + N(0, 0.5)) so that the output comparison sees every path, and loaded into visattn's model with
  ``load_pretrained`` (the official keys, remapped);
* the first call of each model, under ``visattn.bench.peak_memory`` (peak bytes of live tensors created during the
  call), gives the output to compare (max abs diff), the peak memory and the warm-up. The per-size position-bias
  tables, indices and shift masks are reported beside the peaks: the official code builds them as buffers at
  construction (``img_size`` = the padded input size here, so it need not rebuild them on every call), outside the
  measured call; visattn builds them in per-size caches during its first call, inside it;
* time: ``ROUNDS`` rounds, each one call of each model, the order swapped every round so that the shared machine's
  load falls on both alike. Reported: the median and the fastest wall time of each, the median over rounds of the
  round's own ratio (official / visattn, the two calls back to back: less exposed than the medians to load that comes
  and goes) and the ratio of the median process CPU times.

Both models run in the same process with glibc's default allocator: this script, like any library import of visattn,
leaves ``mallopt`` alone (the ``visattn`` command line raises glibc's thresholds; ``visattn.allocator``).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import visattn
from visattn.bench import peak_memory
from visattn.layers import cpb
from visattn.models.grl import VARIANTS, GRLConfig

DEFAULT_CASES = "grl_tiny@64:15,grl_small_demosaic@256:3,grl_small_demosaic@512:2"
CPU = torch.device("cpu")


def official_grl_class(folder: str | None) -> type[torch.nn.Module]:
    """The official ``GRL`` class from a checkout of ofsoundof/GRL-Image-Restoration, or a clear exit."""
    if not folder:
        raise SystemExit("--official is required: a checkout of github.com/ofsoundof/GRL-Image-Restoration "
                         "(the folder that holds models/networks/grl.py)")
    root = Path(folder).expanduser().resolve()
    if not (root / "models" / "networks" / "grl.py").is_file():
        raise SystemExit(f"--official {folder}: expected a checkout of ofsoundof/GRL-Image-Restoration with "
                         f"models/networks/grl.py, found no such file under {root}")
    sys.path.insert(0, str(root))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the official code imports timm.models.layers
            from models.networks.grl import GRL  # type: ignore[import-not-found]
    except ImportError as err:
        raise SystemExit(f"importing the official GRL from {root} failed: {err}. It needs torch, timm, fairscale "
                         "and omegaconf (pip install fairscale omegaconf)") from err
    return GRL


def official_kwargs(config: GRLConfig, img_size: int) -> dict:
    """visattn GRLConfig -> the official GRL arguments (the fixed ones as config/model/grl/grl_*.yaml set them)."""
    return {"img_size": img_size, "in_channels": config.in_chans, "out_channels": config.out_chans,
            "embed_dim": config.embed_dim, "upscale": config.upscale, "img_range": config.img_range,
            # upscale 1 (denoising, JPEG, demosaicking): the official configs' empty upsampler, the conv head
            "upsampler": "" if config.upscale == 1 else config.upsampler,
            "depths": list(config.depths), "num_heads_window": list(config.num_heads_window),
            "num_heads_stripe": list(config.num_heads_stripe), "window_size": config.window_size,
            "stripe_size": list(config.stripe_size), "stripe_groups": list(config.stripe_groups),
            "stripe_shift": config.stripe_shift, "mlp_ratio": config.mlp_ratio, "qkv_bias": config.qkv_bias,
            "qkv_proj_type": "linear", "anchor_proj_type": "avgpool", "anchor_one_stage": True,
            "anchor_window_down_factor": config.anchor_down_factor, "out_proj_type": "linear",
            "local_connection": config.local_connection, "drop_path_rate": config.drop_path_rate,
            "conv_type": "1conv", "init_method": "n"}


def widen(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Wider random weights than the official init (as scripts/make_golden.py), so a wrong norm, bias or role shows."""
    for name, p in model.named_parameters():
        if name.endswith("logit_scale"):
            p.data.add_(torch.randn(p.shape, generator=generator) * 0.5)
        elif "norm" in name and name.endswith("weight"):
            p.data.normal_(1.0, 0.2, generator=generator)
        elif p.ndim <= 2:                                            # linear weights and every bias
            p.data.normal_(0.0, 0.05 if p.ndim == 2 else 0.1, generator=generator)


def parse_cases(text: str, rounds: int) -> list[tuple[str, int, int]]:
    cases = []
    for item in filter(None, text.split(",")):
        try:
            variant, rest = item.split("@")
            size, _, n = rest.partition(":")
            case = (variant, int(size), int(n) if n else rounds)
        except ValueError:
            raise SystemExit(f"--cases: {item!r} is not VARIANT@SIZE[:ROUNDS], e.g. grl_tiny@64:7") from None
        if variant not in VARIANTS:
            raise SystemExit(f"--cases: unknown GRL variant {variant!r}; known: {', '.join(VARIANTS)}")
        cases.append(case)
    return cases


def _mib(tensors) -> float:
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def _visattn_table_mib() -> float:
    return sum(f.cache_bytes() for f in vars(cpb).values() if hasattr(f, "cache_bytes")) / 2**20


def _clocks(fn: Callable[[], object]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def run_case(GRL: type[torch.nn.Module], variant: str, size: int, rounds: int) -> dict:
    config = VARIANTS[variant]
    load_before = os.getloadavg()[0]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ours = visattn.create_model(variant)
    # The official tables are built for img_size; the padded input size (official pad_size) avoids a rebuild per call.
    official = GRL(**official_kwargs(config, size + (-size) % ours.pad_size))
    widen(official, g)
    visattn.load_pretrained(ours, official.state_dict())
    official.eval()
    ours.eval()
    x = torch.rand(1, config.in_chans, size, size, generator=g)
    for f in vars(cpb).values():
        if hasattr(f, "cache_clear"):
            f.cache_clear()
    fns = {"official": lambda: official(x), "visattn": lambda: ours(x)}
    outputs: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        mem = {k: peak_memory(lambda k=k, fn=fn: outputs.__setitem__(k, fn()), CPU) for k, fn in fns.items()}
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
        for r in range(rounds):
            for key in (("official", "visattn") if r % 2 == 0 else ("visattn", "official")):
                samples[key].append(_clocks(fns[key]))
    wall = {k: statistics.median(s[0] for s in v) for k, v in samples.items()}
    cpu_s = {k: statistics.median(s[1] for s in v) for k, v in samples.items()}
    paired = statistics.median(o[0] / v[0] for o, v in zip(samples["official"], samples["visattn"]))
    official_tables = [b for n, b in official.named_buffers() if n.startswith(("table_", "index_", "mask_"))]
    return {"variant": variant, "size": size, "output": "x".join(map(str, outputs["visattn"].shape)),
            "max_abs_diff": (outputs["official"] - outputs["visattn"]).abs().max().item(),
            "max_abs_output": outputs["official"].abs().max().item(), "rounds": rounds,
            "official_s": wall["official"], "visattn_s": wall["visattn"], "paired_ratio": paired,
            "official_fastest_s": min(s[0] for s in samples["official"]),
            "visattn_fastest_s": min(s[0] for s in samples["visattn"]),
            "official_cpu_s": cpu_s["official"], "visattn_cpu_s": cpu_s["visattn"],
            "official_mib": mem["official"], "visattn_mib": mem["visattn"],
            "official_tables_mib": _mib(official_tables), "visattn_tables_mib": _visattn_table_mib(),
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", help="checkout of ofsoundof/GRL-Image-Restoration (holds models/networks/grl.py)")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"VARIANT@SIZE[:ROUNDS],... (default {DEFAULT_CASES})")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of a case without its own :ROUNDS")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--csv", type=Path, help="also write the rows to this CSV file")
    args = parser.parse_args()
    cases = parse_cases(args.cases, args.rounds)
    GRL = official_grl_class(args.official)
    torch.set_num_threads(args.threads)
    from visattn.allocator import keeping_freed_memory
    from visattn.machine import describe

    print(describe())
    malloc_env = [k for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ]
    allocator = "glibc keeps freed large buffers" if keeping_freed_memory() else "glibc defaults"
    if malloc_env:
        allocator = f"glibc as set by {', '.join(malloc_env)} in the environment"
    print(f"{torch.get_num_threads()} threads; torch {torch.__version__}; allocator: {allocator} (both implementations)")
    print("\nfp32, batch 1, eval, no_grad; time ratio = official s / visattn s, memory ratio = official MiB / visattn "
          "MiB (> 1: visattn faster / smaller); peak = live tensors created during the first call (visattn.bench."
          "peak_memory); tables = per-size position-bias tables, indices and masks (official: buffers built "
          "before the call; visattn: cached during it)")
    print("| model | input -> output | max abs diff (max abs output) | official s/img median (fastest) | visattn "
          "s/img median (fastest) | time ratio: per round (of medians) | time ratio (CPU) | official peak MiB | "
          "visattn peak MiB | memory ratio | tables MiB official / visattn | rounds | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for variant, size, rounds in cases:
        r = run_case(GRL, variant, size, rounds)
        rows.append(r)
        print(f"| {variant} | {size}x{size} -> {r['output']} | {r['max_abs_diff']:.1e} ({r['max_abs_output']:.2f}) | "
              f"{r['official_s']:.3f} ({r['official_fastest_s']:.3f}) | {r['visattn_s']:.3f} "
              f"({r['visattn_fastest_s']:.3f}) | {r['paired_ratio']:.2f} ({r['official_s'] / r['visattn_s']:.2f}) | "
              f"{r['official_cpu_s'] / r['visattn_cpu_s']:.2f} | {r['official_mib']:.0f} | {r['visattn_mib']:.0f} | "
              f"{r['official_mib'] / r['visattn_mib']:.2f} | {r['official_tables_mib']:.0f} / "
              f"{r['visattn_tables_mib']:.0f} | {rounds} | {r['load_before']:.1f}-{r['load_after']:.1f} |", flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
