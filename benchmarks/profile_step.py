"""Where a training step's CPU time goes, op by op: visattn and timm side by side on the same weights.

Runs one training step (forward + cross-entropy + backward + AdamW) of each model after a warm-up step and charges
every ATen op the process CPU time it took (a ``TorchDispatchMode`` reading the process clock around each op), so the
tables hold when other processes share the cores, which a wall-clock profiler's do not. Use one thread. Prints two
markdown tables per model: CPU time by op, and by (op, operand shapes / strides / dtypes) for the matmuls,
convolutions and dtype conversions.

    REF/bin/python benchmarks/profile_step.py --model maxvit_tiny --batch 1 --dtype bf16
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        REF/bin/python benchmarks/profile_step.py --model maxvit_tiny --batch 1      # what an AVX2-only CPU runs

``--no-timm`` profiles visattn alone (no timm needed).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import visattn
from visattn.machine import describe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_timm import PAIRS

DETAILED = {"mm", "addmm", "bmm", "baddbmm", "convolution", "convolution_backward", "_to_copy"}


class OpClock(TorchDispatchMode):
    """Process CPU seconds per ATen op, and per (op, operands) for the ops in ``DETAILED``."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: collections.Counter[str] = collections.Counter()
        self.by_call: collections.Counter[tuple] = collections.Counter()
        self.calls: collections.Counter[tuple] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.process_time_ns()
        out = func(*args, **(kwargs or {}))
        spent = time.process_time_ns() - start
        name = func.overloadpacket.__name__
        self.by_op[name] += spent
        if name in DETAILED:
            operands = tuple((tuple(a.shape), a.stride(), str(a.dtype).removeprefix("torch."))
                             for a in args if isinstance(a, torch.Tensor))[:3]
            self.by_call[name, operands] += spent
            self.calls[name, operands] += 1
        return out


def build(name: str, with_timm: bool) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    ours = visattn.create_model(name)
    if not with_timm:
        return {"visattn": ours}
    import timm

    theirs = timm.create_model(PAIRS[name], pretrained=False, num_classes=1000)
    visattn.load_pretrained(ours, theirs.state_dict())
    return {"timm": theirs, "visattn": ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="maxvit_tiny", choices=list(PAIRS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="bf16", help="bf16: CPU autocast")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=15, help="rows of each table")
    parser.add_argument("--no-timm", action="store_true", help="profile visattn only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(describe())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 1000, (args.batch,))
    for key, model in build(args.model, not args.no_timm).items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        start = time.process_time()
        step()  # warm-up
        plain = time.process_time() - start
        clock = OpClock()
        with clock:
            step()
        total = sum(clock.by_op.values()) / 1e9
        print(f"\n### {key} {args.model}, {args.dtype}, batch {args.batch} at {args.size}: step {plain:.2f} s CPU "
              f"(unprofiled warm-up), {total:.2f} s CPU in ATen ops (profiled)\n")
        print("| op | CPU s | share |\n| --- | --- | --- |")
        for name, ns in clock.by_op.most_common(args.rows):
            print(f"| {name} | {ns / 1e9:.3f} | {ns / 1e9 / total:.1%} |")
        print("\n| op | operands: shape, strides, dtype | calls | CPU s |\n| --- | --- | --- | --- |")
        for (name, operands), ns in clock.by_call.most_common(args.rows):
            desc = "; ".join(f"{s} {st} {d}" for s, st, d in operands)
            print(f"| {name} | {desc} | {clock.calls[name, operands]} | {ns / 1e9:.3f} |")


if __name__ == "__main__":
    main()
