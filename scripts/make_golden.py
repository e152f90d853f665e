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
        elif name.endswith(".bias"):
            # timm initialises conv and linear biases to zero, which would hide a dropped bias
            p.data.normal_(0, 0.1, generator=generator)


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


def _randomize_mvit(model: torch.nn.Module, generator: torch.Generator) -> None:
    # Reference init leaves every LayerNorm an identity and the relative position tables near zero (std 0.02), which
    # would hide a wrong eps, a skipped pooling norm or a wrong table index; give them visible random values.
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("rel_pos_") or leaf in ("spatial_pos", "temporal_pos", "class_pos", "class_token"):
            p.data.normal_(0.0, 0.3, generator=generator)
        elif p.ndim == 1 and ("norm" in name and leaf == "weight"):
            p.data.normal_(1.0, 0.2, generator=generator)
        elif p.ndim == 1 and "norm" in name:
            p.data.normal_(0.0, 0.2, generator=generator)


def _official_mvit_class() -> type[torch.nn.Module] | None:
    """The official image ``MViT`` class (facebookresearch/mvit ``mvit/models/mvit_model.py``), or None.

    Set ``VISATTN_MVIT_OFFICIAL`` to a checkout of that repository (the folder holding ``mvit/``). Its fvcore
    registry, logging and misc helpers are replaced by stub modules; the model and attention files run unchanged.
    """
    import importlib
    import logging
    import os
    import sys
    import types

    root = os.environ.get("VISATTN_MVIT_OFFICIAL")
    if not root:
        return None

    class _Registry:
        def register(self, obj=None):
            return obj if obj is not None else (lambda o: o)

    packages = {"mvit": "mvit", "mvit.utils": "mvit/utils", "mvit.models": "mvit/models"}
    for name, sub in packages.items():
        pkg = types.ModuleType(name)
        pkg.__path__ = [os.path.join(root, sub)]
        sys.modules[name] = pkg
    stubs = {
        "mvit.utils.logging": {"get_logger": logging.getLogger},
        "mvit.utils.misc": {"validate_checkpoint_wrapper_import": lambda wrapper: None},
        "mvit.models.build": {"MODEL_REGISTRY": _Registry()},
    }
    for name, attrs in stubs.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
    return importlib.import_module("mvit.models.mvit_model").MViT


def _official_mvit_cfg(img_size: int, depths: tuple[int, ...], embed: int, heads: int, cls: bool,
                       in_att: bool) -> object:
    from types import SimpleNamespace

    starts = [sum(depths[:i]) for i in range(1, len(depths))]
    depth = sum(depths)
    mvit = dict(
        MODE="conv", POOL_FIRST=False, CLS_EMBED_ON=cls, PATCH_KERNEL=[7, 7], PATCH_STRIDE=[4, 4],
        PATCH_PADDING=[3, 3], EMBED_DIM=embed, NUM_HEADS=heads, MLP_RATIO=4.0, QKV_BIAS=True, DROPPATH_RATE=0.0,
        DEPTH=depth, DIM_MUL=[[s, 2.0] for s in starts], HEAD_MUL=[[s, 2.0] for s in starts],
        POOL_KV_STRIDE=None, POOL_KV_STRIDE_ADAPTIVE=[4, 4],
        POOL_Q_STRIDE=[[i, 2, 2] if i in starts else [i, 1, 1] for i in range(depth)], POOL_KVQ_KERNEL=[3, 3],
        ZERO_DECAY_POS_CLS=False, USE_ABS_POS=False, REL_POS_SPATIAL=True, REL_POS_ZERO_INIT=False,
        RESIDUAL_POOLING=True, DIM_MUL_IN_ATT=in_att,
    )
    return SimpleNamespace(
        DATA=SimpleNamespace(TRAIN_CROP_SIZE=img_size, TEST_CROP_SIZE=img_size),
        MODEL=SimpleNamespace(NUM_CLASSES=10, DROPOUT_RATE=0.0, HEAD_ACT="softmax", ACT_CHECKPOINT=False),
        MVIT=SimpleNamespace(**mvit),
    )


