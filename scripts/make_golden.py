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


def _randomize_davit(model: torch.nn.Module, generator: torch.Generator) -> None:
    # timm's init (LayerNorm 1/0, linear std 0.02) makes every attention map nearly uniform and every norm an
    # identity; wider random weights make a swapped q/k/v role, a wrong scale or a wrong norm visible. Std 0.1, not
    # more: at 0.2 float32 rounding alone moves timm's logits by ~1e-4 from its float64 result (measured).
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.data.normal_(1.0, 0.2, generator=generator)
        else:
            p.data.normal_(0.0, 0.1, generator=generator)


def _official_davit_class() -> type[torch.nn.Module] | None:
    """The official ``DaViT`` class (dingmyu/davit ``timm/models/davit.py``), or None without its source.

    Set ``VISATTN_DAVIT_OFFICIAL`` to that file (``git show HEAD:timm/models/davit.py`` from a clone). It was
    written against timm 0.4; its relative imports are served from today's timm by stub modules.
    """
    import os
    import sys
    import types

    path = os.environ.get("VISATTN_DAVIT_OFFICIAL")
    if not path:
        return None
    import timm.layers

    def passthrough(fn):
        return fn

    pkg = types.ModuleType("davit_official")
    pkg.__path__ = []
    stubs = {
        "helpers": {"build_model_with_cfg": None, "overlay_external_default_cfg": None},
        "layers": {"DropPath": timm.layers.DropPath, "to_2tuple": timm.layers.to_2tuple,
                   "trunc_normal_": timm.layers.trunc_normal_},
        "registry": {"register_model": passthrough},
        "vision_transformer": {"checkpoint_filter_fn": None, "_init_vit_weights": lambda m: None},
    }
    sys.modules["davit_official"] = pkg
    for sub, names in stubs.items():
        mod = types.ModuleType(f"davit_official.{sub}")
        mod.__dict__.update(names)
        sys.modules[f"davit_official.{sub}"] = mod
    module = types.ModuleType("davit_official.davit")
    module.__package__ = "davit_official"
    exec(compile(Path(path).read_text(), path, "exec"), module.__dict__)
    return module.DaViT


def davit_cases() -> None:
    import timm

    # Reduced DaViT-T: every code path (stem, downsample, spatial + channel blocks, 3 heads/groups), small widths.
    reduced = dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 2, 1), num_heads=(2, 2, 3, 4))
    ours = dict(dims=[16, 32, 48, 64], depths=[1, 1, 2, 1], num_heads=[2, 2, 3, 4], num_classes=10)
    cases = {
        # 224: stage maps 56, 28, 14, 7, all divisible by the window, so no padding anywhere.
        "davit_224": dict(size=(224, 224), batch=1, mask_padding=True),
        # 200 x 232: stage maps 50x58, 25x29, 13x15, 7x8; timm pads windows (and downsamples) with zero tokens that
        # stay visible as keys, which visattn reproduces with mask_padding=False.
        "davit_pad_200x232": dict(size=(200, 232), batch=1, mask_padding=False),
    }
    for case, c in cases.items():
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = timm.create_model("davit_tiny", pretrained=False, num_classes=10, **reduced)
        _randomize_davit(model, g)
        x = torch.randn(c["batch"], 3, *c["size"], generator=g)
        meta = {"reference": "timm.create_model('davit_tiny')", "reference_kwargs": reduced,
                "timm": timm.__version__, "torch": torch.__version__,
                "visattn_model": "davit_tiny", "visattn_overrides": {**ours, "mask_padding": c["mask_padding"]}}
        _save(case, model, x, meta)
    with torch.device("meta"):
        model = timm.create_model("davit_tiny", pretrained=False)
    _save_manifest("davit_manifest_davit_tiny", model, {"reference": "davit_tiny"})

    official = _official_davit_class()
    if official is None:
        print("VISATTN_DAVIT_OFFICIAL not set: official-layout DaViT cases skipped")
        return
    # Official key layout: a reduced official model at 224 (its head: pool -> LayerNorm -> Linear, as timm's).
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = official(num_classes=10, drop_path_rate=0.0, **reduced)
    _randomize_davit(model, g)
    x = torch.randn(1, 3, 224, 224, generator=g)
    meta = {"reference": "dingmyu/davit timm/models/davit.py DaViT", "reference_kwargs": reduced,
            "torch": torch.__version__, "visattn_model": "davit_tiny",
            "visattn_overrides": {**ours, "mask_padding": True}}
    _save("davit_official_224", model, x, meta)
    # On the CPU, not the meta device: the official constructor calls .item() on a linspace.
    model = official(embed_dims=(96, 192, 384, 768), depths=(1, 1, 3, 1), num_heads=(3, 6, 12, 24))
    _save_manifest("davit_manifest_official_tiny", model, {"reference": "dingmyu/davit DaViT_tiny"})


CASES: dict[str, Callable[[], None]] = {"maxvit": maxvit_cases, "davit": davit_cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="families to regenerate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for family in args.only or sorted(CASES):
        CASES[family]()


if __name__ == "__main__":
    main()
