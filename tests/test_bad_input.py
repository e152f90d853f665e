"""Bad input gets a clear error naming what was wrong and what is allowed; nothing is silently accepted.

Generic over every registered model: every numeric config field refuses a negative value and every field refuses a
value of the wrong type (a field added to a config without a declared range fails here), and every model refuses an
empty batch.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import visattn
from visattn.checkpoint import CheckpointError, export_model, load_model, model_meta
from visattn.cli import main
from visattn.layers.checks import ConfigTypeError
from visattn.registry import config_from_dict, get_model_class, get_model_config, list_families
from visattn.weights import load_pretrained

TINY = {"stem_width": 8, "dims": (8, 16, 16, 16), "depths": (1, 1, 1, 1), "head_dim": 8, "partition_size": 4,
        "num_classes": 5}
TINY_SET = [f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()]


FAMILIES = list_families()


def _negated(value: object) -> object:
    """``value`` with every number replaced by -1 (tuples keep their structure)."""
    if isinstance(value, tuple):
        return tuple(_negated(v) for v in value)
    return -1 if isinstance(value, (int, float)) and not isinstance(value, bool) else value


@pytest.mark.parametrize("name", FAMILIES)
def test_every_numeric_config_field_refuses_negative_values(name: str) -> None:
    config = get_model_config(name)
    numeric = [f.name for f in dataclasses.fields(config) if _negated(getattr(config, f.name)) != getattr(config,
                                                                                                          f.name)]
    assert "in_chans" in numeric
    for field in numeric:
        with pytest.raises(ValueError, match=rf"\.{field} must be"):
            get_model_config(name, **{field: _negated(getattr(config, field))})


@pytest.mark.parametrize("name", FAMILIES)
def test_every_config_field_refuses_a_value_of_the_wrong_type(name: str) -> None:
    config = get_model_config(name)
    for f in dataclasses.fields(config):
        with pytest.raises(ConfigTypeError, match=rf"{type(config).__name__}\.{f.name} must be .*, got object"):
            get_model_config(name, **{f.name: object()})
    # JSON lists are taken as tuples
    tuple_field = next(f.name for f in dataclasses.fields(config) if isinstance(getattr(config, f.name), tuple))
    value = getattr(config, tuple_field)
    assert get_model_config(name, **{tuple_field: json.loads(json.dumps(value))}) == config


def test_zero_sizes_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"MaxViTConfig\.head_dim must be positive \(> 0\), got 0"):
        get_model_config("maxvit_tiny", head_dim=0)
    with pytest.raises(ValueError, match=r"MaxViTConfig\.partition_size must be positive"):
        visattn.create_model("maxvit_tiny", partition_size=0)
    with pytest.raises(ValueError, match=r"DaViTConfig\.num_classes must be non-negative \(>= 0\), got -1"):
        get_model_config("davit_tiny", num_classes=-1)
    with pytest.raises(ValueError, match=r"MaxViTConfig\.drop_rate must be finite"):
        get_model_config("maxvit_tiny", drop_rate=float("nan"))
    assert get_model_config("maxvit_tiny", num_classes=0).num_classes == 0     # a headless backbone


@pytest.mark.parametrize("name", FAMILIES)
def test_empty_batch_is_refused_by_every_model(name: str) -> None:
    cls = get_model_class(name)
    model = visattn.create_model(name, **cls.test_overrides).eval()
    empty = [x[:0] for x in model.example_inputs(1)]
    with pytest.raises(ValueError, match=r"needs a batch of at least one sample \(B >= 1\), got shape \(0,"):
        with torch.no_grad():
            model(*empty)


def test_cli_set_zero_and_bad_sizes_are_one_line_errors(capsys: pytest.CaptureFixture) -> None:
    for argv, message in (
        (["info", "maxvit_tiny", "--set", "head_dim=0"], "MaxViTConfig.head_dim must be positive"),
        (["info", "maxvit_tiny", "--set", "partition_size=0"], "MaxViTConfig.partition_size must be"),
        (["info", "maxvit_tiny", "--set", "num_classes=-1"], "MaxViTConfig.num_classes must be"),
        (["bench", "--model", "maxvit_tiny", "--sizes=-32"], "bad size '-32': height and width must be positive"),
        (["bench", "--attention", "multi_axis", "--sizes", "32,0x16"], "bad size '0x16'"),
        (["bench", "--model", "maxvit_tiny", "--sizes", "32", "--iters", "0"], "--iters must be at least 1, got 0"),
        (["export", "maxvit_tiny", "--out", "x.txt"], "--out must end in .onnx for --format onnx, got x.txt"),
        (["train", "--model", "maxvit_tiny", "--threads", "0"], "--threads must be positive, got 0"),
    ):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, (argv, err)


def _tiny_saved(tmp_path: Path) -> Path:
    model = visattn.create_model("maxvit_tiny", **TINY)
    return export_model(tmp_path, model.state_dict(), model_meta(model, task="classification", img_size=32,
                                                                 data={"source": "digits", "builtin": True}))


def test_truncated_safetensors_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    weights = _tiny_saved(tmp_path)
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(weights)):
        load_model(weights)
    with pytest.raises(ValueError, match=rf"{weights} is not a readable safetensors file"):
        load_pretrained(visattn.create_model("maxvit_tiny", **TINY), weights)
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 1
    assert str(weights) in capsys.readouterr().err


def test_checkpoint_with_a_timm_name_or_tag_as_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # --model with --checkpoint names the expected architecture: a timm name or tag resolves to visattn's variant
    weights = _tiny_saved(tmp_path)
    bare = tmp_path / "bare.safetensors"                               # the same weights without model.json
    bare.write_bytes(weights.read_bytes())
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    for alias in ("maxvit_tiny_tf_224", "maxvit_tiny_tf_224.in1k"):
        assert main(["predict", "--checkpoint", str(weights), "--model", alias, str(image), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)[0]["top"]) == 5
        assert main(["predict", "--checkpoint", str(bare), "--model", alias, *TINY_SET, str(image), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)[0]["top"]) == 5
    assert main(["eval", "--checkpoint", str(weights), "--model", "davit_tiny.msft_in1k"]) == 1
    assert ("holds a maxvit_tiny (MaxViT) model, not davit_tiny.msft_in1k (visattn's davit_tiny)"
            in capsys.readouterr().err)


def test_model_json_field_of_wrong_type_names_field_and_type(tmp_path: Path) -> None:
    weights = _tiny_saved(tmp_path)
    meta = json.loads(weights.with_suffix(".json").read_text())
    meta["config"]["head_dim"] = "8"
    weights.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"MaxViTConfig\.head_dim must be int, got str '8'") as err:
        load_model(weights)
    assert str(weights) in str(err.value)
    with pytest.raises(TypeError, match=r"MaxViTConfig\.depths must be tuple\[int, \.\.\.\], got str"):
        config_from_dict(get_model_class("maxvit_tiny"), {**meta["config"], "head_dim": 8, "depths": "1,1,1,1"})


def test_non_finite_weights_are_refused_by_eval_and_predict(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import load_file, save_file

    weights = _tiny_saved(tmp_path)
    state = load_file(weights)
    state["head.fc.weight"][0, 0] = float("nan")
    save_file(state, weights, metadata={"format": "visattn", "model": "maxvit_tiny"})
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (10, 200, 30)).save(image)
    for argv in (["eval", "--checkpoint", str(weights)], ["predict", "--checkpoint", str(weights), str(image)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "tensor 'head.fc.weight' holds 1 non-finite value(s)" in err and str(weights) in err, err


def test_predict_topk_zero_is_refused_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", "--checkpoint", str(tmp_path / "absent"), "--topk", "0", "x.png"]) == 1
    assert "--topk must be at least 1, got 0" in capsys.readouterr().err


def test_convert_removes_its_output_when_verification_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    import safetensors.torch

    source = tmp_path / "weights.pth"
    torch.save(visattn.create_model("maxvit_tiny", **TINY).state_dict(), source)
    out = tmp_path / "out.safetensors"
    real = safetensors.torch.load_file

    def corrupted(path: str, device: str = "cpu") -> dict[str, torch.Tensor]:
        state = real(path, device=device)
        state["head.fc.bias"] = state["head.fc.bias"] + 1
        return state

    monkeypatch.setattr(safetensors.torch, "load_file", corrupted)
    assert main(["convert", str(source), "--model", "maxvit_tiny", *TINY_SET, "--out", str(out)]) == 1
    assert "verification of" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()
    monkeypatch.setattr(safetensors.torch, "load_file", real)
    assert main(["convert", str(source), "--model", "maxvit_tiny", *TINY_SET, "--out", str(out)]) == 0
    assert out.exists() and out.with_suffix(".json").exists()


class _Payload:
    """Unpickling this creates the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_sharded_checkpoint_metadata_runs_no_pickled_code(tmp_path: Path) -> None:
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp

    from visattn.checkpoint import _sharded_keys

    folder = tmp_path / "sharded"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                              # "assuming a single process"
        dcp.save({"model": {"w": torch.randn(3, 4), "b": torch.zeros(2, dtype=torch.bfloat16)}},
                 checkpoint_id=folder, no_dist=True)
    assert _sharded_keys(folder) == {"model"}                         # a genuine metadata file reads
    marker = tmp_path / "marker"
    with open(folder / ".metadata", "wb") as f:
        pickle.dump(_Payload(marker), f)
    with pytest.raises(CheckpointError, match=r"\.metadata is not a torch.distributed.checkpoint metadata file"):
        _sharded_keys(folder)
    assert not marker.exists()