def _torchvision_mvit_blocks(dims, depths, heads, kv_stride, v2: bool) -> list:
    """torchvision ``MSBlockConfig`` list of a reduced MViT v1 (``v2=False``) or MViTv2 (``v2=True``) video model."""
    from torchvision.models.video.mvit import MSBlockConfig

    blocks, kv, dim_in = [], list(kv_stride), dims[0]
    for s, depth in enumerate(depths):
        for j in range(depth):
            stride = [1, 2, 2] if (s > 0 and j == 0) else [1, 1, 1]
            if j == 0:
                kv = [max(k // q, 1) for k, q in zip(kv, stride)]
            if v2:
                out = dims[s]
            else:
                out = dims[min(s + 1, len(dims) - 1)] if j == depth - 1 else dims[s]
            pool_q = v2 or stride != [1, 1, 1]
            blocks.append(MSBlockConfig(num_heads=heads[s], input_channels=dim_in, output_channels=out,
                                        kernel_q=[3, 3, 3] if pool_q else [], kernel_kv=[3, 3, 3],
                                        stride_q=stride if pool_q else [], stride_kv=list(kv)))
            dim_in = out
    return blocks


def mvit_cases() -> None:
    import timm
    import torchvision
    from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

    # Reduced MViTv2-T (timm): per-stage widths and heads with head_dim 8, same pooling/strides/rel-pos code paths.
    dims, heads = (16, 24, 32, 48), (2, 3, 4, 6)
    base = dict(depths=(1, 2, 1, 1), embed_dim=dims, num_heads=heads)
    ours = dict(dims=list(dims), depths=[1, 2, 1, 1], num_heads=list(heads), num_classes=10)
    cases = {
        # The mvitv2_tiny layout at 224: tables used at exactly the size they were built for.
        "mvit_timm_224": (dict(), dict(), 224, 1),
        # Class token (timm adds the residual pooled query to it: residual_pool_cls=True) at 96.
        "mvit_timm_cls_96": (dict(use_cls_token=True), dict(cls_token=True, global_pool="token",
                                                            residual_pool_cls=True), 96, 2),
        # mvitv2_large layout: channels grow in the MLP of each stage's last block.
        "mvit_timm_mlpdim_96": (dict(expand_attn=False), dict(dim_mul_in_att=False), 96, 2),
        # Max pooling (no pooling norms).
        "mvit_timm_max_96": (dict(mode="max"), dict(pool_mode="max"), 96, 2),
    }
    for case, (extra, extra_ours, size, batch) in cases.items():
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        cfg = MultiScaleVitCfg(**base, **extra)
        model = MultiScaleVit(cfg, img_size=size, num_classes=10)
        _randomize_mvit(model, g)
        x = torch.randn(batch, 3, size, size, generator=g)
        meta = {"reference": "timm.models.mvitv2.MultiScaleVit(MultiScaleVitCfg(**kwargs), img_size, num_classes=10)",
                "reference_kwargs": {**base, **extra, "img_size": size}, "timm": timm.__version__,
                "torch": torch.__version__, "visattn_model": "mvitv2_tiny",
                "visattn_overrides": {**ours, **extra_ours, "img_size": [size, size]}}
        _save(case, model, x, meta)

    # Reduced torchvision video models: MViT v1 (separable absolute positions, class token) and MViTv2 (spatial and
    # temporal rel-pos, residual pooling that skips the class token), 4 frames of 64x64.
    from torchvision.models.video.mvit import MViT as TorchvisionMViT

    vdims, vheads, vdepths = (16, 32, 48, 64), (1, 2, 2, 4), (1, 2, 1, 1)
    video = {
        "mvit_tv_v1_video": (False, dict(residual_pool=False, residual_with_cls_embed=False, rel_pos_embed=False,
                                         proj_after_attn=False), "mvit_v1_base_16x4"),
        "mvit_tv_v2_video": (True, dict(residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True,
                                        proj_after_attn=True), "mvitv2_small_video"),
    }
    for case, (v2, flags, name) in video.items():
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        blocks = _torchvision_mvit_blocks(vdims, vdepths, vheads, (1, 8, 8), v2)
        model = TorchvisionMViT(spatial_size=(64, 64), temporal_size=4, block_setting=blocks, num_classes=10,
                                **flags)
        _randomize_mvit(model, g)
        x = torch.randn(2, 3, 4, 64, 64, generator=g)
        meta = {"reference": "torchvision.models.video.mvit.MViT(spatial_size=(64, 64), temporal_size=4, ...)",
                "reference_kwargs": {**flags, "dims": vdims, "depths": vdepths, "heads": vheads},
                "torchvision": torchvision.__version__, "torch": torch.__version__, "visattn_model": name,
                "visattn_overrides": {"dims": list(vdims), "depths": list(vdepths), "num_heads": list(vheads),
                                      "img_size": [4, 64, 64], "num_classes": 10}}
        _save(case, model, x, meta)

    # Official facebookresearch/mvit image model (optional): class token whose residual pooling is skipped, flat
    # ``blocks.N`` keys, ``blocks.N.proj`` channel projections in attention or in the MLP.
    official = _official_mvit_class()
    if official is None:
        print("VISATTN_MVIT_OFFICIAL not set: skipping the official facebookresearch/mvit cases")
    else:
        # (timm's pool-first attention cannot run: it multiplies q by untransposed keys; the official one can.)
        official_cases = (("mvit_official_cls_96", True, True, False), ("mvit_official_mlpdim_96", False, False, False),
                          ("mvit_official_poolfirst_96", False, True, True))
        for case, cls, in_att, pool_first in official_cases:
            g = torch.Generator().manual_seed(0)
            torch.manual_seed(0)
            depths = (1, 2, 1, 1)
            cfg = _official_mvit_cfg(96, depths, 8, 1, cls, in_att)
            cfg.MVIT.POOL_FIRST = pool_first
            model = official(cfg)
            model.head.act = torch.nn.Identity()  # logits, not the eval-time softmax
            _randomize_mvit(model, g)
            x = torch.randn(2, 3, 96, 96, generator=g)
            overrides = {"dims": [8, 16, 32, 64], "depths": list(depths), "num_heads": [1, 2, 4, 8],
                         "num_classes": 10, "img_size": [96, 96], "dim_mul_in_att": in_att, "pool_first": pool_first}
            if cls:
                overrides.update(cls_token=True, global_pool="token")
            meta = {"reference": "facebookresearch/mvit MViT(cfg), head.act removed", "torch": torch.__version__,
                    "visattn_model": "mvitv2_tiny", "visattn_overrides": overrides}
            _save(case, model, x, meta)
        cfg = _official_mvit_cfg(224, (1, 2, 5, 2), 96, 1, False, True)  # configs/MVITv2_T.yaml
        cfg.MODEL.NUM_CLASSES = 1000
        _save_manifest("mvit_manifest_official_T", official(cfg), {"reference": "facebookresearch/mvit MVITv2_T"})

    # Full-size key/shape manifests: every reference key must map onto visattn's full-size models (checked on meta).
    with torch.device("meta"):
        for timm_name in ("mvitv2_tiny", "mvitv2_large", "mvitv2_base_cls"):
            _save_manifest(f"mvit_manifest_{timm_name}", timm.create_model(timm_name), {"reference": timm_name})
        for tv_name in ("mvit_v1_b", "mvit_v2_s"):
            model = getattr(torchvision.models.video, tv_name)()
            _save_manifest(f"mvit_manifest_tv_{tv_name}", model, {"reference": f"torchvision {tv_name}"})


def seeded_resnet_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic random weights for a torchvision ResNet key/shape manifest (tests/test_catnet.py loads this
    function from here): the golden file stores key names, input and outputs, not 25M weights. Keys are visited sorted, so
    the tensors depend only on the names and shapes, never on module construction order."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.empty(shape).uniform_(0.5, 2.0, generator=g)
        elif len(shape) == 1 and key.endswith("weight"):                 # BatchNorm gamma
            state[key] = torch.empty(shape).normal_(0.6, 0.1, generator=g)
        elif len(shape) == 1:                                             # BatchNorm beta / running mean, fc bias
            state[key] = torch.empty(shape).normal_(0.0, 0.2, generator=g)
        else:                                                             # conv / fc weights, unit-variance fan-in
            fan_in = int(torch.tensor(shape[1:]).prod())
            state[key] = torch.randn(shape, generator=g) * fan_in ** -0.5
    return state


def catnet_cases() -> None:
    import torchvision

    # CAT-Net's MIFE is a torchvision-compatible ResNet. Manifests: every torchvision key and shape (checked on meta).
    for name in ("resnet50", "resnet101"):
        with torch.device("meta"):
            model = getattr(torchvision.models, name)()
        _save_manifest(f"catnet_manifest_{name}", model, {"reference": f"torchvision.models.{name}()",
                                                          "torchvision": torchvision.__version__})
    # Parity: the full ResNet-50, plain and dilated (output stride 8), with seeded weights, on a 72x88 input.
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 72, 88, generator=g)
    tensors = {"input": x}
    for case, dilate in (("output", [False, False, False]), ("output_dilated", [False, True, True])):
        model = torchvision.models.resnet50(replace_stride_with_dilation=dilate).eval()
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        model.load_state_dict(seeded_resnet_state(shapes, seed=0))
        with torch.no_grad():
            tensors[case] = model(x)
            if not any(dilate):                                          # the dilated map alone is 1.6 MB
                tensors["features"] = torch.nn.Sequential(*list(model.children())[:-2])(x)
    meta = {"reference": "torchvision.models.resnet50(replace_stride_with_dilation=...)", "weights":
            "seeded_resnet_state(shapes, seed=0)", "torchvision": torchvision.__version__, "torch": torch.__version__,
            "dilate": {"output": [False, False, False], "output_dilated": [False, True, True]}}
    path = OUT / "catnet_resnet50_seeded.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"meta": json.dumps(meta)})
    print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB, logits {tuple(tensors['output'].shape)}, "
          f"|logits| max {float(tensors['output'].abs().max()):.3g}")


