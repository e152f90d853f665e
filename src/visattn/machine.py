"""What CPU this is, as far as speed is concerned: model name, the instruction-set flags that decide which kernels
run (AVX2, AVX-512, VNNI, native bf16, AMX), ATen's chosen CPU capability and oneDNN's ISA cap.

Every benchmark records it (``visattn bench``'s ``environment.txt``, ``benchmarks/compare_timm.py``), because a speed
ratio measured on one instruction set need not hold on another. ``ATEN_CPU_CAPABILITY`` (e.g. ``avx2``),
``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``) and ``MKL_ENABLE_INSTRUCTIONS`` (e.g. ``AVX2``, MKL's fp32 GEMM behind
``torch.matmul``) force the narrower kernels on a wider CPU when set before torch loads them.
"""

from __future__ import annotations

import os
import platform

__all__ = ["FLAGS_OF_INTEREST", "cpu_flags", "cpu_info", "describe", "native_bf16"]

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


def cpu_info() -> dict[str, object]:
    """Model name, logical cores, flags of interest, ATen's CPU capability and oneDNN's ISA cap."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    flags = cpu_flags()
    import torch

    return {"model": model, "logical_cores": os.cpu_count(),
            "flags": [f for f in FLAGS_OF_INTEREST if f in flags],
            "aten_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default (the CPU's widest)"),
            "native_bf16": native_bf16(flags),
            # whether ATen sends bf16 matmuls and convolutions to oneDNN (False under an AVX2 cap: ATen's portable
            # kernels run them, and visattn.layers.amp computes them in fp32 instead)
            "onednn_bf16": torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def describe() -> str:
    """One line for a benchmark's header."""
    i = cpu_info()
    return (f"cpu: {i['model']}, {i['logical_cores']} logical cores; flags: {' '.join(i['flags']) or 'none of interest'}"
            f"; ATen capability {i['aten_capability']}; oneDNN max ISA {i['onednn_max_isa']}; bf16 "
            f"{'native' if i['native_bf16'] else 'emulated'} (oneDNN bf16 kernels: {'yes' if i['onednn_bf16'] else 'no'})")
