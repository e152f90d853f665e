"""GPU check: every family on CUDA against the CPU, and bf16 inference speed against timm and torchvision.

Runs in an environment with CUDA torch (timm / torchvision optional; visattn imported from this checkout's src/):

    python benchmarks/gpu_check.py                       # everything, within a 7-minute deadline
    python benchmarks/gpu_check.py --deadline 120 --skip-compile

Three parts, in this order, each skipped with a note once the global deadline (``--deadline``, 420 s) has passed:

* reduced models: every family's reduced config (its class's ``test_overrides``) forward + backward on CUDA in fp32
  and bf16 (``model.to(dtype)``), compared with the same model in fp32 on the CPU: max abs and relative error
  (||a - b|| / ||b||) of the output and of the concatenated parameter gradients.
* timm: bf16 inference of maxvit_tiny, davit_tiny, mvitv2_tiny against timm's same-named models (timm's random init
  loaded into visattn with ``load_pretrained``), batch ``--batch`` at 224, eager and ``torch.compile``'d.
* torchvision: bf16 inference of ``mvit_v1_base_16x4`` / ``mvitv2_small_video`` against
  ``torchvision.models.video.mvit_v1_b`` / ``mvit_v2_s`` (torchvision's weights loaded into visattn), ``--clips``
  clips of 16 x 224 x 224.

Speeds are medians of alternating rounds (visattn, then the reference, in the same process), timed with CUDA
synchronisation. Results: ``benchmarks/results/gpu/<gpu-name-slug>/gpu_check.json`` and ``gpu_check.md`` (GPU name,
torch version). Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import visattn  # noqa: E402

from visattn.registry import get_model_class, list_families  # noqa: E402

TIMM_PAIRS = {"maxvit_tiny": "maxvit_tiny_tf_224", "davit_tiny": "davit_tiny", "mvitv2_tiny": "mvitv2_tiny"}
VIDEO_PAIRS = {"mvit_v1_base_16x4": "mvit_v1_b", "mvitv2_small_video": "mvit_v2_s"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
RESULTS = Path(__file__).resolve().parent / "results" / "gpu"


class Deadline:
    """A global time budget: ``left()`` seconds remain, ``passed(need)`` when fewer than ``need`` do."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def passed(self, need: float = 0.0) -> bool:
        return self.left() < need


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _errors(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max abs, relative ||a - b|| / ||b||) of ``a`` against the reference ``b``, in fp32."""
    d = a.detach().float().cpu() - b.detach().float().cpu()
    return float(d.abs().max()), float(d.norm() / b.float().norm().clamp_min(1e-12))


def _forward_backward(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and concatenated parameter gradients of ``mean(out ** 2)``."""
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.float().square().mean().backward()
    grads = [p.grad.flatten().float() if p.grad is not None else torch.zeros(p.numel(), device=p.device)
             for p in model.parameters()]
    return out.detach(), torch.cat(grads).detach()


def compare_reduced(names: list[str], device: str | torch.device, dtypes: list[str] | None = None,
                    deadline: Deadline | None = None) -> list[dict]:
    """Every family in ``names`` (reduced ``test_overrides`` config, eval mode, batch 2) forward + backward on
    ``device`` in each of ``dtypes`` (keys of ``DTYPES``), against fp32 on the CPU.

    Returns:
        one row per (model, dtype): errors of the output and of the gradients, whether both are finite, seconds;
        ``error`` instead when the run raised, ``skipped`` when the deadline had passed.
    """
    device = torch.device(device)
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = visattn.create_model(name, **get_model_class(name).test_overrides).eval()
        inputs = dict(zip(model.input_names, model.example_inputs(batch=2)))
        ref_out, ref_grad = _forward_backward(model, inputs)
        for label in dtypes or list(DTYPES):
            row: dict = {"model": name, "dtype": label, "device": str(device)}
            if deadline is not None and deadline.passed():
                rows.append({**row, "skipped": "deadline passed"})
                continue
            dtype = DTYPES[label]
            try:
                start = time.perf_counter()
                m = copy.deepcopy(model).to(device=device, dtype=dtype)
                out, grad = _forward_backward(m, {k: v.to(device=device, dtype=dtype) for k, v in inputs.items()})
                _sync(device)
                row["seconds"] = time.perf_counter() - start
                row["out_dtype"] = str(out.dtype).removeprefix("torch.")
                row["out_max_abs"], row["out_rel"] = _errors(out, ref_out)
                row["grad_max_abs"], row["grad_rel"] = _errors(grad, ref_grad)
                row["finite"] = bool(torch.isfinite(out).all() and torch.isfinite(grad).all())
            except Exception as err:  # one family failing must not hide the others' results
                row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            rows.append(row)
    return rows


