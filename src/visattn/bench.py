"""Timing, memory and FLOPs of a model or an attention module, over a list of resolutions.

* FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` on meta tensors (no compute, any size), through the
  reference attention path so every attention matmul is an explicit, counted op. Reported as GMACs
  (multiply-adds = counted FLOPs / 2), the convention of the papers' "FLOPs" columns.
* Time: median wall time of ``iters`` calls after ``warmup`` calls (CUDA synchronised), eager or ``torch.compile``;
  the fastest call too (``ms_min``), which other load on a shared machine can only lengthen. Throughput is images
  per second (``img_per_s``), or clips per second (``clips_per_s``) for video models, whose input is a clip of
  ``frames`` frames (the model's configured frame count unless given); GMACs are per image or per clip.
* Memory: CUDA peak allocated bytes; on CPU (no allocator statistics) the peak total size of live tensors that ops
  produced during the call, followed by storage weak references (kernel-internal workspaces are not seen).

:class:`GlobalAttention` is the baseline the scaling plot compares every mechanism with: plain multi-head
self-attention over all H*W tokens, O((H*W)^2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .layers.attend import attend, use_fused
from .layers.checks import check_image
from .layers.model import VisionModel

__all__ = [
    "GlobalAttention",
    "bench_inputs",
    "is_video_model",
    "bench_rows",
    "count_flops",
    "model_summary",
    "peak_memory",
    "time_call",
    "time_calls",
]


class GlobalAttention(nn.Module):
    """Multi-head self-attention over every pixel of a (B, C, H, W) map: the quadratic baseline.

    Args:
        dim: channels.
        head_dim: channels per head.
        patch: with ``patch > 1`` the input is an image of ``in_chans`` channels, cut into non-overlapping
            patch x patch tokens of width ``dim`` first (a ViT stage at stride ``patch``): the baseline beside whole
            models, whose first attention stage runs at stride 4.
        in_chans: image channels when ``patch > 1``.
    """

    def __init__(self, dim: int, head_dim: int = 32, *, patch: int = 1, in_chans: int = 3):
        super().__init__()
        if dim % head_dim:
            head_dim = dim
        self.dim, self.num_heads, self.head_dim = dim, dim // head_dim, head_dim
        self.in_chans = in_chans if patch > 1 else dim
        self.embed = nn.Conv2d(in_chans, dim, patch, stride=patch) if patch > 1 else nn.Identity()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Shape: (B, C, H, W) -> (B, C, H, W); with ``patch`` P: (B, in_chans, H, W) -> (B, dim, H / P, W / P)."""
        check_image(x, self.in_chans, who="GlobalAttention")
        x = self.embed(x)                                              # (B, dim, H / P, W / P)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)                          # (B, H*W, C)
        qkv = self.qkv(tokens).reshape(B, H * W, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                  # 3 x (B, heads, H*W, hd)
        out = attend(q, k, v).transpose(1, 2).reshape(B, H * W, C)     # (B, H*W, C)
        return self.proj(out).transpose(1, 2).reshape(B, C, H, W)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of ``fn()``, counted with the reference attention path."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, use_fused(False):
        fn()
    return counter.get_total_flops()


def is_video_model(module: nn.Module) -> bool:
    """Whether ``module`` is a registered video model (input (B, C, T, H, W)): it is measured per clip."""
    return isinstance(module, VisionModel) and module.input_ndim == 5


def bench_inputs(module: nn.Module, size: tuple[int, int], batch: int = 1, *, device: torch.device | str | None = None,
                 requires_grad: bool = False, frames: int | None = None) -> tuple[Tensor, ...]:
    """The inputs ``module`` is measured on at ``size``: a model's ``example_inputs`` (video: clips of ``frames``
    frames, default the config's frame count; few-shot with a 1-shot support set), or a (B, C, H, W) map for an
    attention module (C its ``dim``) and :class:`GlobalAttention` (C its ``in_chans``). ``requires_grad``: the main
    input takes a gradient too. ``frames`` is ignored by anything but a video model."""
    if is_video_model(module):
        inputs = module.example_inputs(batch, size, frames=frames, device=device)
    elif isinstance(module, VisionModel):
        inputs = module.example_inputs(batch, size, device=device)
    else:
        channels = module.in_chans if isinstance(module, GlobalAttention) else module.dim
        inputs = (torch.randn(batch, channels, *size, device=device),)
    inputs[0].requires_grad_(requires_grad)
    return inputs


def model_summary(name: str, img_size: int | tuple[int, int] | None = 224, **overrides: Any) -> dict[str, Any]:
    """Parameters (meta device) and GMACs at ``img_size`` (None: skip) of registered model ``name``."""
    from .registry import create_model, get_model_class, reference_params

    cls = get_model_class(name)
    with torch.device("meta"):
        model = create_model(name, **overrides).eval()
    out: dict[str, Any] = {
        "name": name, "class": cls.__name__, "module": cls.__module__, "config": model.config,
        "params": sum(p.numel() for p in model.parameters()),
        "reference_params": reference_params(name) if not overrides else None,
        "task": cls.task, "min_input_size": cls.min_input_size, "feature_info": getattr(model, "feature_info", []),
    }
    if img_size is not None:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        try:
            out["gmacs"] = count_flops(functools.partial(model, *model.example_inputs(1, size))) / 2e9  # meta
        except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count on a real forward
            model = create_model(name, **overrides).eval()
            try:
                with torch.no_grad():
                    out["gmacs"] = count_flops(functools.partial(model, *model.example_inputs(1, size))) / 2e9
            except (ValueError, TypeError, RuntimeError) as err:
                out["gmacs"], out["flops_error"] = None, str(err).splitlines()[0]
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, *, warmup: int = 2, iters: int = 5,
              max_seconds: float | None = None) -> float:
    """Median milliseconds of ``fn()`` (after ``warmup`` calls); stops early after ``max_seconds``."""
    return time_calls(fn, device, warmup=warmup, iters=iters, max_seconds=max_seconds)[0]