# GRL: reduced official models (ofsoundof/GRL-Image-Restoration) with random weights; the official code is not part
# of this repository: VISATTN_GRL_OFFICIAL names a folder holding its ``models`` package (needs fairscale, omegaconf).
GRL_GOLDEN = {
    # pixelshuffle x2, GRL-B's CAB branch, fixed non-square stripes (H and W layers differ), both shifts, 20x28 input
    # reflect-padded to 24x32
    "grl_sr2_cab": (dict(in_channels=3, upscale=2, upsampler="pixelshuffle", embed_dim=18, depths=[4],
                         num_heads_window=[3], num_heads_stripe=[3], window_size=4, stripe_size=[8, 4],
                         stripe_groups=[None, None], anchor_window_down_factor=2, local_connection=True),
                    (1, 3, 20, 28)),
    # pixelshuffledirect x3 (GRL-T's head), stripes of W/2 and H/2 from stripe_groups, square input (the official
    # grouped vertical stripes need H == W), reflect-padded 22 -> 24
    "grl_sr3_direct_groups": (dict(in_channels=3, upscale=3, upsampler="pixelshuffledirect", embed_dim=24,
                                   depths=[4], num_heads_window=[2], num_heads_stripe=[2], window_size=4,
                                   stripe_size=[4, None], stripe_groups=[None, 2], anchor_window_down_factor=2),
                              (2, 3, 22, 22)),
    # grayscale denoising head (input residual), stripes 8x16 / 16x8, anchors pooled by 4, 30x20 -> 32x32
    "grl_denoise_gray": (dict(in_channels=1, upscale=1, upsampler="", embed_dim=24, depths=[4],
                              num_heads_window=[2], num_heads_stripe=[3], window_size=8, stripe_size=[8, 16],
                              stripe_groups=[None, None], anchor_window_down_factor=4), (1, 1, 30, 20)),
    # dual-pixel defocus deblurring: 6 input channels to 3 (conv_last without the input residual, no RGB mean), CAB
    "grl_dp6to3": (dict(in_channels=6, out_channels=3, upscale=1, upsampler="", embed_dim=18, depths=[4],
                        num_heads_window=[3], num_heads_stripe=[3], window_size=4, stripe_size=[8, 4],
                        stripe_groups=[None, None], anchor_window_down_factor=2, local_connection=True),
                   (1, 6, 20, 28)),
    # real-world SR's nearest+conv x4 head (two nearest x2 + conv + LeakyReLU(0.2), conv_hr, conv_last), 14x18 input
    "grl_realsr_nearest_conv": (dict(in_channels=3, upscale=4, upsampler="nearest+conv", embed_dim=16, depths=[2],
                                     num_heads_window=[2], num_heads_stripe=[2], window_size=4, stripe_size=[4, 8],
                                     stripe_groups=[None, None], anchor_window_down_factor=2), (1, 3, 14, 18)),
}
GRL_SHARED = dict(img_size=64, mlp_ratio=2, stripe_shift=True, qkv_proj_type="linear", anchor_proj_type="avgpool",
                  anchor_one_stage=True, out_proj_type="linear", conv_type="1conv", init_method="n")
