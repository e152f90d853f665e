"""Generate golden files: reduced reference models with random weights, an input, and the reference output.

Run in the reference environment (torch + timm + torchvision, see DEVELOPERS.md), never in CI:

    REF/bin/python scripts/make_golden.py [--only maxvit]

Each case writes ``tests/golden/<case>.safetensors`` holding the reference state dict (keys prefixed ``state.``),
``input`` and ``output``; the safetensors metadata records the reference model, its arguments, and the visattn
model name with the config overrides that describe the same architecture. The files are small (< 1 MB) and are
regenerated, never edited by hand.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "golden"


def _save(case: str, model: torch.nn.Module, x: torch.Tensor, meta: dict) -> None:
    model.eval()
    with torch.no_grad():
        y = model(x)
    tensors = {f"state.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors["input"] = x.contiguous()
    tensors["output"] = y.contiguous()
    from safetensors.torch import save_file

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{case}.safetensors"
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})
    print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB, output {tuple(y.shape)}")


def _randomize_norm_stats(model: torch.nn.Module, generator: torch.Generator) -> None:
    # Fresh BatchNorms have mean 0 / var 1 and would hide a wrong eps or a swapped running stat.
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.2, generator=generator)
            m.running_var.uniform_(0.5, 2.0, generator=generator)
            m.weight.data.normal_(1, 0.2, generator=generator)
            m.bias.data.normal_(0, 0.2, generator=generator)
    for name, p in model.named_parameters():
        if name.endswith("relative_position_bias_table"):
            p.data.normal_(0, 0.5, generator=generator)


def maxvit_cases() -> None:
    import timm

    # Reduced MaxViT-T: same code paths (stride-2 "same" convs, SE, block + grid attention, tanh head), small widths.
    reduced = dict(embed_dim=(16, 32, 48, 64), depths=(1, 2, 1, 1), stem_width=(16, 16), head_hidden_size=64,
                   transformer_dim_head=16)
    ours = dict(stem_width=16, dims=[16, 32, 48, 64], depths=[1, 2, 1, 1], head_dim=16, head_hidden_size=64,
                num_classes=10)
    cases = {
        # P = 7 at 224 (the maxvit_*_224 setting)
        "maxvit_tf_p7_224": dict(img_size=224, batch=1, partition=7),
        # P = 4 at 128: timm derives P = img_size // 32; a second partition size checks the bias indexing
        "maxvit_tf_p4_128": dict(img_size=128, batch=2, partition=4),
    }
    for case, c in cases.items():
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = timm.create_model("maxvit_tiny_tf_224", pretrained=False, num_classes=10, img_size=c["img_size"],
                                  **reduced)
        _randomize_norm_stats(model, g)
        x = torch.randn(c["batch"], 3, c["img_size"], c["img_size"], generator=g)
        meta = {"reference": "timm.create_model('maxvit_tiny_tf_224')", "reference_kwargs": reduced,
                "timm": timm.__version__, "torch": torch.__version__,
                "visattn_model": "maxvit_tiny", "visattn_overrides": {**ours, "partition_size": c["partition"]}}
        _save(case, model, x, meta)
    # Full-size key/shape manifests: every timm key must map onto visattn's full-size models (checked on meta).
    manifests = {"maxvit_base_tf_384": dict(num_classes=1000), "maxvit_tiny_tf_224": dict(num_classes=1000)}
    for timm_name, kwargs in manifests.items():
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False, **kwargs)
        _save_manifest(f"maxvit_manifest_{timm_name}", model, {"reference": timm_name, **kwargs})


def _save_manifest(case: str, model: torch.nn.Module, meta: dict) -> None:
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    path = OUT / f"{case}.json"
    path.write_text(json.dumps({"meta": meta, "shapes": shapes}, indent=0))
    print(f"{path.name}: {len(shapes)} keys")


CASES: dict[str, Callable[[], None]] = {"maxvit": maxvit_cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="families to regenerate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for family in args.only or sorted(CASES):
        CASES[family]()


if __name__ == "__main__":
    main()
