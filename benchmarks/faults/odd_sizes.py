"""Odd-sized inputs through every registered model and attention module (fp32): no crash, no leak across samples.

For each model family (its reduced ``test_overrides`` config, eval mode) and each attention module
(``example_kwargs``), at random odd, non-square sizes (models: from the minimum to 3 x minimum + 7; attention: 1 to 41, several windows
with a padded remainder),
a batch of 3 is checked for:

* no crash: the forward runs, or raises a ``ValueError`` (a clear refusal; counted apart);
* shape: the output has the shape the module promises (attention: (B, C', H, W); models: ``output_shape`` or
  (B, num_classes));
* finite: no NaN / inf;
* batch independence: each sample run alone gives the same output as in the batch (a wrong reshape in a window /
  grid partition, its padding or its reverse mixes samples), max abs difference <= 1e-4 x output scale;
* perturbation locality across the batch: changing sample 0 leaves samples 1 and 2 unchanged.

    python benchmarks/faults/odd_sizes.py                        # 3 sizes each, about 1-2 minutes on 2 cores
    python benchmarks/faults/odd_sizes.py --sizes 8 --seed 1
"""

from __future__ import annotations

import argparse
import random
import time

from _common import print_table


def _sizes(low: int, high: int, count: int, rng: random.Random) -> list[tuple[int, int]]:
    """``count`` distinct odd, non-square (H, W) in [low, high]."""
    out = []
    while len(out) < count:
        h, w = rng.randint(low, high) | 1, rng.randint(low, high) | 1
        if h != w and (h, w) not in out:
            out.append((h, w))
    return out


def _close(a, b, scale: float) -> float:
    return float((a - b).abs().max()) / scale


def check(name: str, module, inputs: tuple, expected_shape: tuple[int, ...]) -> dict[str, object]:
    """Run the checks on one module and one batch of 3; a dict of outcomes."""
    import torch

    row: dict[str, object] = {"module": name, "size": "x".join(map(str, inputs[0].shape[-2:]))}
    try:
        with torch.no_grad():
            full = module(*inputs)
    except ValueError as err:
        row.update(result="refused", detail=str(err).splitlines()[0][:80])
        return row
    except Exception as err:  # noqa: BLE001 - a crash is what this script counts
        row.update(result="CRASH", detail=f"{type(err).__name__}: {str(err).splitlines()[0][:80]}")
        return row
    problems = []
    if tuple(full.shape) != tuple(expected_shape):
        problems.append(f"shape {tuple(full.shape)} != {tuple(expected_shape)}")
    if not torch.isfinite(full).all():
        problems.append("non-finite output")
    scale = max(float(full.abs().max()), 1e-6)
    with torch.no_grad():
        alone = torch.cat([module(*(x[i:i + 1] for x in inputs)) for i in range(full.shape[0])])
        perturbed = [x.clone() for x in inputs]
        perturbed[0][0] = torch.randn_like(perturbed[0][0])
        changed = module(*perturbed)
    independence = _close(full, alone, scale)
    locality = _close(full[1:], changed[1:], scale)
    if independence > 1e-4:
        problems.append(f"batch dependence {independence:.1e}")
    if locality > 1e-4:
        problems.append(f"sample 0 leaks into others {locality:.1e}")
    row.update(result="ok" if not problems else "FAIL", detail="; ".join(problems),
               independence=f"{independence:.1e}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, default=3, help="random odd sizes per module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-k", dest="only", help="only modules whose name contains this")
    args = parser.parse_args()
    import torch

    import visattn
    from visattn.registry import get_attention_class, get_model_class, list_families

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    rows = []
    start = time.perf_counter()
    for name in list_families():
        cls = get_model_class(name)
        if args.only and args.only not in name:
            continue
        model = visattn.create_model(name, **cls.test_overrides).eval()
        for size in _sizes(cls.min_input_size, 3 * cls.min_input_size + 7, args.sizes, rng):
            inputs = model.example_inputs(3, size)
            shape = (tuple(model.output_shape(tuple(inputs[0].shape))) if hasattr(model, "output_shape")
                     else (3, model.config.num_classes))
            rows.append(check(f"model {name}", model, inputs, shape))
            print(rows[-1], flush=True)
    for name in visattn.list_attention():
        if args.only and args.only not in name:
            continue
        cls = get_attention_class(name)
        kwargs = cls.example_kwargs()
        module = visattn.create_attention(name, **kwargs).eval()
        shape_fn = getattr(cls, "example_input_shape", None)
        base = shape_fn() if shape_fn is not None else (2, kwargs["dim"], 13, 21)
        for size in _sizes(1, 41, args.sizes, rng):           # windows of 2 to 8 in example_kwargs
            x = torch.randn(3, *base[1:-2], *size)
            shape = (tuple(module.output_shape(tuple(x.shape))) if hasattr(module, "output_shape")
                     else (3, getattr(module, "dim_out", None) or module.dim, *x.shape[2:]))
            rows.append(check(f"attention {name}", module, (x,), shape))
            print(rows[-1], flush=True)
    print()
    print_table(rows, ["module", "size", "result", "independence", "detail"])
    count = {k: sum(r["result"] == k for r in rows) for k in ("ok", "refused", "FAIL", "CRASH")}
    print(f"\n{len(rows)} module x size cases in {time.perf_counter() - start:.0f}s: {count['ok']} ok, "
          f"{count['refused']} refused with a ValueError, {count['FAIL']} failed a check, {count['CRASH']} crashed")


if __name__ == "__main__":
    main()