GRL_MANIFESTS = {  # visattn variant -> official arguments
    "grl_tiny": dict(upscale=4, upsampler="pixelshuffledirect", embed_dim=64, depths=[4] * 4,
                     num_heads_window=[2] * 4, num_heads_stripe=[2] * 4),
    "grl_small_x2": dict(upscale=2, upsampler="pixelshuffle", embed_dim=128, depths=[4] * 4,
                         num_heads_window=[2] * 4, num_heads_stripe=[2] * 4),
    "grl_base": dict(upscale=4, upsampler="pixelshuffle", embed_dim=180, depths=[4, 4, 8, 8, 8, 4, 4],
                     num_heads_window=[3] * 7, num_heads_stripe=[3] * 7, local_connection=True),
    "grl_base_denoise": dict(upscale=1, upsampler="", embed_dim=180, depths=[4, 4, 8, 8, 8, 4, 4],
                             num_heads_window=[3] * 7, num_heads_stripe=[3] * 7, local_connection=True),
}


def _grl_ours(kw: dict) -> dict:
    # official GRL arguments -> visattn GRLConfig overrides
    out = {k: kw[k] for k in ("upscale", "embed_dim", "window_size", "local_connection") if k in kw}
    if kw.get("out_channels") is not None:
        out["out_chans"] = kw["out_channels"]
    out.update(in_chans=kw["in_channels"], upsampler=kw["upsampler"] or "pixelshuffle",
               depths=kw["depths"], num_heads_window=kw["num_heads_window"], num_heads_stripe=kw["num_heads_stripe"],
               stripe_size=kw["stripe_size"], stripe_groups=kw["stripe_groups"],
               anchor_down_factor=kw["anchor_window_down_factor"])
    return out


