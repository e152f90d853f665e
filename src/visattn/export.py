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

Every input is dynamic: the tracing inputs come from the model's own ``example_inputs`` (batch 2, a size no partition
divides; :class:`visattn.layers.model.VisionModel`), and the graph's inputs take the names of ``model.input_names``.
Few-shot models (``task == "fewshot"``, CAT-Net) take three: the query ``x`` (B, C, H, W), the support images
``support`` (B, K, C, Hs, Ws) and their masks ``support_mask`` (B, K, Hs, Ws) in [0, 1]. The shot count K follows
``dynamic_batch`` and the support size ``dynamic_size`` (independent of the query's). Eager input value checks (mask
range, no empty mask) do not run in the traced graph: an exported program trusts its inputs.

The export runs with ``torch.fx.experimental._config.backed_size_oblivious``: reshapes and broadcasts then do not
specialise a dimension on whether it is 1 (one window, batch 1); the generic code they trace is valid for 1 too,
and the tests run the exported graphs at sizes with a single window and at batch 1.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .layers.model import VisionModel, example_size

__all__ = ["DTYPES", "dynamic_dim_names", "export_program", "load_torch_export", "to_onnx", "to_torch_export",
           "trace_inputs"]

log = logging.getLogger("visattn")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Upper bound given to the dynamic height / width (the shape solver wants a finite range).
MAX_SIZE = 8192
MAX_FRAMES = 4096  # likewise for the frame count of video models (input (B, C, T, H, W))
MAX_SHOTS = 1024  # likewise for the support images per query of few-shot models
ONNX_OPSET = 18


def _is_fewshot(model: VisionModel) -> bool:
    return model.task == "fewshot"


