"""Deployment: a model as a ``torch.export`` program or an ONNX graph, with dynamic batch, height and width (and
frame count for video models).

    from visattn.export import to_onnx, to_torch_export, load_torch_export
    to_onnx(model, "maxvit.onnx")                    # batch, H and W dynamic; opset 18
    program = to_torch_export(model, "maxvit.pt2")   # an ExportedProgram, saved with torch.export.save
    load_torch_export("maxvit.pt2").module()(x)

Both go through ``torch.export`` (ONNX through ``torch.onnx.export(..., dynamo=True)``), which traces the model with
symbolic sizes. The models' padding, partition and crop code is written for it: padded sizes are ``ceil(H / P) * P``
products, pad / mask / crop run unconditionally while a size is symbolic (``layers.partition.is_symbolic``), and no
size becomes a Python int. A size-dependent branch that slipped through shows up here as a constraint violation,
which :func:`export_program` turns into a ``ValueError`` naming the dimension that would be frozen, instead of a
graph that is silently wrong at other sizes.

The export runs with ``torch.fx.experimental._config.backed_size_oblivious``: reshapes and broadcasts then do not
specialise a dimension on whether it is 1 (one window, batch 1); the generic code they trace is valid for 1 too,
and the tests run the exported graphs at sizes with a single window and at batch 1.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DTYPES", "example_input", "export_program", "load_torch_export", "to_onnx", "to_torch_export"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Upper bound given to the dynamic height / width (the shape solver wants a finite range).
MAX_SIZE = 8192
MAX_FRAMES = 4096  # likewise for the frame count of video models (input (B, C, T, H, W))
ONNX_OPSET = 18


def _input_ndim(model: nn.Module) -> int:
    return getattr(model, "input_ndim", 4)


def example_input(model: nn.Module, *, batch: int = 2, size: tuple[int, int] | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """A random input the model accepts, used to trace it: batch 2 and a size that no partition divides.

    Sizes 0 and 1 are never traced (torch.export would specialise them), hence batch 2 and H, W >= 2.
    """
    config = model.config
    in_chans = getattr(config, "in_chans", 3)
    if size is None:
        low = max(getattr(model, "min_input_size", 32), 2)
        size = (2 * low + 5, 3 * low - 7)                              # e.g. 69 x 89 for min 32: odd, not a multiple
    shape: tuple[int, ...] = (batch, in_chans, *size)
    if _input_ndim(model) == 5:
        test_shape = getattr(model, "test_input_shape", (batch, in_chans, 4, *size))
        shape = (batch, in_chans, test_shape[2], *size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _dynamic_shapes(model: nn.Module, x: Tensor, dynamic_size: bool, dynamic_batch: bool) -> dict[str, Any]:
    from torch.export import Dim

    dims: dict[int, Any] = {}
    if dynamic_batch:
        dims[0] = Dim("batch", min=1, max=1 << 16)
    if dynamic_size:
        low = max(getattr(model, "min_input_size", 1), 1)
        dims[x.ndim - 2] = Dim("height", min=low, max=MAX_SIZE)
        dims[x.ndim - 1] = Dim("width", min=low, max=MAX_SIZE)
        if x.ndim == 5:
            dims[2] = Dim("frames", min=max(getattr(model, "min_input_frames", 1), 1), max=MAX_FRAMES)
    return {"x": dims}


@contextlib.contextmanager
def _size_oblivious() -> Iterator[None]:
    from torch.fx.experimental import _config

    with _config.patch(backed_size_oblivious=True):
        yield


class _NchwConvInputs(torch.overrides.TorchFunctionMode):
    """Hands every convolution an NCHW-contiguous input while tracing.

    Memory format is no part of an exported graph's meaning (ONNX has none), but PyTorch's CPU convolution picks its
    backend from it, and for channels-last inputs (the models' eager fast path) that choice reads the batch size:
    tracing it would freeze the batch to > 1. ``clone`` (not ``contiguous``, whose stride check would guard too).
    """

    _CONVS = (torch.conv1d, torch.conv2d, torch.conv3d)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._CONVS and args and isinstance(args[0], Tensor):
            args = (args[0].clone(memory_format=torch.contiguous_format), *args[1:])
        return func(*args, **kwargs)


class _Forward(nn.Module):
    """``model(x)`` with one positional tensor input named ``x`` (the name the dynamic shapes refer to)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _prepare(model: nn.Module, dtype: str | torch.dtype) -> tuple[nn.Module, torch.dtype]:
    if getattr(model, "task", "classification") == "fewshot":
        raise ValueError(f"{type(model).__name__} takes support images and masks besides the query; export of "
                         "few-shot models is not supported (export the backbone instead)")
    dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype}")
    if next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)                          # leave the caller's model as it was
    return model.eval(), dtype


