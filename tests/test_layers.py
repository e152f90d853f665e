"""Partitions (a worked example on index maps), padding, and the attention kernel."""

from __future__ import annotations

import pytest
import torch

from visattn.layers import (
    attend,
    grid_partition,
    grid_reverse,
    pad_to_multiple,
    window_partition,
    window_reverse,
)
from visattn.layers.attend import key_padding_bias


def _block_index_map(H: int = 64, W: int = 64, p: int = 8) -> torch.Tensor:
    # every pixel of the k-th p x p tile (row-major, from 1) holds k.
    tiles = torch.arange(1, (H // p) * (W // p) + 1).view(H // p, W // p)
    return tiles.repeat_interleave(p, 0).repeat_interleave(p, 1)[None, :, :, None]  # (1, H, W, 1)


def _cell_position_map(H: int = 64, W: int = 64, g: int = 8) -> torch.Tensor:
    # inside every (H/g) x (W/g) grid cell, pixels are numbered 1..(H/g)(W/g) row-major.
    ch, cw = H // g, W // g
    cell = torch.arange(1, ch * cw + 1).view(ch, cw)
    return cell.repeat(g, g)[None, :, :, None]  # (1, H, W, 1)


def test_worked_example_window_partition() -> None:
    x = _block_index_map()
    assert x[0, :9, :9, 0].tolist()[0] == [1] * 8 + [2]
    assert x[0, 8, 0, 0] == 9 and x[0, 8, 8, 0] == 10
    windows = window_partition(x, (8, 8))
    assert windows.shape == (64, 8, 8, 1)
    for idx, value in [(0, 1), (1, 2), (10, 11)]:
        assert (windows[idx, ..., 0] == value).all()


def test_worked_example_grid_partition() -> None:
    x = _cell_position_map()
    assert x[0, 0, :9, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 1]
    windows = grid_partition(x, (8, 8))
    assert windows.shape == (64, 8, 8, 1)
    for idx, value in [(0, 1), (1, 2), (10, 11)]:
        assert (windows[idx, ..., 0] == value).all()


@pytest.mark.parametrize("size", [(8, 8), (4, 2)])
def test_partitions_round_trip(size: tuple[int, int]) -> None:
    x = torch.randn(2, 16, 24, 5)
    torch.testing.assert_close(window_reverse(window_partition(x, size), size, (16, 24)), x)
    torch.testing.assert_close(grid_reverse(grid_partition(x, size), size, (16, 24)), x)


def test_grid_groups_are_strided() -> None:
    x = torch.arange(12 * 12).view(1, 12, 12, 1)
    g = grid_partition(x, 3)  # cells of 4x4; group 0 holds pixel (0,0) of every cell
    assert g[0, ..., 0].tolist() == [[0, 4, 8], [48, 52, 56], [96, 100, 104]]


def test_partition_rejects_indivisible_and_pad_fixes_it() -> None:
    x = torch.randn(1, 10, 13, 3)
    with pytest.raises(ValueError, match="divisible"):
        window_partition(x, 4)
    padded, pad = pad_to_multiple(x, 4)
    assert padded.shape == (1, 12, 16, 3) and pad == (2, 3)
    torch.testing.assert_close(padded[:, :10, :13], x)
    assert padded[:, 10:].abs().sum() == 0


def test_attend_fused_matches_reference_with_bias_and_mask() -> None:
    q, k, v = (torch.randn(3, 2, 9, 8) for _ in range(3))
    bias = torch.randn(2, 9, 9)
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[1, 5:] = False
    full_bias = bias[None] + key_padding_bias(valid, torch.float32)
    fused = attend(q, k, v, bias=full_bias, fused=True)
    reference = attend(q, k, v, bias=full_bias, fused=False)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    # masked keys carry no information: changing them changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 5:] += 100.0
    v2[1, :, 5:] -= 50.0
    torch.testing.assert_close(attend(q, k2, v2, bias=full_bias), fused)


# --- model-building helpers (layers/model.py) --------------------------------------------------------------------

class _Counting(torch.nn.Module):
    """x * w + extra, counting its forward calls (a checkpointed block runs again in the backward pass)."""

    def __init__(self, scale: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(scale))
        self.calls = 0

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(x * self.w) + extra


@pytest.mark.parametrize("checkpointing", [False, True])
def test_run_blocks_chains_and_checkpoints(checkpointing: bool) -> None:
    from visattn.layers.model import run_blocks

    blocks = torch.nn.ModuleList(_Counting(s) for s in (0.5, 2.0, -1.5))
    x = torch.randn(4, 3, requires_grad=True)
    extra = torch.randn(4, 3)
    out = run_blocks(blocks, x, checkpointing, extra)
    expected = x
    for s in (0.5, 2.0, -1.5):
        expected = torch.tanh(expected * s) + extra
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    assert [b.calls for b in blocks] == [2 if checkpointing else 1] * 3   # recomputed in backward when checkpointed
    grads = [b.w.grad.clone() for b in blocks]
    reference = torch.nn.ModuleList(_Counting(s) for s in (0.5, 2.0, -1.5))
    run_blocks(reference, x, not checkpointing, extra).sum().backward()
    torch.testing.assert_close(grads, [b.w.grad for b in reference])
    with torch.no_grad():                                              # no autograd: nothing to checkpoint
        run_blocks(blocks, x, checkpointing, extra)
    assert [b.calls for b in blocks] == [3 if checkpointing else 2] * 3


def test_init_trunc_normal_touches_only_the_named_layers() -> None:
    from visattn.layers.model import init_trunc_normal_

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Conv2d(8, 8, 3), torch.nn.LayerNorm(8),
                                torch.nn.Linear(256, 64, bias=False))
    conv = model[1].weight.detach().clone()
    init_trunc_normal_(model)
    for linear in (model[0], model[3]):
        assert linear.weight.abs().max() <= 2 and 0.015 < linear.weight.std() < 0.025
    assert not model[0].bias.any()
    assert torch.equal(model[1].weight, conv)                          # convs only when asked for
    init_trunc_normal_(model, std=0.1, layers=(torch.nn.Conv2d,))
    assert not torch.equal(model[1].weight, conv) and not model[1].bias.any()
    assert torch.equal(model[2].weight, torch.ones(8))
