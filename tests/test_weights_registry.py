"""The weights registry and the loading paths behind create_model(pretrained=...), all without network: files are
written into the Hub's own cache layout or served from file:// URLs."""

from __future__ import annotations

import hashlib
import json
import logging
import re

import pytest
import torch
from safetensors.torch import save_file

import visattn
from visattn.models.grl import GRL, _RENAMES
from visattn.models.maxvit import MaxViT
from visattn.models.mvit import MViT
from visattn.registry import get_model_class
from visattn.weights import (LEFT_OUT, WeightsUnavailableError, get_weights, label_names, list_pretrained,
                             resolve_pretrained)

from .conftest import GOLDEN

pytest.importorskip("huggingface_hub")

SMALL = {k: v for k, v in MaxViT.test_overrides.items()}          # 7 classes, partition 4


def _hub_cache(tmp_path, monkeypatch, repo: str, filename: str, state: dict) -> None:
    """Write ``state`` where huggingface_hub keeps a downloaded file: models--ORG--NAME/snapshots/REV/FILE +
    refs/main, under a temporary HF_HOME, and go offline."""
    home = tmp_path / "hf"
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    rev = "0123456789abcdef0123456789abcdef01234567"
    (folder / "snapshots" / rev).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(rev)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / rev / filename))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def torch_hub(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    return tmp_path / "torch_hub" / "checkpoints"


def _seeded(name: str, **overrides) -> torch.nn.Module:
    model = visattn.create_model(name, **overrides).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def test_pretrained_true_loads_from_the_hub_cache_offline(tmp_path, monkeypatch) -> None:
    src = _seeded("maxvit_tiny", **SMALL)
    entry = get_weights("maxvit_tiny_tf_224.in1k")
    assert entry.hf_hub_id == "timm/maxvit_tiny_tf_224.in1k"
    _hub_cache(tmp_path, monkeypatch, entry.hf_hub_id, entry.hf_filename, src.state_dict())
    model = visattn.create_model("maxvit_tiny_tf_224.in1k", pretrained=True, **SMALL).eval()
    direct = visattn.create_model("maxvit_tiny", **SMALL).eval()
    files = list((tmp_path / "hf").rglob("model.safetensors"))
    visattn.load_pretrained(direct, files[0])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), direct(x))
        assert torch.equal(model(x), src(x))
    assert model.pretrained_cfg["tag"] == "in1k_224"
    # the same weights through the visattn name + tag and through an explicit hf-hub: source
    again = visattn.create_model("maxvit_tiny", pretrained="in1k_224", **SMALL).eval()
    by_source = visattn.create_model("maxvit_tiny", **SMALL).eval()
    visattn.load_pretrained(by_source, "hf-hub:timm/maxvit_tiny_tf_224.in1k")
    with torch.no_grad():
        assert torch.equal(again(x), src(x)) and torch.equal(by_source(x), src(x))