def time_pair(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each function, in alternating rounds after one warm-up call each."""
    for fn in fns.values():
        fn()
    _sync(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                fn()
            _sync(device)
            samples[key].append((time.perf_counter() - start) / iters)
    return {k: statistics.median(v) for k, v in samples.items()}


def _peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def compare_speed(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor, device: torch.device,
                  args: argparse.Namespace, deadline: Deadline) -> dict:
    """bf16 inference of visattn vs the reference on the same weights: eager, then compiled if time allows."""
    ours = ours.to(device=device, dtype=torch.bfloat16).eval()
    theirs = theirs.to(device=device, dtype=torch.bfloat16).eval()
    x = x.to(device=device, dtype=torch.bfloat16)
    row: dict = {"batch": x.shape[0], "input": list(x.shape[1:])}
    with torch.inference_mode():
        row["max_abs_diff"], row["rel_diff"] = _errors(ours(x), theirs(x))
        t = time_pair({"ours": lambda: ours(x), "ref": lambda: theirs(x)}, device, args.rounds, args.iters)
        row["ours_img_s"], row["ref_img_s"] = x.shape[0] / t["ours"], x.shape[0] / t["ref"]
        row["ours_peak_mib"] = _peak_mib(lambda: ours(x), device)
        row["ref_peak_mib"] = _peak_mib(lambda: theirs(x), device)
    if args.skip_compile:
        row["compiled"] = "skipped (--skip-compile)"
    elif deadline.passed(args.compile_budget):
        row["compiled"] = f"skipped: under {args.compile_budget:.0f} s left before the deadline"
    else:
        try:
            ours_c, theirs_c = torch.compile(ours), torch.compile(theirs)
            with torch.inference_mode():
                start = time.perf_counter()
                ours_c(x), theirs_c(x)
                _sync(device)
                row["compile_s"] = time.perf_counter() - start
                row["compiled_max_abs_diff"], _ = _errors(ours_c(x), theirs(x))
                t = time_pair({"ours": lambda: ours_c(x), "ref": lambda: theirs_c(x)}, device, args.rounds,
                              args.iters)
            row["ours_compiled_img_s"], row["ref_compiled_img_s"] = x.shape[0] / t["ours"], x.shape[0] / t["ref"]
        except Exception as err:
            row["compiled"] = f"failed: {type(err).__name__}: {err}".splitlines()[0][:300]
    return row


def _reference_models(kind: str) -> tuple[dict[str, str], Callable[[str], tuple[torch.nn.Module, str]]]:
    """A reference library's pairs (visattn name -> its name) and a builder of its model (model, label); raises
    ImportError (or whatever a broken wheel raises) when the library does not import."""
    if kind == "timm":
        import timm

        def build(ref_name: str) -> tuple[torch.nn.Module, str]:
            torch.manual_seed(0)
            theirs = timm.create_model(ref_name, pretrained=False, num_classes=1000)
            return theirs, f"timm {timm.__version__} {ref_name}"

        return TIMM_PAIRS, build
    import torchvision

    def build(ref_name: str) -> tuple[torch.nn.Module, str]:
        torch.manual_seed(0)
        theirs = getattr(torchvision.models.video, ref_name)()
        return theirs, f"torchvision {torchvision.__version__} {ref_name}"

    return VIDEO_PAIRS, build


def reference_part(kind: str, device: torch.device, args: argparse.Namespace, deadline: Deadline) -> dict:
    """bf16 speed against timm (``kind="timm"``) or torchvision's video MViTs (``"torchvision"``)."""
    try:
        pairs, build = _reference_models(kind)
    except Exception as err:  # not installed, or a wheel that does not import with this torch
        return {"skipped": f"{kind} not importable: {type(err).__name__}: {err}".splitlines()[0]}
    rows = {}
    for ours_name, ref_name in pairs.items():
        if deadline.passed(args.pair_budget):
            rows[ours_name] = {"skipped": "deadline"}
            continue
        try:
            theirs, label = build(ref_name)
            ours = visattn.create_model(ours_name)
            try:
                visattn.load_pretrained(ours, theirs.state_dict())
                weights = "shared (reference init loaded into visattn)"
            except Exception as err:
                weights = f"not shared ({type(err).__name__}: {err})".splitlines()[0][:200]
            if kind == "timm":
                x = torch.randn(args.batch, 3, 224, 224)
            else:
                x = torch.randn(args.clips, 3, 16, 224, 224)
            rows[ours_name] = {"reference": label, "weights": weights,
                               **compare_speed(ours, theirs, x, device, args, deadline)}
            del ours, theirs
        except Exception as err:
            rows[ours_name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0][:300],
                               "trace": traceback.format_exc(limit=3)}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _fmt(v: object, spec: str = ".3g") -> str:
    return format(v, spec) if isinstance(v, float) else ("" if v is None else str(v))


