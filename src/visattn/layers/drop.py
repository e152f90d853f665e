"""Stochastic depth (drop path), per sample."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DropPath", "drop_path_rates"]


class DropPath(nn.Module):
    """Zero a whole residual branch per sample with probability ``p`` during training (Huang et al., 2016)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def drop_path_rates(rate: float, depths: tuple[int, ...]) -> list[list[float]]:
    """Linearly increasing drop-path rates from 0 to ``rate`` over all blocks, split per stage."""
    total = sum(depths)
    # Plain Python (not torch.linspace) so models can be built on the meta device.
    rates = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(rates[start : start + d])
        start += d
    return out
