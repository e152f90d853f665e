"""Input validation shared by attention modules and models: clear errors instead of deep tracebacks."""

from __future__ import annotations

from torch import Tensor
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ["check_image"]


def check_image(x: object, channels: int, *, who: str, min_size: int = 1, ndim: int = 4) -> None:
    """Raise a ``ValueError`` unless ``x`` is a floating tensor (B, channels, *spatial) with spatial >= min_size.

    ``ndim`` is 4 for images (B, C, H, W) and 5 for video (B, C, T, H, W).
    """
    if is_fx_symbolic_tracing():                  # torch.fx symbolic tracing passes a Proxy: nothing to check eagerly
        return
    layout = "(B, C, H, W)" if ndim == 4 else "(B, C, T, H, W)"
    if not isinstance(x, Tensor):
        raise ValueError(f"{who} expects a torch.Tensor {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{who} expects a {ndim}-D tensor {layout} with C={channels}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who} expects a floating-point tensor (float32/float16/bfloat16), got {x.dtype}")
    if x.shape[1] != channels:
        raise ValueError(f"{who} expects {channels} input channels {layout}, got {x.shape[1]} (shape {tuple(x.shape)})")
    spatial = tuple(x.shape[2:])
    if any(s < min_size for s in spatial[-2:]):
        raise ValueError(f"{who} needs height and width >= {min_size}, got {spatial[-2]}x{spatial[-1]}")