def grl_cases() -> None:
    import os
    import sys
    import warnings

    folder = os.environ.get("VISATTN_GRL_OFFICIAL")
    if not folder:
        print("grl: set VISATTN_GRL_OFFICIAL to a checkout of ofsoundof/GRL-Image-Restoration; skipped")
        return
    sys.path.insert(0, folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the official code imports timm.models.layers
        from models.networks.grl import GRL  # type: ignore[import-not-found]
    for case, (kw, shape) in GRL_GOLDEN.items():
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = GRL(**GRL_SHARED, **kw)
        # Wider than the official init (LayerNorm 1/0, linear std 0.02), so a wrong norm, bias or role shows.
        for name, p in model.named_parameters():
            if name.endswith("logit_scale"):
                p.data.add_(torch.randn(p.shape, generator=g) * 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.data.normal_(1.0, 0.2, generator=g)
            elif p.ndim <= 2:                                            # linear weights and every bias
                p.data.normal_(0.0, 0.05 if p.ndim == 2 else 0.1, generator=g)
        x = torch.rand(*shape, generator=g)
        buffers = ("table_", "index_", "mask_")
        model.eval()
        with torch.no_grad():
            y = model(x)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith(buffers)}
        from safetensors.torch import save_file

        tensors = {f"state.{k}": v.contiguous() for k, v in state.items()}
        tensors.update(input=x.contiguous(), output=y.contiguous())
        meta = {"reference": "GRL-Image-Restoration models/networks/grl.py GRL(...)",
                "reference_kwargs": {**GRL_SHARED, **kw}, "torch": torch.__version__,
                "visattn_model": "grl_tiny", "visattn_overrides": _grl_ours(kw)}
        path = OUT / f"{case}.safetensors"
        save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})
        print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB, output {tuple(y.shape)}")
    for name, kw in GRL_MANIFESTS.items():
        full = dict(GRL_SHARED, img_size=128, in_channels=3, window_size=32, stripe_size=[64, 64],
                    stripe_groups=[None, None], anchor_window_down_factor=4, **kw)
        model = GRL(**full)
        n_params = sum(p.numel() for p in model.parameters())
        _save_manifest(f"grl_manifest_{name}", model, {"reference": "GRL(...)", "reference_kwargs": full,
                                                       "params": n_params})