def trace_inputs(model: VisionModel, size: tuple[int, int] | None = None, *, batch: int = 2,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The inputs :func:`export_program` traces with by default, by name: ``model.example_inputs`` (fixed seed, so
    the same trace every time) at ``size`` (default the contract's :func:`~visattn.layers.model.example_size`), on
    ``device`` (default the model's).

    A few-shot model gets 2 shots and a support size other than the query's: torch.export would specialise a shot
    count of 1 and tie equal sizes together.
    """
    generator = torch.Generator().manual_seed(0)
    if _is_fewshot(model):
        H, W = size if size is not None else example_size(model.min_input_size)
        inputs = model.example_inputs(batch, (H, W), dtype=dtype, device=device, generator=generator, shots=2,
                                      support_size=(H + 4, W + 2))
    else:
        inputs = model.example_inputs(batch, size, dtype=dtype, device=device, generator=generator)
    return dict(zip(model.input_names, inputs))


def _as_inputs(model: VisionModel, example: Tensor | dict[str, Tensor] | None,
               dtype: torch.dtype) -> dict[str, Tensor]:
    """The tracing inputs by name: the default set, the given dict, or a main input completed by the defaults."""
    names = model.input_names
    if example is None:
        return trace_inputs(model, dtype=dtype)
    if isinstance(example, Tensor):
        defaults = trace_inputs(model, tuple(example.shape[-2:]), batch=example.shape[0], dtype=dtype)
        return {**defaults, names[0]: example.to(dtype)}
    if set(example) != set(names):
        raise ValueError(f"{type(model).__name__} takes the inputs {names}, got {tuple(example)}")
    return {name: example[name].to(dtype) for name in names}


def _dynamic_shapes(model: VisionModel, inputs: dict[str, Tensor], dynamic_size: bool,
                    dynamic_batch: bool) -> dict[str, Any]:
    from torch.export import Dim

    x = inputs["x"]
    low = model.min_input_size
    dims: dict[int, Any] = {}
    batch = Dim("batch", min=1, max=1 << 16) if dynamic_batch else None
    if dynamic_batch:
        dims[0] = batch
    if dynamic_size:
        dims[x.ndim - 2] = Dim("height", min=low, max=MAX_SIZE)
        dims[x.ndim - 1] = Dim("width", min=low, max=MAX_SIZE)
        if x.ndim == 5:
            dims[2] = Dim("frames", min=model.min_input_frames or 1, max=MAX_FRAMES)
    if not _is_fewshot(model):
        return {"x": dims}
    # support (B, K, C, Hs, Ws) and support_mask (B, K, Hs, Ws): one batch, one shot count, one support size.
    support: dict[int, Any] = {}
    if dynamic_batch:
        support[0] = batch
        support[1] = Dim("shots", min=1, max=MAX_SHOTS)
    if dynamic_size:
        support[3] = Dim("support_height", min=low, max=MAX_SIZE)
        support[4] = Dim("support_width", min=low, max=MAX_SIZE)
    mask = {(i if i < 2 else i - 1): d for i, d in support.items()}
    return {"x": dims, "support": support, "support_mask": mask}


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


class _FewShotForward(_Forward):
    """``model(x, support, support_mask)``: three positional inputs (the exported graph's names)."""

    def forward(self, x: Tensor, support: Tensor, support_mask: Tensor) -> Tensor:
        return self.model(x, support, support_mask)


class _AttentionLayer(VisionModel):
    """A registered attention module, a (B, C, H, W) -> (B, C', H', W') drop-in, exported like a model with one
    input of any size (its example input gives the channels)."""

    task = "layer"
    input_ndim = 4
    min_input_size = 1

    def __init__(self, layer: nn.Module, channels: int):
        super().__init__()
        self.layer, self.channels = layer, channels

    def example_inputs(self, batch: int = 2, size: int | tuple[int, int] | None = None, **_: Any) -> tuple[Tensor]:
        h, w = (size, size) if isinstance(size, int) else (size or (8, 8))
        return (torch.zeros(batch, self.channels, h, w),)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


def _as_model(module: nn.Module, example: Tensor | dict[str, Tensor] | None) -> nn.Module:
    # attention modules (visattn.create_attention) export with an example input; other plain modules do not
    from .registry import get_attention_class, list_attention

    registered = {get_attention_class(n) for n in list_attention()}
    if not isinstance(module, VisionModel) and type(module) in registered and isinstance(example, Tensor) \
            and example.ndim == 4:
        return _AttentionLayer(module, example.shape[1])
    return module


def _prepare(model: nn.Module, dtype: str | torch.dtype) -> tuple[VisionModel, torch.dtype]:
    if not isinstance(model, VisionModel):
        raise ValueError(f"export takes a visattn model (a visattn.layers.model.VisionModel: task, input_ndim, "
                         f"min_input_size, input_names, example_inputs) or a registered attention module with a "
                         f"(B, C, H, W) example input, got {type(model).__name__}")
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
    names = ("batch", "shots", "frames", "height", "width", "support_height", "support_width")
    frozen = [d for d in names if any(f" {d} " in line for line in lines)]
    which = ", ".join(frozen) if frozen else "a dynamic dimension"
    first = lines[0].strip(" -") if lines else ""
    return ValueError(
        f"{type(model).__name__} cannot be exported with a dynamic {which}: its code branches on that size, so a "
        f"graph traced at one size would be wrong at others ({first}). Export with dynamic_size=False for one "
        "fixed size, or report this as a bug.")


def export_program(model: nn.Module, example: Tensor | dict[str, Tensor] | None = None, *, dynamic_size: bool = True,
                   dynamic_batch: bool = True, dtype: str | torch.dtype = "fp32") -> torch.export.ExportedProgram:
    """Trace ``model`` (eval mode) with ``torch.export``.

    Args:
        model: a visattn model (:class:`~visattn.layers.model.VisionModel`).
        example: the tracing input; default ``model.example_inputs()`` (fixed seed). With ``dynamic_size=False``
            its height and width are the only ones the program accepts. Models with several inputs take a dict by
            ``model.input_names``; a main input tensor alone is completed by ``example_inputs`` (few-shot: random
            support images and masks of another size, 2 shots).
        dynamic_size: height and width symbolic (from ``model.min_input_size`` up to 8192), and for video input
            (B, C, T, H, W) the frame count too (from ``model.min_input_frames`` up to 4096); for few-shot models
            the support height and width too.
        dynamic_batch: batch size symbolic, and the shot count of few-shot models (1 to 1024).
        dtype: "fp32", "bf16" or "fp16" (the model and the input are cast).

    Raises:
        ValueError: the model cannot be traced with the requested dynamic dimensions (the message names them).
    """
    model, dtype = _prepare(_as_model(model, example), dtype)
    inputs = _as_inputs(model, example, dtype)
    shapes = _dynamic_shapes(model, inputs, dynamic_size, dynamic_batch)
    wrapper = _FewShotForward(model) if _is_fewshot(model) else _Forward(model)
    dynamic = sorted({d.__name__ for dims in shapes.values() for d in dims.values()}, key=_DIM_ORDER.index)
    log.info("tracing %s with torch.export at %s (dynamic: %s); this takes seconds to minutes", type(model).__name__,
             "x".join(str(n) for n in inputs["x"].shape), ", ".join(dynamic) or "none")
    start = time.perf_counter()
    try:
        with torch.no_grad(), _size_oblivious(), _NchwConvInputs():
            program = torch.export.export(wrapper, tuple(inputs.values()), dynamic_shapes=shapes, strict=False)
    except torch._dynamo.exc.UserError as err:
        raise _explain(model, err) from err
    log.info("traced in %.0f s", time.perf_counter() - start)
    return program


_DIM_ORDER = ["batch", "shots", "frames", "height", "width", "support_height", "support_width"]


def dynamic_dim_names(program: torch.export.ExportedProgram, model: nn.Module) -> dict[str, str]:
    """The program's size symbols (``s77``) -> the names of the dynamic dimensions they stand for (``batch``,
    ``height``...), read from the input placeholders and the axes :func:`export_program` made dynamic."""
    user = program.graph_signature.user_inputs
    vals = [n.meta["val"] for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    names = ("x", "support", "support_mask")[:len(vals)]
    shapes = _dynamic_shapes(model, dict(zip(names, vals)), True, True)
    out: dict[str, str] = {}
    for name, val in zip(names, vals):
        for axis, dim in shapes.get(name, {}).items():
            size = val.shape[axis]
            if isinstance(size, torch.SymInt) and re.fullmatch(r"s\d+", str(size)):
                out.setdefault(str(size), dim.__name__)
    return out


def _rename_onnx_dims(path: Path, names: dict[str, str]) -> None:
    """Rename the symbolic dimensions (``dim_param``) of the graph's inputs, outputs and value infos: ``s77`` ->
    ``batch``, and inside expressions (``2*s53`` -> ``2*height``)."""
    import onnx

    if not names:
        return
    model = onnx.load(str(path))
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = pattern.sub(lambda m: names[m.group(1)], dim.dim_param)
    onnx.save(model, str(path))


def to_torch_export(model: nn.Module, path: str | Path, *, example: Tensor | dict[str, Tensor] | None = None,
                    dynamic_size: bool = True, dynamic_batch: bool = True,
                    dtype: str | torch.dtype = "fp32") -> torch.export.ExportedProgram:
    """Export ``model`` (see :func:`export_program`) and save the program to ``path`` (``torch.export.save``).

    Load it back with :func:`load_torch_export`; ``program.module()(x)`` runs it (few-shot models:
    ``program.module()(x, support, support_mask)``).
    """
    program = export_program(model, example, dynamic_size=dynamic_size, dynamic_batch=dynamic_batch, dtype=dtype)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    log.info("saving the program")
    torch.export.save(program, tmp)
    tmp.replace(path)                                                  # atomic: never a half-written file
    return program


def load_torch_export(path: str | Path) -> torch.export.ExportedProgram:
    """A program written by :func:`to_torch_export`."""
    return torch.export.load(Path(path))


def to_onnx(model: nn.Module, path: str | Path, dynamic_size: bool = True, *,
            example: Tensor | dict[str, Tensor] | None = None, dynamic_batch: bool = True,
            dtype: str | torch.dtype = "fp32", opset: int = ONNX_OPSET) -> Path:
    """Export ``model`` to an ONNX file with input ``x`` and output ``y``; batch, height and width dynamic.

    The inputs are named by ``model.input_names``: ``x``, and for few-shot models ``support`` and ``support_mask``.
    The dynamic dimensions carry their names in the file (``dim_param``): ``batch``, ``height``, ``width``, and
    ``frames`` for video, ``shots``, ``support_height``, ``support_width`` for few-shot models.

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
    names = list(model.input_names)
    log.info("converting the program to ONNX (opset %d)", opset)
    start = time.perf_counter()
    with _size_oblivious():                                            # ONNX decompositions re-trace the program
        onnx_program = torch.onnx.export(program, input_names=names, output_names=["y"], opset_version=opset,
                                         dynamo=True, external_data=False, verbose=False)
    onnx_program.save(tmp)
    _rename_onnx_dims(tmp, dynamic_dim_names(program, model))
    tmp.replace(path)
    log.info("converted in %.0f s", time.perf_counter() - start)
    return path
