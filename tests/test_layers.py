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