def test_offline_miss_names_repo_cache_and_manual_placement(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        visattn.create_model("davit_tiny", pretrained=True, **get_model_class("davit_tiny").test_overrides)
    text = str(err.value)
    assert "timm/davit_tiny.msft_in1k" in text and str(tmp_path / "empty" / "hub") in text
    assert "by hand" in text and "refs/main" in text


def test_offline_url_miss_names_url_and_cache(torch_hub, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entry = get_weights("mvit_v2_s")
    with pytest.raises(WeightsUnavailableError, match=re.escape(entry.url)) as err:
        visattn.create_model("mvit_v2_s", pretrained=True, **get_model_class("mvitv2_small_video").test_overrides)
    assert str(torch_hub) in str(err.value) and "by hand" in str(err.value)


def test_file_url_hash_checked(tmp_path, torch_hub) -> None:
    src = _seeded("maxvit_tiny", **SMALL)
    path = tmp_path / "weights-abc.safetensors"
    save_file(src.state_dict(), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = visattn.create_model("maxvit_tiny", **SMALL).eval()
    with pytest.raises(ValueError, match="SHA-256"):
        visattn.load_pretrained(model, path.as_uri(), hash_prefix="00000000" if digest[:8] != "00000000" else "1")
    assert not (torch_hub / path.name).exists()                       # a file that fails its hash is not kept
    visattn.load_pretrained(model, path.as_uri(), hash_prefix=digest[:8])
    assert (torch_hub / path.name).is_file()
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_num_classes_differing_from_the_weights_drops_the_classifier(tmp_path, monkeypatch, caplog) -> None:
    src = _seeded("maxvit_tiny", **SMALL)                             # 7 classes
    entry = get_weights("maxvit_tiny")
    _hub_cache(tmp_path, monkeypatch, entry.hf_hub_id, entry.hf_filename, src.state_dict())
    with caplog.at_level(logging.WARNING, logger="visattn.weights"):
        model = visattn.create_model("maxvit_tiny", pretrained=True, **{**SMALL, "num_classes": 10})
    assert "7 classes" in caplog.text and "head.fc" in caplog.text
    assert model.head.fc.out_features == 10
    own, ref = model.state_dict(), src.state_dict()
    assert all(torch.equal(own[k], ref[k]) for k in own if not k.startswith("head.fc."))
    assert not torch.equal(own["head.fc.bias"][:7], ref["head.fc.bias"])
    with pytest.raises(ValueError, match="num_classes"):              # a plain load still refuses the mismatch
        visattn.load_pretrained(visattn.create_model("maxvit_tiny", **{**SMALL, "num_classes": 10}), ref)


def test_bias_tables_same_size_unchanged_and_larger_partition_loads(tmp_path, monkeypatch) -> None:
    src = _seeded("maxvit_tiny", **SMALL)
    entry = get_weights("maxvit_tiny")
    _hub_cache(tmp_path, monkeypatch, entry.hf_hub_id, entry.hf_filename, src.state_dict())
    same = visattn.create_model("maxvit_tiny", pretrained=True, **SMALL).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(same(x), src(x))
    # 224 -> 384 in miniature: tables trained for partition 4 resized bilinearly for partition 7
    big = visattn.create_model("maxvit_tiny", pretrained=True, **{**SMALL, "partition_size": 7})
    key = "stages.0.blocks.0.attn_block.attn.rel_pos.relative_position_bias_table"
    assert big.state_dict()[key].shape[-2:] == (13, 13)
    # MViTv2: rel-pos tables for a 64 input, loaded into a model for 96 (1-D linear interpolation)
    mvit_src = _seeded("mvitv2_tiny", **MViT.test_overrides)
    mvit = visattn.create_model("mvitv2_tiny", **{**MViT.test_overrides, "img_size": (96, 96)})
    visattn.load_pretrained(mvit, mvit_src.state_dict())
    rel = next(k for k in mvit.state_dict() if k.endswith("rel_pos_h"))
    assert mvit.state_dict()[rel].shape[0] > mvit_src.state_dict()[rel].shape[0]


# --- every entry's remap yields exactly the full-size model's keys (meta device) ----------------------------------

_MANIFESTS = {
    "maxvit_tiny.in1k_224": "maxvit_manifest_maxvit_tiny_tf_224",
    "maxvit_base.in1k_384": "maxvit_manifest_maxvit_base_tf_384",
    "maxvit_base.in21k_ft_in1k_384": "maxvit_manifest_maxvit_base_tf_384",
    "davit_tiny.msft_in1k": "davit_manifest_davit_tiny",
    "mvitv2_tiny.fb_in1k": "mvit_manifest_mvitv2_tiny",
    "mvitv2_large.fb_in1k": "mvit_manifest_mvitv2_large",
    "mvitv2_base_cls.fb_inw21k": "mvit_manifest_mvitv2_base_cls",
    "mvit_v1_base_16x4.tv_kinetics400": "mvit_manifest_tv_mvit_v1_b",
    "mvitv2_small_video.tv_kinetics400": "mvit_manifest_tv_mvit_v2_s",
    "grl_tiny.official_sr_c3x4": "grl_manifest_grl_tiny",
    "grl_base_denoise.official_dn_c3s50": "grl_manifest_grl_base_denoise",
}


def _official_grl_keys(own: dict) -> dict:
    # The inverse of GRL's renames: visattn keys -> official models/networks/grl.py keys.
    inverse = [(r"^stages\.(\d+)\.", r"layers.\1."), (r"\.attn\.qkv\.", ".attn.qkv.body."),
               (r"\.attn\.anchor\.reduction\.", ".attn.anchor.body.0.reduction."), (r"\.local\.conv1\.", ".conv.cab.0."),
               (r"\.local\.conv2\.", ".conv.cab.2."), (r"\.local\.ca\.fc1\.", ".conv.cab.3.attention.1."),
               (r"\.local\.ca\.fc2\.", ".conv.cab.3.attention.3."), (r"^upsample\.", "upsample.up.")]
    assert len(inverse) == len(_RENAMES)
    out = {}
    for key, value in own.items():
        for pattern, repl in inverse:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def _publisher_keys(entry, model) -> dict:
    own = model.state_dict()
    if entry.name in _MANIFESTS:
        shapes = json.loads((GOLDEN / f"{_MANIFESTS[entry.name]}.json").read_text())["shapes"]
        return {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    if entry.layout == "timm":
        return dict(own)                  # timm's keys are visattn's (identity remap; manifests check the names)
    if entry.layout == "official" and entry.model.startswith("grl_"):
        return _official_grl_keys(own)
    raise AssertionError(f"no publisher key list for {entry.name}")


@pytest.mark.parametrize("name", [e.name for e in list_pretrained()])
def test_every_entry_remaps_onto_the_full_size_model(name: str) -> None:
    entry = get_weights(name)
    with torch.device("meta"):
        model = visattn.create_model(name)
        state = _publisher_keys(entry, model)
    own = model.state_dict()
    mapped = model.remap_state_dict(state, model)
    assert sorted(mapped) == sorted(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    assert getattr(model.config, "num_classes", 0) == entry.num_classes


def test_registry_names_aliases_and_labels() -> None:
    names = [e.name for e in list_pretrained()]
    assert len(names) == len(set(names)) == 41
    assert resolve_pretrained("maxvit_tiny_tf_384.in1k")[1].name == "maxvit_tiny.in1k_384"
    assert resolve_pretrained("maxvit_tiny_tf_384")[1].name == "maxvit_tiny.in1k_384"
    assert resolve_pretrained("maxvit_tiny") == ("maxvit_tiny", get_weights("maxvit_tiny.in1k_224"))
    assert resolve_pretrained("mvit_v1_b")[0] == "mvit_v1_base_16x4"
    with pytest.raises(ValueError, match="Did you mean"):
        resolve_pretrained("maxvit_tiny_tf_225.in1k")
    assert visattn.create_model("maxvit_large_tf_512.in21k_ft_in1k", pretrained=False).config.partition_size == 16
    names_1k, names_400 = label_names("imagenet1k"), label_names("kinetics400")
    assert len(names_1k) == 1000 and names_1k[0].startswith("tench") and len(names_400) == 400
    pre = get_weights("mvit_v2_s").preprocessing()
    assert pre["input_size"] == (3, 16, 224, 224) and pre["label_names"][0] == "abseiling"
    for entry in list_pretrained():
        if entry.url and "download.pytorch.org" in entry.url:
            assert entry.hash_prefix and entry.hash_prefix in entry.url       # torchvision's file-name hash
        assert entry.labels is None or len(label_names(entry.labels)) == entry.num_classes
    assert any("CloFormer" in k for k in LEFT_OUT) and any("CAT-Net" in k for k in LEFT_OUT)


def test_create_model_pretrained_arguments() -> None:
    assert isinstance(visattn.create_model("maxvit_tiny", pretrained=False, **SMALL), MaxViT)
    with pytest.raises(ValueError, match="no published weights"):
        visattn.create_model("cloformer_xs", pretrained=True)
    with pytest.raises(ValueError, match="do not belong"):
        visattn.create_model("maxvit_tiny", pretrained="maxvit_small.in1k_224")
    with pytest.raises(ValueError, match="False, True or a tag"):
        visattn.create_model("maxvit_tiny", pretrained=1)
    with pytest.raises(ValueError, match="not both"):
        visattn.create_model("maxvit_tiny", pretrained=True, checkpoint="x.safetensors")
    grl = visattn.create_model("grl_tiny.official_sr_c3x3", **{k: v for k, v in GRL.test_overrides.items()
                                                                 if k != "upscale"})
    assert grl.config.upscale == 3


def test_docs_weights_table_is_generated_from_the_registry() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "scripts" / "make_weights_table.py"), "--check"],
                          env={**__import__("os").environ, "PYTHONPATH": str(root / "src")})
    assert done.returncode == 0, "docs/weights.md is stale: run scripts/make_weights_table.py"


def test_another_architecture_is_named_not_taken_for_a_class_count(tmp_path) -> None:
    from visattn.checkpoint import CheckpointError, load_model
    from visattn.weights.load import ArchitectureMismatchError, identify_architecture

    with torch.device("meta"):
        small = visattn.create_model("maxvit_small").state_dict()     # the same keys as maxvit_tiny, wider
        clo = visattn.create_model("cloformer_xxs").state_dict()
        tiny = visattn.create_model("maxvit_tiny")
        ten = visattn.create_model("maxvit_tiny", num_classes=10).state_dict()
    assert identify_architecture(small) == "maxvit_small" and identify_architecture(clo) == "cloformer_xxs"
    assert identify_architecture({"conv.weight": torch.zeros(1)}) is None
    with pytest.raises(ArchitectureMismatchError, match="holds a maxvit_small model, not maxvit_tiny") as err:
        visattn.load_pretrained(tiny, small)
    assert "number of classes" not in str(err.value)
    with pytest.raises(ArchitectureMismatchError, match="holds a cloformer_xxs model, not maxvit_tiny"):
        visattn.load_pretrained(tiny, clo)
    with pytest.raises(ValueError, match="a different number of classes"):  # only the classifier differs
        visattn.load_pretrained(tiny, ten)
    # through load_model (eval / predict --checkpoint FILE --model NAME): weights of another family, no model.json
    model = visattn.create_model("cloformer_xxs")
    path = tmp_path / "clo.safetensors"
    save_file(model.state_dict(), str(path))
    with pytest.raises(CheckpointError, match="clo.safetensors holds a cloformer_xxs model, not maxvit_tiny; pass "
                                              "--model cloformer_xxs"):
        load_model(path, model_name="maxvit_tiny")