def _explain(model: nn.Module, err: Exception) -> ValueError:
    """A constraint violation as a user-facing error naming the dimension that would be frozen."""
    text = str(err)
    lines = [line for line in text.splitlines() if "satisf" in line or "specializ" in line]
    frozen = [d for d in ("batch", "frames", "height", "width") if any(f" {d} " in line for line in lines)]
    which = ", ".join(frozen) if frozen else "a dynamic dimension"
    first = lines[0].strip(" -") if lines else ""
    return ValueError(
        f"{type(model).__name__} cannot be exported with a dynamic {which}: its code branches on that size, so a "
        f"graph traced at one size would be wrong at others ({first}). Export with dynamic_size=False for one "
        "fixed size, or report this as a bug.")


def export_program(model: nn.Module, example: Tensor | None = None, *, dynamic_size: bool = True,
                   dynamic_batch: bool = True, dtype: str | torch.dtype = "fp32") -> torch.export.ExportedProgram:
    """Trace ``model`` (eval mode) with ``torch.export``.

    Args:
        model: a visattn model (or any module taking one image tensor).
        example: the tracing input; default :func:`example_input`. With ``dynamic_size=False`` its height and width
            are the only ones the program accepts.
        dynamic_size: height and width symbolic (from ``model.min_input_size`` up to 8192), and for video input
            (B, C, T, H, W) the frame count too (from ``model.min_input_frames``, default 1, up to 4096).
        dynamic_batch: batch size symbolic.
        dtype: "fp32", "bf16" or "fp16" (the model and the input are cast).

    Raises:
        ValueError: the model cannot be traced with the requested dynamic dimensions (the message names them).
    """
    model, dtype = _prepare(model, dtype)
    x = example_input(model, dtype=dtype) if example is None else example.to(dtype)
    shapes = _dynamic_shapes(model, x, dynamic_size, dynamic_batch)
    try:
        with torch.no_grad(), _size_oblivious(), _NchwConvInputs():
            return torch.export.export(_Forward(model), (x,), dynamic_shapes=shapes, strict=False)
    except torch._dynamo.exc.UserError as err:
        raise _explain(model, err) from err


def to_torch_export(model: nn.Module, path: str | Path, *, example: Tensor | None = None, dynamic_size: bool = True,
                    dynamic_batch: bool = True, dtype: str | torch.dtype = "fp32") -> torch.export.ExportedProgram:
    """Export ``model`` (see :func:`export_program`) and save the program to ``path`` (``torch.export.save``).

    Load it back with :func:`load_torch_export`; ``program.module()(x)`` runs it.
    """
    program = export_program(model, example, dynamic_size=dynamic_size, dynamic_batch=dynamic_batch, dtype=dtype)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.export.save(program, tmp)
    tmp.replace(path)                                                  # atomic: never a half-written file
    return program


def load_torch_export(path: str | Path) -> torch.export.ExportedProgram:
    """A program written by :func:`to_torch_export`."""
    return torch.export.load(Path(path))


def to_onnx(model: nn.Module, path: str | Path, dynamic_size: bool = True, *, example: Tensor | None = None,
            dynamic_batch: bool = True, dtype: str | torch.dtype = "fp32", opset: int = ONNX_OPSET) -> Path:
    """Export ``model`` to an ONNX file with input ``x`` and output ``y``; batch, height and width dynamic.

    The graph comes from the same ``torch.export`` trace (:func:`export_program`), converted by
    ``torch.onnx.export(..., dynamo=True)`` (needs the ``onnx`` and ``onnxscript`` packages). Returns ``path``.
    """
    from .layers.attend import use_fused

    # The reference attention (matmul, softmax, matmul): what ONNX runs anyway, and it spares the converter's
    # re-trace of the SDPA decomposition, whose output strides differ from the fused kernel's.
    with use_fused(False):
        program = export_program(model, example, dynamic_size=dynamic_size, dynamic_batch=dynamic_batch, dtype=dtype)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.onnx")
    with _size_oblivious():                                            # ONNX decompositions re-trace the program
        onnx_program = torch.onnx.export(program, input_names=["x"], output_names=["y"], opset_version=opset,
                                         dynamo=True, external_data=False, verbose=False)
    onnx_program.save(tmp)
    tmp.replace(path)
    return path
