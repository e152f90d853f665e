"""Mechanism-agnostic building blocks."""

from .attend import attend, use_fused
from .partition import (
    grid_partition,
    grid_reverse,
    pad_to_multiple,
    valid_token_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "attend",
    "use_fused",
    "window_partition",
    "window_reverse",
    "grid_partition",
    "grid_reverse",
    "pad_to_multiple",
    "valid_token_mask",
]
