"""`visattn list / info / convert / bench / show` end to end, the pictures' correctness, and a fast `--help`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import load_golden
from tests.test_cli_train import PNG, TINY_MODEL, visattn
import visattn as visattn_api
from visattn.cli import main


def test_help_does_not_import_torch() -> None:
    code = ("import sys, visattn.cli as c; p = c.build_parser(); p.format_help(); "
            "assert 'torch' not in sys.modules, 'visattn --help imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    from visattn.cli import build_parser

    text = build_parser().format_help()
    for command in ("list", "info", "train", "eval", "predict", "convert", "bench", "show"):
        assert command in text


def test_list_and_info_count_params_and_flops(capsys: pytest.CaptureFixture) -> None:
    assert main(["list", "maxvit_tiny", "--img-size", "224"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("maxvit_tiny"))
    params, ref, gmacs, _, _, paper_top1 = row.split()[1:]
    assert params == ref == "30.92" and paper_top1 == "83.62"
    assert abs(float(gmacs) - 5.6) < 0.1                               # the paper's 5.6G multiply-adds
    reduced = [a for a in TINY_MODEL[2:] if a != "--set"]
    assert main(["info", "maxvit_tiny", *[f"--set={a}" for a in reduced], "--sizes", "32,48x64"]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs @32x32" in out and "GFLOPs @48x64" in out and "stages.3: 16ch /32" in out
    assert "partition_size         4" in out and "paper           31.0M params" in out


def test_convert_timm_checkpoint_reproduces_reference(tmp_path: Path) -> None:
    meta, state, x, expected = load_golden("maxvit_tf_p4_128")
    source = tmp_path / "timm_maxvit.pth"
    torch.save({"state_dict": state}, source)                          # the usual timm / training-script wrapper
    sets = [f"--set={k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in meta["visattn_overrides"].items() if k != "num_classes"]  # class count read from the file
    out = tmp_path / "converted.safetensors"
    proc = visattn("convert", str(source), "--model", meta["visattn_model"], *sets, "--img-size", "128",
                   "--out", str(out))
    assert "verified" in proc.stdout and "10 classes" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr[:500]            # the meta-device check copies nothing
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["model"] == "maxvit_tiny" and info["config"]["num_classes"] == 10 and info["img_size"] == 128
    # no --crop-pct / --mean / --std: the family's preprocessing (timm's maxvit_*_tf_224: 0.95, ImageNet statistics)
    assert info["crop_pct"] == 0.95 and info["mean"] == [0.485, 0.456, 0.406]

    from visattn.checkpoint import load_model

    model, _ = load_model(out)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)

def test_pretrained_cfg_describes_each_family_as_timm() -> None:
    # timm.data.resolve_data_config(model=...) reads this attribute; values of timm 1.0.31's default tags.
    expected = {"maxvit_tiny": 0.95, "davit_tiny": 0.95, "mvitv2_tiny": 0.9, "cloformer_xxs": 0.875}
    for name, crop in expected.items():
        with torch.device("meta"):
            cfg = visattn_api.create_model(name).pretrained_cfg
        assert cfg["crop_pct"] == crop and cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000
        assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["interpolation"] == "bicubic"
    with torch.device("meta"):
        assert visattn_api.create_model("maxvit_xlarge").pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # in21k tag


def test_convert_refuses_another_architecture(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    _, state, _, _ = load_golden("maxvit_tf_p4_128")
    source = tmp_path / "timm_maxvit.safetensors"
    from safetensors.torch import save_file

    save_file(state, source)
    assert main(["convert", str(source), "--model", "maxvit_small", "--out", str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert "does not load into maxvit_small" in err and err.count("\n") == 0
    assert not (tmp_path / "x.safetensors").exists()


def test_bench_attention_vs_global_writes_csv_and_plots(tmp_path: Path) -> None:
    proc = visattn("bench", "--attention", "multi_axis", "--set", "dim=16", "--set", "head_dim=8",
                   "--sizes", "8,16,24", "--iters", "1", "--warmup", "0", "--out", str(tmp_path))
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert [(r["name"], int(r["pixels"])) for r in rows] == [
        ("multi_axis", 64), ("multi_axis", 256), ("multi_axis", 576),
        ("global(dim=16)", 64), ("global(dim=16)", 256), ("global(dim=16)", 576)]
    assert all(float(r["ms"]) > 0 and float(r["peak_mem_mb"]) > 0 for r in rows)
    gmacs = {(r["name"], int(r["pixels"])): float(r["gmacs"]) for r in rows}
    # block + grid attention is linear in the pixels (P = 4 divides 8, 16, 24); global attention grows faster
    assert gmacs[("multi_axis", 576)] / gmacs[("multi_axis", 64)] == pytest.approx(9.0, rel=1e-6)
    assert gmacs[("global(dim=16)", 576)] / gmacs[("global(dim=16)", 64)] > 20
    for name in ("bench_ms.png", "bench_gmacs.png", "bench_per_pixel.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert "slope" in proc.stdout
    # per-pixel GMACs at 24x24 over 8x8: 1.00 for the linear mechanism, > 2 for global attention
    per_pixel = {line.split()[0]: line.split()[-1] for line in proc.stdout.splitlines() if "/8x8" in line}
    assert per_pixel["multi_axis"] == "1.00" and float(per_pixel["global(dim=16)"]) > 2
    env = (tmp_path / "environment.txt").read_text()
    assert "torch " in env and "commit:" in env and "--attention multi_axis" in env


def test_bench_model_forward_backward_bf16(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["bench", *TINY_MODEL, "--sizes", "32,40", "--mode", "fwdbwd", "--dtype", "bf16", "--iters", "1",
                 "--warmup", "0", "--batch-size", "2", "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert all(r["mode"] == "fwdbwd" for r in rows)
    model = [r for r in rows if r["kind"] == "model"]
    assert [r["height"] for r in model] == ["32", "40"]
    assert float(model[1]["gmacs"]) > float(model[0]["gmacs"]) > 0
    # beside a model: global attention over stride-4 patches (8x8 then 10x10 tokens), GMACs superlinear in pixels
    baseline = [r for r in rows if r["kind"] == "baseline"]
    assert [r["name"] for r in baseline] == ["global(dim=64, patch 4)"] * 2
    assert float(baseline[1]["gmacs"]) / float(baseline[0]["gmacs"]) > (40 * 40) / (32 * 32)
    assert main(["bench", *TINY_MODEL, "--sizes", "16", "--out", str(tmp_path)]) == 1
    assert "too small" in capsys.readouterr().err


def test_partition_ids_follow_the_library_partitions() -> None:
    from visattn.show import partition_ids

    block, grid, pad = partition_ids(8, 8, 4)
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert pad == (0, 0)
    assert torch.equal(block, (i // 4) * 2 + j // 4)                   # contiguous 4x4 tiles, row-major
    assert torch.equal(grid, (i % 2) * 2 + j % 2)                      # pixels 2 apart share a group
    block, grid, pad = partition_ids(10, 13, 4)                        # padded to 12 x 16
    assert pad == (2, 3) and block.shape == grid.shape == (12, 16)
    assert torch.bincount(block.flatten()).tolist() == [16] * 12 == torch.bincount(grid.flatten()).tolist()


def test_show_partition_any_size(tmp_path: Path) -> None:
    visattn("show", "partition", "--size", "10x13", "--partition-size", "4", "--query", "3,5",
            "--out", str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG


def test_show_partition_rejects_query_outside(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert main(["show", "partition", "--size", "8", "--query", "9,0", "--out", str(tmp_path / "q.png")]) == 1
    assert "outside the 8x8 map" in capsys.readouterr().err


def test_attention_maps_are_local_for_block_and_dilated_for_grid() -> None:
    from visattn import create_model
    from visattn.show import attention_maps, exact_attention_modules, partition_ids

    model = create_model("maxvit_tiny", stem_width=8, dims=(8, 16), depths=(1, 1), head_dim=8, partition_size=4,
                         num_classes=3).eval()
    names = [n for n in exact_attention_modules(model) if n.startswith("stages.0.")]
    assert names == ["stages.0.blocks.0.attn_block.attn", "stages.0.blocks.0.attn_grid.attn"]
    maps = attention_maps(model, torch.randn(1, 3, 40, 40), (0.3, 0.6), names)  # stage-0 map 10x10, padded to 12
    block_ids, grid_ids, _ = partition_ids(10, 10, 4)
    for m, ids in zip(maps, (block_ids, grid_ids)):
        qy, qx = m["query"]
        assert (qy, qx) == (3, 6) and m["map"].shape == (10, 10)
        assert m["map"].sum().item() == pytest.approx(1.0, abs=1e-5)   # padded keys get no weight
        same_group = ids[:10, :10] == ids[qy, qx]
        assert (m["map"][~same_group] == 0).all() and (m["map"][same_group] > 0).all()


def test_show_attention_png_exact_and_fallback(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    common = ["show", "attention", *TINY_MODEL, "--img-size", "32", "--image", "digits:3"]
    assert main([*common, "--query", "0.3,0.6", "--out", str(tmp_path / "a.png")]) == 0
    out = capsys.readouterr().out
    assert "attn_block.attn" in out and "attn_grid.attn" in out
    assert (tmp_path / "a.png").read_bytes()[:8] == PNG
    # no module matches: the generic input-gradient map of the stage feature at the query
    assert main([*common, "--query", "12,20", "--layers", "none*", "--stage", "1", "--out", str(tmp_path / "b.png")]) == 0
    assert "stage 1" in capsys.readouterr().out
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG


def test_set_values_parse_like_config_fields() -> None:
    from visattn.cli._common import parse_overrides

    assert parse_overrides(["dims=32,64", "depths=[1,2]", "drop_path_rate=0.1", "stripe_groups=None,2",
                            "stripe_size=null", "name=a"]) == {
        "dims": (32, 64), "depths": (1, 2), "drop_path_rate": 0.1, "stripe_groups": (None, 2), "stripe_size": None,
        "name": "a"}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["dims"])


_HEAP_PROBE = """
import ctypes, platform, sys
import torch
from visattn.cli import main
main(sys.argv[1:])
from visattn.allocator import keeping_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
free_before = libc.mallinfo2().fordblks
x = torch.empty(16 * 2**20)  # 64 MiB, above glibc's largest default mmap threshold (32 MiB)
del x
print(keeping_freed_memory(), libc.mallinfo2().fordblks - free_before >= 64 * 2**20)
"""


@pytest.mark.skipif(sys.platform != "linux" or __import__("platform").libc_ver()[0] != "glibc",
                    reason="the allocator tuning applies to glibc only")
@pytest.mark.parametrize("flag", [None, "--no-allocator-tuning"])
def test_command_line_keeps_freed_buffers_for_reuse(flag: str | None) -> None:
    # The CLI raises glibc's mmap threshold: a freed 64 MiB tensor stays in the heap (free bytes) for the next one,
    # instead of being unmapped and page-faulted in again; with --no-allocator-tuning glibc unmaps it.
    argv = [flag, "info", "maxvit_tiny"] if flag else ["info", "maxvit_tiny"]
    out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, *argv], capture_output=True, text=True, check=True)
    tuned = flag is None
    assert out.stdout.strip().splitlines()[-1] == f"{tuned} {tuned}"
