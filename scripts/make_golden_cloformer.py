"""CloFormer reference files: key/shape manifests of the official models and golden outputs of reduced ones.

The official code (qhfan/CloFormer) is not part of this repository. Check it out anywhere outside the repo and
point this script at the folder that holds its ``models`` package, then run it in the reference environment
(which also needs ``efficientnet_pytorch`` for the official Swish):

    REF/bin/python scripts/make_golden_cloformer.py /path/to/CloFormer/classification

It writes
- ``tests/golden/cloformer_manifest_cloformer_{xxs,xs,s}.json``: every official state-dict key with its shape and
  the official parameter count, for the key-mapping test (run on the meta device, no weights);
- ``tests/golden/cloformer_*.safetensors``: a reduced official model with random weights and randomised norm
  statistics, an input and the official output, with the visattn model name and config overrides that describe
  the same architecture (same layout as ``scripts/make_golden.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden"

# The official factory configs (classification/models/model_factory.py), by visattn variant name.
FULL = {
    "cloformer_xxs": dict(embed_dims=[32, 64, 128, 256], num_heads=[4, 4, 8, 16],
                          group_splits=[[3, 1], [2, 2], [4, 4], [4, 12]]),
    "cloformer_xs": dict(embed_dims=[48, 96, 160, 352], num_heads=[3, 6, 10, 22],
                         group_splits=[[2, 1], [3, 3], [5, 5], [7, 15]]),
    "cloformer_s": dict(embed_dims=[64, 128, 224, 448], num_heads=[4, 8, 14, 28],
                        group_splits=[[3, 1], [4, 4], [7, 7], [7, 21]]),
}
SHARED = dict(in_chans=3, num_classes=1000, depths=[2, 2, 6, 2], kernel_sizes=[[3], [5], [7], [9]],
              window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5, 5, 5, 5], mlp_ratios=[4, 4, 4, 4])

# A reduced official model that still has every code path: two local groups with different kernels (stage 2), a
# stage without global heads (stage 3), pooled and unpooled global branches, a ConvFFN kernel other than 5.
REDUCED = dict(in_chans=3, num_classes=10, embed_dims=[16, 24, 32, 48], depths=[1, 2, 1, 1], num_heads=[2, 3, 2, 3],
               group_splits=[[1, 1], [1, 1, 1], [2, 0], [1, 2]], kernel_sizes=[[3], [3, 5], [5], [3]],
               window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5, 5, 3, 5], mlp_ratios=[2, 2, 2, 2])
REDUCED_OURS = dict(num_classes=10, dims=[16, 24, 32, 48], depths=[1, 2, 1, 1], num_heads=[2, 3, 2, 3],
                    group_splits=[[1, 1], [1, 1, 1], [2, 0], [1, 2]], kernel_sizes=[[3], [3, 5], [5], [3]],
                    window_sizes=[8, 4, 2, 1], mlp_kernel_sizes=[5, 5, 3, 5], mlp_ratios=[2.0, 2.0, 2.0, 2.0])
# (input size, batch): the official code needs every stage size divisible by its pool window (input % 32 == 0).
GOLDEN_CASES = {"cloformer_reduced_128": (128, 2), "cloformer_reduced_96": (96, 1)}


def _official_class(folder: Path) -> type[torch.nn.Module]:
    sys.path.insert(0, str(folder))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the official code imports timm.models.layers
        from models.CloFormer import CloFormer  # type: ignore[import-not-found]
    return CloFormer


def _randomize_norms(model: torch.nn.Module, g: torch.Generator) -> None:
    # Fresh norms (mean 0, var 1, weight 1, bias 0) would hide a swapped statistic or a norm applied in the wrong place.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
        if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm)):
            m.weight.data.normal_(1, 0.2, generator=g)
            m.bias.data.normal_(0, 0.2, generator=g)


def write_manifests(official: type[torch.nn.Module]) -> None:
    for name, cfg in FULL.items():
        model = official(**SHARED, **cfg, drop_path_rate=0.0)  # built on CPU: the official code calls .item()
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        params = sum(p.numel() for p in model.parameters())
        meta = {"reference": f"qhfan/CloFormer model_factory.{name}()", "num_classes": 1000, "params": params}
        path = OUT / f"cloformer_manifest_{name}.json"
        # One key per line: small, and readable in a diff.
        lines = [f"{json.dumps(k)}: {json.dumps(s)}" for k, s in shapes.items()]
        path.write_text('{"meta": ' + json.dumps(meta) + ',\n"shapes": {\n' + ",\n".join(lines) + "\n}}\n")
        print(f"{path.name}: {len(shapes)} keys, {params} parameters")


def write_golden(official: type[torch.nn.Module]) -> None:
    from safetensors.torch import save_file

    for case, (size, batch) in GOLDEN_CASES.items():
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = official(**REDUCED, drop_path_rate=0.0).eval()
        _randomize_norms(model, g)
        x = torch.randn(batch, 3, size, size, generator=g)
        with torch.no_grad():
            y = model(x)
        tensors = {f"state.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
        tensors["input"], tensors["output"] = x.contiguous(), y.contiguous()
        meta = {"reference": "qhfan/CloFormer models.CloFormer.CloFormer", "reference_kwargs": REDUCED,
                "torch": torch.__version__, "visattn_model": "cloformer_xxs", "visattn_overrides": REDUCED_OURS}
        path = OUT / f"{case}.safetensors"
        save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})
        print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB, output {tuple(y.shape)}, "
              f"|y| max {y.abs().max():.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="folder holding the official 'models' package "
                        "(CloFormer/classification)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    official = _official_class(args.official.resolve())
    OUT.mkdir(parents=True, exist_ok=True)
    write_manifests(official)
    write_golden(official)


if __name__ == "__main__":
    main()
