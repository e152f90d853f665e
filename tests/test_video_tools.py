"""Video models in the tools: `visattn bench` per clip, space-time attention maps (`visattn show attention --video`),
and image-to-video initialisation (`visattn.weights.inflate`). Tiny configs; no video decoding."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import pytest
import torch

from tests.test_cli_train import PNG
from visattn import create_model
from visattn.bench import count_flops
from visattn.cli import main
from visattn.show import attention_maps, exact_attention_modules, key_frame_spans
from visattn.weights.inflate import inflate_image_to_video

SMALL = dict(dims=(16, 32, 32, 32), depths=(1, 2, 1, 1), num_heads=(1, 2, 2, 2))
VIDEO = dict(SMALL, img_size=(4, 32, 32), stride_kv_adaptive=(1, 2, 2), num_classes=3)
VIDEO_ARGS = ["--model", "mvitv2_small_video", "--set", "dims=16,32,32,32", "--set", "depths=1,2,1,1", "--set",
              "num_heads=1,2,2,2", "--set", "stride_kv_adaptive=1,2,2", "--set", "img_size=4,32,32", "--set",
              "num_classes=3"]


# --- bench --------------------------------------------------------------------------------------------------------

def test_bench_measures_video_models_per_clip(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    # no --sizes: the configured 32 x 32; --frames 6 instead of the configured 4; a batch of 2 clips
    assert main(["bench", *VIDEO_ARGS, "--frames", "6", "--batch-size", "2", "--iters", "1", "--warmup", "0",
                 "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    [row] = list(csv.DictReader((tmp_path / "bench.csv").open()))    # no image baseline beside a video model
    assert (row["frames"], row["height"], row["width"], row["batch"]) == ("6", "32", "32", "2")
    assert float(row["clips_per_s"]) > 0 and row["img_per_s"] == "" and float(row["peak_mem_mb"]) > 0
    assert "6x32x32" in out and "clips/s" in out and "/clip" in out and "img/s" not in out
    # GMACs per clip: a single 6-frame clip counted on its own
    with torch.device("meta"):
        model = create_model("mvitv2_small_video", **VIDEO).eval()
    one_clip = count_flops(functools.partial(model, *model.example_inputs(1, 32, frames=6))) / 2e9
    assert float(row["gmacs"]) == pytest.approx(one_clip, rel=1e-9)
    four = count_flops(functools.partial(model, *model.example_inputs(1, 32))) / 2e9
    assert one_clip > 1.3 * four                                       # more frames, more work per clip
    assert main(["bench", "--model", "mvitv2_tiny", "--frames", "4", "--out", str(tmp_path)]) == 1
    assert "--frames applies to video models" in capsys.readouterr().err


# --- attention maps over space-time tokens --------------------------------------------------------------------------

def _pool_per_head(t: torch.Tensor, pool: torch.nn.Module, norm: torch.nn.Module, size: tuple
                   ) -> tuple[torch.Tensor, tuple]:
    """Pool (B, heads, 1 + N, c) tokens as the reference code does: each head's map a batch item, the class token
    joined before the norm."""
    B, nh, _, c = t.shape
    cls, m = t[:, :, :1], t[:, :, 1:]
    m = pool(m.reshape(B * nh, *size, c).movedim(-1, 1))              # (B*heads, c, *size')
    pooled = tuple(m.shape[2:])
    m = m.flatten(2).transpose(1, 2).reshape(B, nh, -1, c)             # (B, heads, N', c)
    return norm(torch.cat((cls, m), dim=2)), pooled


def _reference_rows(model: torch.nn.Module, x: torch.Tensor, name: str) -> tuple[torch.Tensor, tuple, tuple]:
    """The attention probabilities of module ``name`` recomputed from its own layers: (B, heads, Nq, Nk) with the
    class token first, the query grid and the key grid."""
    attn = dict(model.named_modules())[name]
    block = dict(model.named_modules())[name.rsplit(".", 1)[0]]
    seen = {}
    block.register_forward_pre_hook(lambda m, args: seen.update(size=args[1]))
    block.norm1.register_forward_hook(lambda m, args, out: seen.update(x=out))
    with torch.no_grad():
        model(x)
        tokens, size = seen["x"], seen["size"]
        B, N, _ = tokens.shape
        qkv = attn.qkv(tokens).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, q_size = _pool_per_head(qkv[0], attn.pool_q, attn.norm_q, size)
        k, k_size = _pool_per_head(qkv[1], attn.pool_k, attn.norm_k, size)
        logits = (q * attn.head_dim ** -0.5) @ k.transpose(-2, -1) + attn._rel_pos_bias(q, q_size, k_size, 1)
    return logits.softmax(-1), q_size, k_size


def test_attention_maps_cover_the_pooled_space_time_key_grid() -> None:
    torch.manual_seed(0)
    model = create_model("mvitv2_small_video", **VIDEO).eval()
    names = [n for n in exact_attention_modules(model) if n.startswith(("stages.0.", "stages.1."))]
    assert names == ["stages.0.blocks.0.attn", "stages.1.blocks.0.attn", "stages.1.blocks.1.attn"]
    x = torch.randn(1, 3, 8, 32, 32)                                   # 8 frames: token map 4 x 8 x 8 after the stem
    query = ((5 + 0.5) / 8, 0.3, 0.6)                                  # frame 5, y 0.3, x 0.6
    maps = attention_maps(model, x, query, names)
    # stage 0 (map 4x8x8): keys pooled by (1, 2, 2). Stage 1: its first block pools the queries by (1, 2, 2) and
    # the keys of the 4x8x8 map by (1, 1, 1); the second block sees the 4x4x4 map
    expected = {"stages.0.blocks.0.attn": ((4, 8, 8), (4, 4, 4)), "stages.1.blocks.0.attn": ((4, 4, 4), (4, 8, 8)),
                "stages.1.blocks.1.attn": ((4, 4, 4), (4, 4, 4))}
    for m in maps:
        q_size, k_size = expected[m["name"]]
        assert (m["query_size"], m["key_size"], tuple(m["map"].shape)) == (q_size, k_size, k_size)
        assert m["query"] == tuple(min(int(f * n), n - 1) for f, n in zip(query, q_size))
        assert float(m["map"].sum()) + m["prefix_weight"] == pytest.approx(1.0, abs=1e-5)   # over every key
        assert 0 < m["prefix_weight"] < 1 and (m["map"] > 0).all()
        probs, ref_q, ref_k = _reference_rows(model, x, m["name"])
        assert (ref_q, ref_k) == (q_size, k_size)
        t, y, w = m["query"]
        row = probs[0].mean(0)[1 + (t * q_size[1] + y) * q_size[2] + w]   # class token first
        torch.testing.assert_close(m["map"], row[1:].reshape(k_size), atol=1e-6, rtol=1e-5)
    assert key_frame_spans(4, 8) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    with pytest.raises(ValueError, match="needs 3 fractions"):
        attention_maps(model, x, (0.3, 0.6), names[:1])


def test_show_attention_of_a_video_frame_writes_a_png(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    png = tmp_path / "video_attention.png"
    assert main(["show", "attention", *VIDEO_ARGS, "--frame", "3", "--query", "0.3,0.6", "--threads", "1",
                 "--out", str(png)]) == 0                              # the built-in moving_digits:0, 4 frames
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG
    assert "built-in moving digits video 0 (class right)" in out
    assert "stages.0.blocks.0.attn: query (1, 2, 4) of (2, 8, 8), keys 2x4x4 (t x h x w; frames 0-1, 2-3)" in out
    assert main(["show", "attention", *VIDEO_ARGS, "--frame", "4", "--out", str(png)]) == 1
    assert "the clip has frames 0..3" in capsys.readouterr().err
    assert main(["show", "attention", *VIDEO_ARGS, "--image", "digits:0", "--out", str(png)]) == 1
    assert "this is a video model" in capsys.readouterr().err


# --- image-to-video initialisation --------------------------------------------------------------------------------

def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    image = create_model("mvitv2_small", **SMALL, img_size=(32, 32), num_classes=5).eval()
    video = create_model("mvitv2_small_video", **VIDEO).eval()
    return image, video


@pytest.mark.parametrize("mode", ["average", "centre"])
def test_inflated_patch_embedding_of_a_static_clip_is_the_image_embedding(mode: str) -> None:
    image, video = _pair()
    inflate_image_to_video(image.state_dict(), video, mode=mode)
    frame = torch.randn(1, 3, 32, 32)
    clip = frame[:, :, None].expand(-1, -1, 8, -1, -1)                 # 8 identical frames
    with torch.no_grad():
        ref, ref_size = image.patch_embed(frame)                       # (1, 8*8, C)
        got, size = video.patch_embed(clip)                            # (1, 4*8*8, C): kernel 3, stride 2, pad 1
    assert size == (4, *ref_size)
    got = got.view(1, 4, -1, got.shape[-1])                           # (1, T', H'*W', C)
    bias = image.patch_embed.proj.bias
    for t in range(4):
        if mode == "centre" or t > 0:
            torch.testing.assert_close(got[:, t], ref, atol=1e-5, rtol=1e-5)
        else:   # the first step sees frames -1 (zero padding), 0 and 1: two thirds of the kernel
            torch.testing.assert_close(got[:, 0] - bias, (ref - bias) * 2 / 3, atol=1e-5, rtol=1e-5)


def test_inflation_accounts_for_every_key() -> None:
    image, video = _pair()
    image_state, before = image.state_dict(), {k: v.clone() for k, v in video.state_dict().items()}
    report = inflate_image_to_video(image_state, video)
    after = video.state_dict()
    used = report.inflated + report.copied + report.resized
    assert set(used) | set(report.skipped) == set(image_state) and not set(used) & set(report.skipped)
    filled = used + report.zeroed
    assert sorted(filled + report.initialised) == sorted(after) and len(set(filled + report.initialised)) == len(after)
    # the 2-D kernels: the patch embedding and the q / k / v pooling convs of every block
    assert sorted(report.inflated) == sorted(k for k, v in image_state.items() if v.ndim == 4)
    assert "patch_embed.proj.weight" in report.inflated and any(".attn.pool_k." in k for k in report.inflated)
    assert set(report.initialised) == {"cls_token", "head.fc.weight", "head.fc.bias"}   # no image counterpart
    assert set(report.skipped) == {"head.fc.weight", "head.fc.bias"}    # 5 image classes, 3 video classes
    assert report.zeroed == [k for k in after if k.endswith("rel_pos_t")] and len(report.zeroed) == 5
    assert all(float(after[k].abs().max()) == 0 for k in report.zeroed)
    for key in report.copied:
        assert torch.equal(after[key], image_state[key]), key
    pool = "stages.1.blocks.0.attn.pool_q.weight"                      # (c, 1, 3, 3) -> (c, 1, 3, 3, 3)
    torch.testing.assert_close(after[pool], image_state[pool][:, :, None].expand(-1, -1, 3, -1, -1) / 3)
    for key in report.initialised:
        assert torch.equal(after[key], before[key]), key
    for key in report.resized:                                         # spatial tables of another length
        assert key.endswith(("rel_pos_h", "rel_pos_w")) and after[key].shape != image_state[key].shape
    assert report.filled_fraction(video) > 0.95
    with torch.no_grad():
        assert video(torch.randn(1, 3, 4, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="not a video model"):
        inflate_image_to_video(image_state, image)
    with pytest.raises(ValueError, match="is it a video checkpoint"):
        inflate_image_to_video(video.state_dict(), create_model("mvitv2_small_video", **VIDEO))
