"""The contract every registered model keeps, and the model-building helpers the families share.

Library code (export, bench, the training loop, the command line) asks a model the same few questions through
:class:`VisionModel`: which task it serves, what rank of input it takes, the smallest input it accepts, and an example
input (:meth:`VisionModel.example_inputs`). It never reads attributes that exist for the tests: ``test_overrides``
(the reduced config the generic tests build) is read by the tests only.

The helpers: :func:`run_blocks` / :func:`call_block` run a stage's blocks with optional gradient checkpointing, and
:func:`init_trunc_normal_` is timm's truncated-normal initialisation of linear (and optionally conv) layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from .checks import check_image

__all__ = ["TASKS", "VisionModel", "call_block", "example_size", "init_trunc_normal_", "random_tensor", "run_blocks"]

# What a model can serve: image / video classification, image restoration (image in, image out), few-shot
# segmentation (query + support images and masks in, query logit maps out).
TASKS = ("classification", "restoration", "fewshot")


def example_size(min_size: int) -> tuple[int, int]:
    """The default (H, W) of example inputs: odd, not square, and divisible by no window or stride of the models.

    ``(m + 3, 3 * m // 2 + 11)`` for the minimum size m: 35 x 59 at m = 32, 11 x 23 at m = 8. Small, so the generic
    tests stay fast, yet every padding path runs; never 0 or 1, which ``torch.export`` would specialise.
    """
    return (min_size + 3, 3 * min_size // 2 + 11)


class VisionModel(nn.Module):
    """Base class of every registered model: the questions library code asks a model, answered the same way.

    A subclass sets these class attributes (``register_models`` refuses a class that does not):

    Attributes:
        config_class: the frozen, keyword-only config dataclass the constructor takes; it has an ``in_chans`` field.
        task: what the model serves: ``"classification"`` (image and video classifiers), ``"restoration"``
            (image in, image out: GRL) or ``"fewshot"`` (query, support images and support masks in, query logit
            maps out: CAT-Net).
        input_ndim: rank of the main input: 4 for images (B, C, H, W), 5 for video (B, C, T, H, W).
        min_input_size: the smallest height and width ``forward`` accepts (smaller raise a ``ValueError``).
        min_input_frames: video models: the fewest frames ``forward`` accepts; None for image models.
        input_names: the names of ``forward``'s positional inputs, in order; :meth:`example_inputs` returns one
            tensor per name and the exported graphs (ONNX, torch.export) name their inputs so.
        test_overrides: config fields of a reduced model exercising every code path of the family; read by the
            generic tests only, never by library code.

    An instance has ``config`` (its config dataclass) and ``set_grad_checkpointing(enable)``.
    """

    config_class: ClassVar[type]
    task: ClassVar[str]
    input_ndim: ClassVar[int] = 4
    min_input_size: ClassVar[int]
    min_input_frames: ClassVar[int | None] = None
    input_names: ClassVar[tuple[str, ...]] = ("x",)
    test_overrides: ClassVar[dict[str, Any]] = {}

    config: Any

    @property
    def num_frames(self) -> int | None:
        """Video models: the frame count the config is built for (the default of :meth:`example_inputs`); None
        for image models."""
        return None

    def check_input(self, x: Any) -> None:
        """Raise a ``ValueError`` naming what was expected unless ``x`` is a floating-point tensor of rank
        ``input_ndim`` with ``config.in_chans`` channels, height and width >= ``min_input_size`` and (video) at
        least ``min_input_frames`` frames. Shapes only, so it runs unchanged under torch.compile / torch.export."""
        who = type(self).__name__
        if is_fx_symbolic_tracing():                  # torch.fx passes a Proxy: nothing to check eagerly
            return
        check_image(x, self.config.in_chans, who=who, min_size=self.min_input_size, ndim=self.input_ndim)
        if self.input_ndim == 5 and self.min_input_frames is not None and x.shape[2] < self.min_input_frames:
            raise ValueError(f"{who} needs at least {self.min_input_frames} frames (B, C, T, H, W), got T = "
                             f"{x.shape[2]}")

    def _example_defaults(self, dtype: torch.dtype | None, device: torch.device | str | None
                          ) -> tuple[torch.dtype, torch.device]:
        param = next(self.parameters(), None)
        if dtype is None:
            dtype = param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
        if device is None:
            device = param.device if param is not None else torch.empty(0).device  # the default device
        return dtype, torch.device(device)

    def _example_size(self, size: int | tuple[int, int] | None) -> tuple[int, int]:
        if size is None:
            return example_size(self.min_input_size)
        H, W = (size, size) if isinstance(size, int) else tuple(size)
        if min(H, W) < self.min_input_size:
            raise ValueError(f"{type(self).__name__} needs height and width >= {self.min_input_size}, got "
                             f"size {H}x{W}")
        return H, W

    def example_inputs(self, batch: int = 2, size: int | tuple[int, int] | None = None, *, frames: int | None = None,
                       dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """Random inputs ``forward`` accepts, one per name in ``input_names``: ``model(*model.example_inputs())``.

        Images are standard normal values. The generic tests, ``visattn.bench`` and ``visattn.export`` all build
        their inputs here.

        Args:
            batch: batch size (>= 1; ``torch.export`` specialises 1, hence the default 2).
            size: height and width (an int for a square); default :func:`example_size` of ``min_input_size``.
            frames: video models: the frame count (default ``num_frames``, the config's); image models take none.
            dtype: default the model's parameter dtype.
            device: default the device of the model's parameters (meta for a model built on the meta device).
            generator: random generator for reproducible inputs (drawn on its own device, then moved).

        Returns:
            (x,): (B, in_chans, H, W), or (B, in_chans, T, H, W) for video models. Models with more inputs
            override this and return those too: few-shot models return (query, support (B, K, C, Hs, Ws),
            support_mask (B, K, Hs, Ws), binary and never empty) and take two more keywords, ``shots`` (K, default
            1) and ``support_size`` (default the query's).
        """
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        H, W = self._example_size(size)
        dtype, device = self._example_defaults(dtype, device)
        channels = self.config.in_chans
        if self.input_ndim == 5:
            frames = self.num_frames if frames is None else frames
            low = self.min_input_frames or 1
            if frames is None or frames < low:
                raise ValueError(f"{type(self).__name__} needs frames >= {low}, got {frames}")
            shape: tuple[int, ...] = (batch, channels, frames, H, W)
        elif frames is not None:
            raise ValueError(f"{type(self).__name__} takes images (B, C, H, W): frames must be None, got {frames}")
        else:
            shape = (batch, channels, H, W)
        return (random_tensor(torch.randn, shape, dtype=dtype, device=device, generator=generator),)


def random_tensor(draw: Callable[..., Tensor], shape: tuple[int, ...], *, dtype: torch.dtype,
                  device: torch.device, generator: torch.Generator | None) -> Tensor:
    """``draw(shape)`` (``torch.randn`` / ``torch.rand``) as ``dtype`` on ``device``; with a generator, drawn on
    the generator's device first (a generator draws only there) and moved."""
    if generator is None:
        return draw(shape, device=device).to(dtype)
    return draw(shape, generator=generator, device=generator.device).to(device=device, dtype=dtype)


def call_block(block: Callable[..., Any], *args: Any, checkpointing: bool) -> Any:
    """``block(*args)``, through ``torch.utils.checkpoint`` (non-reentrant) when ``checkpointing`` is set and
    autograd records: the activations inside the block are recomputed in the backward pass instead of kept."""
    if checkpointing and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def run_blocks(blocks: Iterable[nn.Module], x: Tensor, checkpointing: bool, *extra: Any) -> Tensor:
    """Run ``x`` through ``blocks`` in order, ``x = block(x, *extra)``, each block checkpointed when
    ``checkpointing`` is set (see :func:`call_block`)."""
    for block in blocks:
        x = call_block(block, x, *extra, checkpointing=checkpointing)
    return x


def init_trunc_normal_(model: nn.Module, *, std: float = 0.02,
                       layers: tuple[type[nn.Module], ...] = (nn.Linear,)) -> None:
    """timm's initialisation: truncated normal(0, ``std``) weights (cut at +-2, not at +-2 std) and zero biases for
    every module of ``model`` that is an instance of ``layers``; other modules keep their init. In place."""

    def init(module: nn.Module) -> None:
        if isinstance(module, layers):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    model.apply(init)