def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int = 2, iters: int = 5,
               max_seconds: float | None = None) -> tuple[float, float]:
    """(median, fastest) milliseconds of ``fn()`` (after ``warmup`` calls); stops early after ``max_seconds``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    begin = time.perf_counter()
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if max_seconds is not None and time.perf_counter() - begin > max_seconds:
            break
    return 1000 * statistics.median(times), 1000 * min(times)


class _LiveTensorBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of live storages produced by ops inside the mode (CPU memory has no allocator statistics)."""

    def __init__(self) -> None:
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._weak = StorageWeakRef
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.live:
                    self.live[key] = (self._weak(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        return out


def peak_memory(fn: Callable[[], Any], device: torch.device) -> float:
    """Peak memory of ``fn()`` in MiB above what was allocated before it (see the module docstring)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return tracker.peak / 2**20


@dataclasses.dataclass
class Target:
    """Something to benchmark: a name, its kind (model / attention) and a builder of a fresh module."""

    name: str
    kind: str
    build: Callable[[], nn.Module]


def bench_rows(targets: Sequence[Target], sizes: Sequence[tuple[int, int]], *, batch: int = 1,
               mode: str = "fwd", dtype: str = "fp32", device: torch.device | None = None,
               compile: bool = False, warmup: int = 2, iters: int = 5, max_seconds: float | None = 10.0,
               max_tokens: int | None = None, memory: bool = True, frames: int | None = None
               ) -> Iterator[dict[str, Any]]:
    """Measure every target at every size; yields one CSV row per (target, size).

    A video model is measured on clips of ``frames`` x H x W (default: its configured frame count, ``num_frames``):
    its row has ``frames`` set, ``clips_per_s`` instead of ``img_per_s``, and GMACs and memory per clip.

    Args:
        mode: ``fwd`` (inference, no grad) or ``fwdbwd`` (forward + backward of the output's sum).
        dtype: ``fp32`` or ``bf16`` (autocast).
        max_tokens: skip timing (FLOPs still counted) where H*W exceeds this, e.g. for global attention.
        frames: the clip length of video models (ignored by other targets).
    """
    device = device or torch.device("cpu")
    if mode not in ("fwd", "fwdbwd"):
        raise ValueError(f"mode must be fwd or fwdbwd, got {mode!r}")
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    for target in targets:
        module = target.build().to(device)
        module.train(mode == "fwdbwd")
        runner = module
        video = is_video_model(module)
        clip_frames = (module.num_frames if frames is None else frames) if video else None
        rate_key = "clips_per_s" if video else "img_per_s"
        for size in sizes:
            if compile:
                # One static graph per size, from a clean cache: a second size would make dynamo recompile with
                # symbolic shapes, which inductor lowers less well (adaptive pooling not at all in torch 2.13:
                # "cannot determine truth value of Relational"), and past 8 sizes it would fall back to eager.
                torch._dynamo.reset()
                runner = torch.compile(module, dynamic=False)
            row: dict[str, Any] = {"name": target.name, "kind": target.kind, "height": size[0], "width": size[1],
                                   "frames": clip_frames, "pixels": size[0] * size[1], "batch": batch, "mode": mode,
                                   "dtype": dtype, "device": device.type, "compile": compile}
            with torch.device("meta"):
                meta_module = target.build()
            meta_module.train(mode == "fwdbwd")
            meta_inputs = bench_inputs(meta_module, size, batch, device="meta", requires_grad=mode == "fwdbwd",
                                       frames=clip_frames)
            try:
                flops = count_flops(functools.partial(_step, meta_module, meta_inputs, mode))
                row["gmacs"] = flops / 2e9 / batch                     # per image, or per clip of a video model
            except (NotImplementedError, RuntimeError):
                row["gmacs"] = None
            if max_tokens is not None and size[0] * size[1] > max_tokens:
                row.update({"ms": None, rate_key: None, "ms_min": None, "peak_mem_mb": None,
                            "note": f"skipped: more than {max_tokens} tokens"})
                yield row
                continue
            inputs = bench_inputs(module, size, batch, device=device, requires_grad=mode == "fwdbwd",
                                  frames=clip_frames)
            amp = (torch.autocast(device.type, dtype=torch.bfloat16) if dtype == "bf16"
                   else contextlib.nullcontext())

            call = functools.partial(_autocast_step, runner, inputs, mode, amp)

            try:
                ms, ms_min = time_calls(call, device, warmup=warmup, iters=iters, max_seconds=max_seconds)
                row.update({"ms": ms, rate_key: 1000 * batch / ms, "ms_min": ms_min})
                row["peak_mem_mb"] = peak_memory(call, device) if memory and not compile else None
            except ValueError as err:
                if "more than 1 value per channel" in str(err):  # BatchNorm statistics of a single value
                    raise ValueError(f"{target.name} at {size[0]}x{size[1]}: BatchNorm in training mode needs "
                                     "--batch-size >= 2 for --mode fwdbwd") from err
                raise
            except torch.OutOfMemoryError:
                row.update({"ms": None, rate_key: None, "ms_min": None, "peak_mem_mb": None, "note": "out of memory"})
            where = f"{clip_frames}x{size[0]}x{size[1]}" if video else f"{size[0]}x{size[1]}"
            unit = "clips/s" if video else "img/s"
            print(f"  {target.name:<24} {where:>12} "
                  f"{_f(row.get('ms'), '9.2f')} ms {_f(row.get(rate_key), '9.1f')} {unit:<7} "
                  f"{_f(row.get('peak_mem_mb'), '9.1f')} MiB {_f(row.get('gmacs'), '9.3f')} GMACs"
                  f"{'/clip' if video else ''}",
                  file=sys.stderr, flush=True)
            yield row


def _f(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))


def _autocast_step(module: nn.Module, inputs: tuple[Tensor, ...], mode: str,
                   amp: contextlib.AbstractContextManager) -> None:
    with amp:
        _step(module, inputs, mode)


def _step(module: nn.Module, inputs: tuple[Tensor, ...], mode: str) -> None:
    """One forward (``fwd``: without autograd) or forward + backward of the output's sum (``fwdbwd``)."""
    if mode == "fwd":
        with torch.no_grad():
            module(*inputs)
    else:
        module(*inputs).float().sum().backward()
