"""What CPU this is, as far as speed is concerned: model name, the instruction-set flags that decide which kernels
run (AVX2, AVX-512, VNNI, native bf16, AMX), ATen's chosen CPU capability, oneDNN's and MKL's ISA caps, and a short
name for the machine type (:func:`machine_slug`) that benchmark results are filed under.

Every benchmark records it (``visattn bench``'s ``environment.txt``, ``benchmarks/compare_timm.py``,
``benchmarks/compare_onnx.py``), because a speed ratio measured on one instruction set need not hold on another.
Three environment variables, set before torch loads its kernels, force narrower kernels on a wider CPU, and an
AVX2-only CPU is emulated faithfully only with all three: ``ATEN_CPU_CAPABILITY=avx2`` (ATen's vectorised
kernels), ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN: convolutions, the fused linear layers) and
``MKL_ENABLE_INSTRUCTIONS=AVX2`` (MKL: ``torch.matmul`` and ``nn.Linear`` run MKL's sgemm, which ignores oneDNN's
cap). onnxruntime reads none of them: its kernels (MLAS) pick the widest instruction set the CPU reports.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping

__all__ = ["CAP_VARIABLES", "FLAGS_OF_INTEREST", "cpu_flags", "cpu_info", "cpu_model", "describe", "machine_slug",
           "native_bf16"]

# /proc/cpuinfo flag names, in the order reports list them
FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
                     "amx_bf16", "amx_int8")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(flags: set[str] | None = None) -> bool:
    """True where bf16 matmuls run in hardware (AVX512-BF16 or AMX-BF16); elsewhere bf16 is emulated in fp32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere what :mod:`platform` knows)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return model


def cpu_info() -> dict[str, object]:
    """Model name, logical cores, flags of interest, ATen's CPU capability, oneDNN's and MKL's ISA caps."""
    flags = cpu_flags()
    import torch

    widest = "default (the CPU's widest)"
    return {"model": cpu_model(), "logical_cores": os.cpu_count(),
            "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
            "aten_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get(CAP_VARIABLES["onednn"], widest),
            "mkl_instructions": os.environ.get(CAP_VARIABLES["mkl"], widest),
            "native_bf16": native_bf16(flags),
            # whether ATen sends bf16 matmuls and convolutions to oneDNN (False under an AVX2 cap: ATen's portable
            # kernels run them, and visattn.layers.amp computes them in fp32 instead)
            "onednn_bf16": torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def describe() -> str:
    """One line for a benchmark's header."""
    i = cpu_info()
    flags = " ".join(i["flags"]) or "none of interest"
    return (f"cpu: {i['model']}, {i['logical_cores']} logical cores; flags: {flags}; ATen capability "
            f"{i['aten_capability']}; oneDNN max ISA {i['onednn_max_isa']}; MKL {i['mkl_instructions']}; bf16 "
            f"{'native' if i['native_bf16'] else 'emulated'} "
            f"(oneDNN bf16 kernels: {'yes' if i['onednn_bf16'] else 'no'})")


# The environment variables that cap each library's instruction set, by the short name the slug uses for it.
CAP_VARIABLES = {"aten": "ATEN_CPU_CAPABILITY", "onednn": "ONEDNN_MAX_CPU_ISA", "mkl": "MKL_ENABLE_INSTRUCTIONS"}
_ISA_ORDER = ("scalar", "sse", "avx", "avx2", "avx512", "amx")
# The widest level each library has on x86: ATen's CPU capabilities stop at AVX512 (it has no AMX kernels), so
# ATEN_CPU_CAPABILITY=avx512 on an AMX CPU caps nothing.
_LIBRARY_CEILING = {"aten": "avx512", "onednn": "amx", "mkl": "amx"}
_VENDORS = ("xeon", "epyc", "threadripper", "ryzen", "core", "atom", "opteron", "intel", "amd")


def _isa_level(library: str, value: str) -> str | None:
    """A cap variable's value as one of ``_ISA_ORDER`` (``AVX512_CORE_VNNI`` -> ``avx512``); None where it caps
    nothing (unset, oneDNN's ``ALL`` / ``DEFAULT``); an unrecognised value as itself, lower-case."""
    v = value.strip().lower()
    if library == "aten" and v == "default":
        return "scalar"                                               # ATen's DEFAULT: the unvectorised kernels
    if v in ("", "default", "all"):
        return None
    for key, level in (("amx", "amx"), ("avx512", "avx512"), ("avx10", "avx512"), ("avx2", "avx2"), ("avx", "avx"),
                       ("sse", "sse")):
        if v.startswith(key) or (key == "amx" and key in v):
            return level
    return re.sub(r"[^a-z0-9]+", "-", v).strip("-") or None


def _widest_isa(flags: set[str]) -> str | None:
    for flag, level in (("amx_tile", "amx"), ("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx")):
        if flag in flags:
            return level
    return None


def machine_slug(model: str | None = None, flags: set[str] | None = None, env: Mapping[str, str] | None = None,
                 arch: str | None = None) -> str:
    """A short name for the machine type, under which benchmark results are filed (``benchmarks/results/<slug>/``).

    The CPU family from the model name, its widest vector instruction set (``avx512``, plus ``amx`` where it has AMX
    tiles; ``avx2``), and the ISA caps of :data:`CAP_VARIABLES` in effect: ``xeon-avx512-amx``, ``epyc-avx2``;
    with all three capped at AVX2 ``xeon-avx512-amx-avx2-capped``; with only some capped the slug names them
    (``...-avx2-capped-aten-onednn-only``: not a faithful AVX2 machine), and caps at different levels name each
    (``...-capped-aten-avx2-mkl-avx512``). A cap at or above what the CPU (or the library) has caps nothing.

    Args:
        model: the CPU's model name (default :func:`cpu_model`).
        flags: its feature flags (default :func:`cpu_flags`).
        env: the environment to read the caps from (default ``os.environ``).
        arch: the machine architecture, used where the model name names no known CPU family (default
            ``platform.machine()``).
    """
    model = cpu_model() if model is None else model
    flags = cpu_flags() if flags is None else flags
    env = os.environ if env is None else env
    arch = platform.machine() if arch is None else arch
    words = re.findall(r"[a-z0-9]+", model.lower())
    vendor = next((v for v in _VENDORS if v in words), None) or re.sub(r"[^a-z0-9]+", "-", arch.lower()).strip("-")
    widest = _widest_isa(flags)
    parts = [vendor or "unknown"]
    if widest is not None:
        parts += ["avx512", "amx"] if widest == "amx" else [widest]
    caps: dict[str, str] = {}
    for library, variable in CAP_VARIABLES.items():
        level = _isa_level(library, env.get(variable, ""))
        if level is None:
            continue
        ceiling = _LIBRARY_CEILING[library]
        if widest is not None and level in _ISA_ORDER:
            top = min(_ISA_ORDER.index(widest), _ISA_ORDER.index(ceiling))
            if _ISA_ORDER.index(level) >= top:
                continue                                              # a cap at the top caps nothing
        caps[library] = level
    if caps:
        levels = set(caps.values())
        if len(levels) == 1:
            parts += [levels.pop(), "capped"]
            if len(caps) < len(CAP_VARIABLES):
                parts += [*caps, "only"]
        else:
            parts.append("capped")
            for library, level in caps.items():
                parts += [library, level]
    return "-".join(parts)
