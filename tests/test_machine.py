"""The machine report every benchmark records, the bf16-emulation warning, and the fused inference paths checked
with the kernels an AVX2-only CPU gets (forced on this CPU through ATen's and oneDNN's ISA caps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from visattn import machine
from visattn.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_info_names_what_decides_the_kernels() -> None:
    info = machine.cpu_info()
    assert set(info) >= {"model", "flags", "aten_capability", "onednn_max_isa", "mkl_instructions", "native_bf16"}
    assert all(f in machine.FLAGS_OF_INTEREST for f in info["flags"])
    line = machine.describe()
    assert "ATen capability" in line and "oneDNN max ISA" in line and "MKL " in line and "bf16" in line
    assert machine.native_bf16({"avx2", "avx512_bf16"}) and machine.native_bf16({"amx_bf16"})
    assert not machine.native_bf16({"avx2", "fma", "avx512f"})


def test_describe_reports_the_mkl_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert "MKL AVX2" in machine.describe()


XEON = ("Intel(R) Xeon(R) Platinum 8480+", {"avx", "avx2", "fma", "avx512f", "amx_tile"})
EPYC = ("AMD EPYC 7763 64-Core Processor", {"avx", "avx2", "fma"})
AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.parametrize(("cpu", "env", "slug"), [
    (XEON, {}, "xeon-avx512-amx"),
    (EPYC, {}, "epyc-avx2"),
    (("AMD EPYC 9654 96-Core Processor", {"avx2", "avx512f"}), {}, "epyc-avx512"),
    (XEON, AVX2_CAPS, "xeon-avx512-amx-avx2-capped"),
    # two of three caps is not an AVX2 machine (torch's matmuls still run MKL's AVX-512 sgemm): the slug says so
    (XEON, {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
     "xeon-avx512-amx-avx2-capped-aten-onednn-only"),
    (XEON, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
     "xeon-avx512-amx-capped-onednn-avx512-mkl-avx2"),
    # caps at or above what the CPU / the library has cap nothing
    (XEON, {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "ALL", "MKL_ENABLE_INSTRUCTIONS": ""},
     "xeon-avx512-amx"),
    (EPYC, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}, "epyc-avx2"),
    (EPYC, {"ATEN_CPU_CAPABILITY": "default"}, "epyc-avx2-scalar-capped-aten-only"),
    (("Neoverse-V2", set()), {}, "aarch64"),
])
def test_machine_slug(cpu: tuple[str, set[str]], env: dict[str, str], slug: str) -> None:
    model, flags = cpu
    assert machine.machine_slug(model, flags, env, arch="aarch64" if not flags else "x86_64") == slug


def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(machine, "native_bf16", lambda flags=None: False)
    # --epochs 0 is refused after the warning: nothing trains, the check is what is tested
    main(["train", "--model", "maxvit_tiny", "--amp", "bf16", "--epochs", "0", "--device", "cpu",
          "--out", str(tmp_path / "r")])
    assert "--amp bf16 on a CPU without AVX512-BF16 or AMX" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="ISA caps through environment variables: Linux x86 builds")
def test_fused_paths_agree_with_reference_on_avx2_kernels() -> None:
    """The fused-vs-reference parity of every model and attention module, in a process whose ATen, oneDNN and MKL
    kernels are capped at AVX2 (what an AVX2-only CPU runs); the default run of the same tests covers this CPU's."""
    env = {**os.environ, **AVX2_CAPS, "OMP_NUM_THREADS": "1"}
    check = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    cap = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True)
    assert cap.stdout.strip() in ("AVX2", "DEFAULT"), cap.stdout
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "tests/test_models.py::test_fused_and_reference_attention_agree",
                           "tests/test_attention.py::test_fused_matches_reference",
                           "tests/test_layers.py::test_attend_fused_matches_reference_with_bias_and_mask"],
                          check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
