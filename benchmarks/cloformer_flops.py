"""FLOPs of the CloFormer variants at 224x224 (``torch.utils.flop_counter``), against the paper and the official code.

    .venv/bin/python benchmarks/cloformer_flops.py                      # visattn only (meta device, no compute)
    REF/bin/python benchmarks/cloformer_flops.py --official /path/to/CloFormer/classification [--time 5]

With ``--time N`` (needs ``--official``) it also times N interleaved eval forwards of visattn and the official model
(same weights, batch 4) per variant on the CPU and prints the median time ratio visattn / official.

``FlopCounterMode`` counts 2 FLOPs per multiply-accumulate of convolutions and matrix products and nothing for
norms, activations, pooling or elementwise products; the paper's "FLOPs" (0.6G / 1.1G / 2.0G) are multiply-
accumulates (MACs) in the usual fvcore sense, so the table prints both. With ``--official`` the official model is
counted the same way on one real 224 image (its ``view`` needs real sizes; the count does not depend on values).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import visattn  # noqa: E402

PAPER_GMACS = {"cloformer_xxs": 0.6, "cloformer_xs": 1.1, "cloformer_s": 2.0}


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def time_ratio(ours: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds per forward of ``ours`` and ``ref``, interleaved so both see the same machine load."""
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.no_grad():
        for model in (ours, ref):  # warm-up
            model(x)
        for _ in range(repeats):
            for i, model in enumerate((ours, ref)):
                start = time.perf_counter()
                model(x)
                times[i].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, help="folder holding the official 'models' package")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--time", type=int, default=0, help="timed forwards per model (0: FLOPs only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    official = None
    if args.official is not None:
        sys.path.insert(0, str(args.official.resolve()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from models import model_factory as official  # type: ignore[import-not-found]

    print(f"{'variant':15s} {'GFLOPs':>8s} {'GMACs':>7s} {'paper':>6s} {'official GFLOPs':>16s} {'ratio':>6s}")
    for name, paper in PAPER_GMACS.items():
        with torch.device("meta"):
            model = visattn.create_model(name).eval()
            ours = count_flops(model, torch.empty(1, 3, args.size, args.size))
        ref_text, ratio_text = "-", "-"
        if official is not None:
            ref_model = getattr(official, name)().eval()
            ref = count_flops(ref_model, torch.randn(1, 3, args.size, args.size))
            ref_text, ratio_text = f"{ref / 1e9:.4f}", f"{ours / ref:.4f}"
        print(f"{name:15s} {ours / 1e9:8.4f} {ours / 2e9:7.4f} {paper:6.1f} {ref_text:>16s} {ratio_text:>6s}")
        if official is not None and args.time > 0:
            model = visattn.create_model(name).eval()
            visattn.load_pretrained(model, ref_model.state_dict())
            x = torch.randn(4, 3, args.size, args.size)
            ours_s, ref_s = time_ratio(model, ref_model, x, args.time)
            print(f"  time per batch of 4: visattn {ours_s * 1e3:.1f} ms, official {ref_s * 1e3:.1f} ms, "
                  f"ratio {ours_s / ref_s:.3f}")


if __name__ == "__main__":
    main()
