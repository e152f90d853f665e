"""What bf16 costs on this CPU's kernels: matmul rates, operand layouts, and MaxViT's layers under bf16 autocast.

Run it twice to see what an AVX2-only CPU does, once plain and once with every kernel library capped at AVX2:

    .venv/bin/python benchmarks/bf16_kernels.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 .venv/bin/python benchmarks/bf16_kernels.py

Three tables, process CPU time (best of a few calls, 1 thread by default):

1. a 512^3 matmul and a depthwise 3x3 convolution in fp32 and bf16;
2. a (196, 256) x (256, 1024) bf16 product for each operand layout (row- or column-major), against fp32;
3. forward + backward under bf16 autocast of MaxViT's layers at batch 1, as timm writes them (channels-first
   ``nn.Conv2d``, ``F.scaled_dot_product_attention``) and as visattn does (channels-last ``Conv1x1`` /
   ``SameConv2d``, ``attend`` with a trainable bias), the latter with :mod:`visattn.layers.amp`'s fp32 path off (all
   bf16, as autocast asks) and on its default (fp32 where oneDNN has no bf16).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from visattn.layers.amp import use_fp32_gemms
from visattn.layers.attend import attend
from visattn.layers.conv import Conv1x1, SameConv2d
from visattn.machine import describe


def cpu_ms(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best process CPU time of ``fn()`` in ms, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return 1e3 * best


def fwd_bwd(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], None]:
    x = x.detach().requires_grad_()

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.float().sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(describe())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n")

    print("| kernel | fp32 ms | bf16 ms | fp32 GFLOP/s | bf16 GFLOP/s |\n| --- | --- | --- | --- | --- |")
    t = {}
    for dt in (torch.float32, torch.bfloat16):
        a, b = torch.randn(512, 512).to(dt), torch.randn(512, 512).to(dt)
        t[dt] = cpu_ms(lambda a=a, b=b: a @ b, 5)
    flops = 2 * 512**3 / 1e6
    print(f"| 512^3 matmul | {t[torch.float32]:.2f} | {t[torch.bfloat16]:.2f} | {flops / t[torch.float32]:.0f} | "
          f"{flops / t[torch.bfloat16]:.1f} |")
    for dt in (torch.float32, torch.bfloat16):
        x, w = torch.randn(2, 256, 56, 56).to(dt), torch.randn(256, 1, 3, 3).to(dt)
        t[dt] = cpu_ms(lambda x=x, w=w: F.conv2d(x, w, padding=1, groups=256))
    print(f"| depthwise 3x3, (2, 256, 56, 56) | {t[torch.float32]:.2f} | {t[torch.bfloat16]:.2f} | | |")

    M, K, N = 196, 256, 1024
    print(f"\n({M}, {K}) x ({K}, {N}) product by operand layout (row-major: last dimension contiguous)\n")
    print("| A | B | bf16 ms | fp32 ms |\n| --- | --- | --- | --- |")
    for a_cols in (False, True):
        for b_cols in (False, True):
            row = []
            for dt in (torch.bfloat16, torch.float32):
                a = torch.randn(K, M).to(dt).t() if a_cols else torch.randn(M, K).to(dt)
                b = torch.randn(N, K).to(dt).t() if b_cols else torch.randn(K, N).to(dt)
                row.append(cpu_ms(lambda a=a, b=b: a @ b))
            print(f"| {'column' if a_cols else 'row'}-major | {'column' if b_cols else 'row'}-major | {row[0]:.1f} | "
                  f"{row[1]:.1f} |")

    print("\nMaxViT's layers, forward + backward under bf16 autocast, batch 1 (ms)\n")
    print("| layer | timm's form | visattn's form, fp32 path off | visattn's form, default |\n"
          "| --- | --- | --- | --- |")
    cl = torch.channels_last
    cases: list[tuple[str, Callable, Callable, torch.Tensor, torch.Tensor]] = []
    for cin, cout, hw in ((1024, 256, 14), (64, 256, 56), (256, 64, 56), (2048, 512, 7)):
        x = torch.randn(1, cin, hw, hw)
        cases.append((f"1x1 conv {cin} -> {cout} at {hw}x{hw}", nn.Conv2d(cin, cout, 1), Conv1x1(cin, cout), x,
                      x.contiguous(memory_format=cl)))
    for c, hw in ((256, 56), (1024, 14)):
        x = torch.randn(1, c, hw, hw)
        cases.append((f"depthwise 3x3, {c} channels at {hw}x{hw}", nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
                      SameConv2d(c, c, 3, 1, groups=c, bias=False), x, x.contiguous(memory_format=cl)))
    x = torch.randn(1, 64, 112, 112)
    cases.append(("stem 3x3 conv 64 -> 64 at 112x112", nn.Conv2d(64, 64, 3, padding=1), SameConv2d(64, 64, 3, 1), x,
                  x.contiguous(memory_format=cl)))
    for windows, heads in ((64, 2), (16, 4), (4, 8)):
        k, v = torch.randn(windows, heads, 49, 32), torch.randn(windows, heads, 49, 32)
        bias = torch.randn(heads, 49, 49, requires_grad=True)  # a trainable relative position bias

        def timm_form(q: torch.Tensor, k=k, v=v, bias=bias) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

        def visattn_form(q: torch.Tensor, k=k, v=v, bias=bias) -> torch.Tensor:
            return attend(q, k, v, bias=bias)

        q = torch.randn(windows, heads, 49, 32)
        cases.append((f"attention, {windows} windows x {heads} heads of 49 tokens", timm_form, visattn_form, q, q))
    for name, theirs, ours, x_theirs, x_ours in cases:
        t_theirs = cpu_ms(fwd_bwd(theirs, x_theirs))
        with use_fp32_gemms(False):
            t_off = cpu_ms(fwd_bwd(ours, x_ours))
        t_default = cpu_ms(fwd_bwd(ours, x_ours))
        print(f"| {name} | {t_theirs:.1f} | {t_off:.1f} | {t_default:.1f} |", flush=True)


if __name__ == "__main__":
    main()