def video_transform_cases() -> None:
    """torchvision's ``VideoClassification`` preset (the evaluation transform of its Kinetics MViT weights) on small
    seeded uint8 clips: a downscale of a wide and of a tall frame (antialiasing and the long side's truncation
    matter) and an upscale. The preset at a small size (resize 36, crop 32) keeps the file small; the arithmetic is
    that of resize 256 / crop 224."""
    import torchvision
    from safetensors.torch import save_file
    from torchvision.transforms._presets import VideoClassification

    resize, crop = 36, 32
    mean, std = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)        # torchvision models/video/mvit.py
    transform = VideoClassification(crop_size=(crop, crop), resize_size=(resize,), mean=mean, std=std)
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for case, (h, w) in {"down_wide": (90, 119), "down_tall": (119, 90), "up": (21, 30)}.items():
        video = torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8)   # (T, C, H, W)
        tensors[f"{case}.input"] = video
        tensors[f"{case}.output"] = transform(video).contiguous()                # (C, T, crop, crop)
    meta = {"reference": f"torchvision.transforms._presets.VideoClassification(crop_size=({crop}, {crop}), "
                         f"resize_size=({resize},), mean={mean}, std={std})",
            "resize": resize, "crop": crop, "mean": mean, "std": std, "torchvision": torchvision.__version__,
            "torch": torch.__version__}
    path = OUT / "video_tv_transform.safetensors"
    save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})
    print(f"{path.name}: {path.stat().st_size / 1e3:.0f} kB")


CASES: dict[str, Callable[[], None]] = {"maxvit": maxvit_cases, "davit": davit_cases, "mvit": mvit_cases,
                                        "video_transform": video_transform_cases}
CASES["catnet"] = catnet_cases
CASES["grl"] = grl_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="families to regenerate")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for family in args.only or sorted(CASES):
        CASES[family]()


if __name__ == "__main__":
    main()
