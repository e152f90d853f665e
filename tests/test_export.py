"""Deployment: ONNX (run by onnxruntime) and torch.export programs with dynamic batch, height and width.

One reduced variant per family is exported once and run at three sizes, one of them at batch 1 and sizes that need
padding, against eager PyTorch. Exports trace symbolically (tens of seconds on a loaded 2-core machine), hence the
``slow`` marker on everything that exports a model.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visattn import create_model
from visattn.export import export_program, load_torch_export, to_onnx, to_torch_export, trace_inputs
from visattn.layers.model import VisionModel

# name -> (overrides: smaller than test_overrides, still every padding / partition path), three (B, H, W) sizes:
# the first divides every partition, the others need padding (odd sizes, one at the minimum size).
CASES = {
    "maxvit_tiny": ({"stem_width": 8, "dims": (16, 16), "depths": (1, 1), "head_dim": 8, "partition_size": 4,
                     "num_classes": 5},
                    [(2, 64, 64), (1, 97, 203), (3, 32, 45)]),
    "davit_tiny": ({"dims": (16, 32), "depths": (1, 1), "num_heads": (2, 2), "window_size": 4, "num_classes": 5},
                   [(2, 64, 64), (1, 97, 203), (3, 32, 45)]),
    "cloformer_xxs": ({"dims": (16, 24), "depths": (1, 1), "num_heads": (2, 3), "group_splits": ((1, 1), (1, 2)),
                       "kernel_sizes": ((3,), (5,)), "window_sizes": (4, 2), "mlp_ratios": (2.0, 2.0),
                       "mlp_kernel_sizes": (5, 3), "num_classes": 5},
                      [(2, 64, 64), (1, 97, 203), (3, 32, 45)]),
    # 32 x 32: the last stage's map is 1 x 1 (a size the trace once guarded against)
    "mvitv2_tiny": ({"dims": (16, 32, 48, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4), "img_size": (64, 64),
                     "num_classes": 5},
                    [(2, 64, 64), (1, 97, 203), (3, 32, 32)]),
    # video, (B, T, H, W): frames dynamic too; T = 1 with 32 x 32 leaves a 1 x 1 x 1 last map, 7 x 45 x 71 odd
    # pooled sizes; v1 interpolates its absolute position embeddings, v2 its 3-D relative position tables
    "mvit_v1_base_16x4": ({"dims": (16, 32, 48, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4),
                           "img_size": (4, 64, 64), "num_classes": 5},
                          [(2, 4, 64, 64), (1, 7, 45, 71), (3, 1, 32, 32)]),
    "mvitv2_small_video": ({"dims": (16, 32, 48, 64), "depths": (1, 1, 1, 1), "num_heads": (1, 2, 2, 4),
                            "img_size": (4, 64, 64), "num_classes": 5},
                           [(2, 4, 64, 64), (1, 7, 45, 71), (3, 1, 32, 32)]),
    # 4 layers: shifted windows and stripes, horizontal and vertical stripes, fixed and grouped stripe axes (the
    # grouped stripe size is symbolic), CAB, pixelshuffle x2. Inputs pad to multiples of 16: 37 x 53 reflect-pads,
    # 8 x 13 falls back to zero padding (pad >= size), 32 x 48 divides every window and stripe.
    "grl_tiny": ({"embed_dim": 36, "depths": (4,), "num_heads_window": (3,), "num_heads_stripe": (3,),
                  "window_size": 4, "stripe_size": (16, None), "stripe_groups": (None, 2), "anchor_down_factor": 2,
                  "local_connection": True, "upscale": 2, "upsampler": "pixelshuffle", "upsample_features": 8,
                  "cpb_hidden": 16},
                 [(2, 32, 48), (1, 37, 53), (3, 8, 13)]),
}

TOL = 1e-4


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **CASES[name][0]).eval()
    # PyTorch's default init (std ~ fan_in^-0.5) instead of the models' 0.02: outputs of order 1, so the absolute
    # tolerance means something (with 0.02 the logits are ~0.006).
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            module.reset_parameters()
    return model


def _inputs(model: nn.Module, name: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(b, model.config.in_chans, *size, generator=gen) for b, *size in CASES[name][1]]  # 4/5-D


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_onnx_dynamic_sizes_match_eager(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model(name)
    path = to_onnx(model, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = ["batch", "frames", "height", "width"] if len(CASES[name][1][0]) == 4 else ["batch", "height", "width"]
    assert [d for d in session.get_inputs()[0].shape if isinstance(d, str)] == names  # named, not s77 / s53
    with torch.no_grad():
        for x in _inputs(model, name):
            expected = model(x)
            got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
            assert got.shape == expected.shape
            assert expected.abs().max().item() > 0.1                   # a scale at which TOL is strict
            assert (got - expected).abs().max().item() <= TOL, tuple(x.shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_torch_export_round_trip(name, tmp_path):
    model = _model(name)
    to_torch_export(model, tmp_path / f"{name}.pt2")
    program = load_torch_export(tmp_path / f"{name}.pt2").module()
    with torch.no_grad():
        for x in _inputs(model, name):
            expected = model(x)
            got = program(x)
            assert got.shape == expected.shape
            assert (got - expected).abs().max().item() <= TOL, tuple(x.shape)


class _SizeBranch(VisionModel):
    """Branches on the width in Python: a dynamic-width trace would be wrong at widths of the other parity."""

    task = "classification"
    min_input_size = 8

    def __init__(self):
        super().__init__()
        self.config = type("Config", (), {"in_chans": 3})()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        return x * 2 if x.shape[-1] % 2 else x


def test_size_dependent_branch_is_refused_with_the_dimension():
    with pytest.raises(ValueError, match="dynamic width"):
        export_program(_SizeBranch())
    model = _SizeBranch()
    program = export_program(model, dynamic_size=False).module()   # one fixed size is fine
    (x,) = model.example_inputs()
    with torch.no_grad():
        assert torch.allclose(program(x), model(x))
    with pytest.raises((RuntimeError, AssertionError)):             # and another size is rejected, not wrong
        program(torch.randn(2, 3, x.shape[-2], x.shape[-1] + 1))


class _FrameBranch(_SizeBranch):
    """A video module (B, C, T, H, W) that branches on the frame count."""

    input_ndim = 5
    min_input_frames = 1
    num_frames = 3

    def forward(self, x):
        return x * 2 if x.shape[2] % 2 else x


def test_video_frame_branch_is_refused_naming_frames():
    with pytest.raises(ValueError, match="dynamic frames"):
        export_program(_FrameBranch())


# CAT-Net (few-shot): three inputs, query x (B, C, H, W), support (B, K, C, Hs, Ws), support_mask (B, K, Hs, Ws);
# batch, shot count, query size and support size all dynamic. A tiny ResNet (output stride 8, dilated layer3 / 4),
# MIFE and two CMAT modules with both cross directions and the hard (thresholded) query mask, the default.
CATNET = {"depths": (1, 1, 1, 1), "widths": (4, 4, 8, 8), "stem_width": 8, "dim": 16, "num_heads": 2,
          "num_iters": 2, "mlp_ratio": 2.0}
# (B, K, H, W, Hs, Ws): support sizes of their own; odd sizes (the mask pooling bins differ in length), batch 1
# with one shot, and the minimum size 32.
CATNET_SIZES = [(2, 2, 64, 64, 64, 64), (1, 1, 97, 203, 45, 71), (3, 3, 32, 45, 33, 32)]


def _catnet() -> nn.Module:
    torch.manual_seed(0)
    model = create_model("catnet_r50", **CATNET).eval()
    for module in model.modules():                                     # PyTorch's default init, as in _model
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.reset_parameters()
    return model


def _catnet_inputs() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    sets = []
    for b, k, h, w, hs, ws in CATNET_SIZES:
        mask = (torch.rand(b, k, hs, ws, generator=gen) > 0.6).float()
        mask[..., hs // 3, ws // 2] = 1                                 # never empty
        x = torch.randn(b, 3, h, w, generator=gen)
        sets.append({"x": x, "support": torch.randn(b, k, 3, hs, ws, generator=gen), "support_mask": mask})
    return sets


def _eager(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(inputs["x"], support=inputs["support"], support_mask=inputs["support_mask"])


@pytest.mark.slow
def test_catnet_onnx_all_inputs_dynamic_match_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _catnet()
    path = to_onnx(model, tmp_path / "catnet.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "support", "support_mask"]
    support_shape = session.get_inputs()[1].shape                       # (B, K, 3, Hs, Ws): all but C symbolic
    assert support_shape == ["batch", "shots", 3, "support_height", "support_width"], support_shape
    assert session.get_inputs()[2].shape == ["batch", "shots", "support_height", "support_width"]
    assert session.get_inputs()[0].shape == ["batch", 3, "height", "width"]
    with torch.no_grad():
        for inputs in _catnet_inputs():
            expected = _eager(model, inputs)
            got = torch.from_numpy(session.run(None, {n: t.numpy() for n, t in inputs.items()})[0])
            assert got.shape == expected.shape == (inputs["x"].shape[0], 3, *inputs["x"].shape[-2:])
            assert expected.abs().max().item() > 0.1
            assert (got - expected).abs().max().item() <= TOL, tuple(inputs["support"].shape)


@pytest.mark.slow
def test_catnet_torch_export_round_trip(tmp_path):
    model = _catnet()
    to_torch_export(model, tmp_path / "catnet.pt2")
    program = load_torch_export(tmp_path / "catnet.pt2").module()
    with torch.no_grad():
        for inputs in _catnet_inputs():
            expected = _eager(model, inputs)
            got = program(inputs["x"], inputs["support"], inputs["support_mask"])
            assert got.shape == expected.shape
            assert expected.abs().max().item() > 0.1
            assert (got - expected).abs().max().item() <= TOL, tuple(inputs["support"].shape)


def test_catnet_trace_inputs_are_valid_and_checked_by_name():
    with torch.device("meta"):
        model = create_model("catnet_r50")
    inputs = trace_inputs(model, device="cpu")
    assert list(inputs) == ["x", "support", "support_mask"]
    B, K = inputs["support"].shape[:2]
    assert K == 2 and B == 2                                           # 1 would be specialised by the trace
    assert inputs["support"].shape[-2:] != inputs["x"].shape[-2:]      # independent sizes: traced apart
    assert inputs["support_mask"].shape == (B, K, *inputs["support"].shape[-2:])
    assert inputs["support_mask"].flatten(2).amax(-1).min() == 1       # no empty mask
    again = trace_inputs(model, device="cpu")
    assert all(torch.equal(inputs[n], again[n]) for n in inputs)       # seeded: the same trace every time
    with pytest.raises(ValueError, match="support_mask"):
        export_program(model, {"x": inputs["x"], "support": inputs["support"]})


def test_export_refuses_a_module_without_the_model_contract():
    with pytest.raises(ValueError, match="VisionModel"):
        export_program(nn.Conv2d(3, 4, 3), torch.randn(2, 3, 9, 11))


def test_bad_dtype_is_refused():
    model = _SizeBranch()
    with pytest.raises(ValueError, match="dtype"):
        export_program(model, dtype="int8")


@pytest.mark.slow
def test_cli_export_torch_program(tmp_path, capsys):
    from visattn.cli import main

    out = tmp_path / "m.pt2"
    sets = ["stem_width=8", "dims=16,16", "depths=1,1", "head_dim=8", "partition_size=4", "num_classes=5"]
    argv = ["export", "maxvit_tiny", "--format", "torch-export", "--size", "40x45", "--out", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert "max |exported - eager|" in capsys.readouterr().err
    program = load_torch_export(out).module()
    assert program(torch.randn(1, 3, 33, 70)).shape == (1, 5)


@pytest.mark.slow
def test_cli_export_fewshot_model_with_support_inputs(tmp_path, capsys):
    from visattn.cli import main

    out = tmp_path / "catnet.pt2"
    sets = ["depths=1,1,1,1", "widths=4,4,8,8", "stem_width=8", "dim=16", "num_heads=2", "num_iters=2"]
    argv = ["export", "catnet_r50", "--format", "torch-export", "--out", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    assert "shots, support height, width" in capsys.readouterr().err
    inputs = _catnet_inputs()[1]                                        # batch 1, one shot, another support size
    program = load_torch_export(out).module()
    assert program(inputs["x"], inputs["support"], inputs["support_mask"]).shape == (1, 3, 97, 203)


@pytest.mark.slow
def test_cli_export_onnx_names_dims_creates_the_folder_and_reports_each_step(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx

    from visattn.cli import main

    out = tmp_path / "new" / "folder" / "m.onnx"
    sets = ["stem_width=8", "dims=16,16", "depths=1,1", "head_dim=8", "partition_size=4", "num_classes=5"]
    assert main(["export", "maxvit_tiny", "--out", str(out)] + [a for s in sets for a in ("--set", s)]) == 0
    err = capsys.readouterr().err
    steps = ["building maxvit_tiny", "creating the output folder", "tracing MaxViT with torch.export",
             "traced in", "converting the program to ONNX", "checking m.onnx with onnxruntime", "wrote"]
    assert all(step in err for step in steps), err
    assert [err.index(step) for step in steps] == sorted(err.index(step) for step in steps)
    graph = onnx.load(str(out)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["batch", 5]