def markdown(result: dict) -> str:
    """The JSON result as markdown tables."""
    lines = [f"# GPU check: {result['gpu']}", "", f"torch {result['torch']}, CUDA {result['cuda']}, "
             f"{result['elapsed_s']:.0f} s of a {result['deadline_s']:.0f} s deadline.", "",
             "## Reduced models on the GPU vs fp32 on the CPU (forward + backward, batch 2)", "",
             "| model | dtype | out max abs | out rel | grad max abs | grad rel | finite | s | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["reduced"]:
        lines.append(f"| {r['model']} | {r['dtype']} | {_fmt(r.get('out_max_abs'))} | {_fmt(r.get('out_rel'))} | "
                     f"{_fmt(r.get('grad_max_abs'))} | {_fmt(r.get('grad_rel'))} | {_fmt(r.get('finite'))} | "
                     f"{_fmt(r.get('seconds'), '.2f')} | {r.get('error') or r.get('skipped') or ''} |")
    for kind in ("timm", "torchvision"):
        part = result.get(kind, {})
        lines += ["", f"## bf16 inference vs {kind} (img/s or clips/s; ratio = visattn / reference)", ""]
        if "skipped" in part:
            lines.append(part["skipped"])
            continue
        lines += ["| model | reference | weights | max abs diff | visattn | reference | ratio | visattn compiled | "
                  "reference compiled | ratio compiled | peak MiB visattn / ref | note |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name, r in part.items():
            ratio = r["ours_img_s"] / r["ref_img_s"] if "ours_img_s" in r else None
            ratio_c = (r["ours_compiled_img_s"] / r["ref_compiled_img_s"] if "ours_compiled_img_s" in r else None)
            peak = (f"{r['ours_peak_mib']:.0f} / {r['ref_peak_mib']:.0f}" if r.get("ours_peak_mib") is not None
                    else "")
            lines.append(f"| {name} | {r.get('reference', '')} | {r.get('weights', '')} | "
                         f"{_fmt(r.get('max_abs_diff'))} | {_fmt(r.get('ours_img_s'), '.1f')} | "
                         f"{_fmt(r.get('ref_img_s'), '.1f')} | {_fmt(ratio, '.2f')} | "
                         f"{_fmt(r.get('ours_compiled_img_s'), '.1f')} | {_fmt(r.get('ref_compiled_img_s'), '.1f')} | "
                         f"{_fmt(ratio_c, '.2f')} | {peak} | "
                         f"{r.get('error') or r.get('skipped') or r.get('compiled') or ''} |")
    if result.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in result["notes"]]]
    return "\n".join(lines) + "\n"


def slug(name: str) -> str:
    """A folder name for a GPU: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-gpu"


def write_results(result: dict, out_dir: Path) -> tuple[Path, Path]:
    """``gpu_check.json`` and ``gpu_check.md`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path.write_text(markdown(result))
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=420.0, help="global seconds; later parts are skipped")
    parser.add_argument("--batch", type=int, default=64, help="images per batch against timm")
    parser.add_argument("--clips", type=int, default=8, help="16 x 224 x 224 clips per batch against torchvision")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="calls per timed round")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--compile-budget", type=float, default=120.0,
                        help="seconds that must be left to start compiling a pair")
    parser.add_argument("--pair-budget", type=float, default=20.0, help="seconds that must be left to start a pair")
    parser.add_argument("--models", default="", help="comma-separated families for the reduced part (default all)")
    parser.add_argument("--out", type=Path, default=None, help=f"folder (default {RESULTS}/<gpu-name-slug>)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device present: nothing to check (gpu_check.py runs on a machine with a CUDA GPU)")
        return 0
    deadline = Deadline(args.deadline)
    start = time.monotonic()
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 rows compare fp32 arithmetic, not TF32
    torch.backends.cudnn.allow_tf32 = False
    gpu = torch.cuda.get_device_name(device)
    print(f"{gpu}; torch {torch.__version__}, CUDA {torch.version.cuda}; deadline {args.deadline:.0f} s", flush=True)
    result: dict = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "deadline_s": args.deadline,
                    "notes": []}
    names = [n for n in args.models.split(",") if n] or list_families()
    result["reduced"] = compare_reduced(names, device, deadline=deadline)
    for r in result["reduced"]:
        print(json.dumps(r), flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    for kind in ("timm", "torchvision"):
        if deadline.passed(args.pair_budget):
            result[kind] = {"skipped": f"deadline passed before the {kind} part"}
            result["notes"].append(f"{kind} part skipped: deadline")
            continue
        result[kind] = reference_part(kind, device, args, deadline)
        print(kind, json.dumps(result[kind], default=str), flush=True)
    result["elapsed_s"] = time.monotonic() - start
    paths = write_results(result, args.out or RESULTS / slug(gpu))
    print(markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
