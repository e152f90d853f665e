"""torch.distributed for the training loop: set-up from torchrun's environment, sums across processes, a
synchronised BatchNorm that also runs on CPU (gloo), and FSDP2 sharding of any registered model.

``torchrun --nproc-per-node N -m visattn.cli train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK; without them
everything here is a no-op and the run is a single process (``--fsdp`` then runs in a process group of one).

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards the model by *units*: each unit's parameters are all-gathered
just before its forward / backward and freed after, and its gradients are reduce-scattered. :func:`shard_units`
picks them by one rule for every registered model: the elements of the two outermost levels of *repeated
layers* (an ``nn.ModuleList`` / ``nn.Sequential`` whose elements are all of one class and hold parameters), inner
units first; everything else (stem, head, final norm) belongs to the root, sharded last. Per family:

======================  ==================================================================================
MaxViT, MViT, GRL        each block of ``stages[i].blocks``, then each stage (its downsample / norm)
DaViT                    each (spatial, channel) block pair of ``stages[i].blocks``, then each stage
CloFormer                each block of ``stages[i].blocks``, then each stage
CATNet                   each bottleneck of the ResNet's ``layer1..4``, each CMAT iteration of ``cmat``
======================  ==================================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistInfo", "all_gather_objects", "all_reduce_sum", "barrier", "convert_sync_batchnorm", "init_distributed",
           "full_state_dict", "shard_model", "shard_units"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def release_distributed(created: bool) -> None:
    """Destroy the process group :func:`init_distributed` created (``created``), so that its communication threads
    end before the interpreter does (left running, gloo's can abort a process at exit)."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def init_distributed(device_type: str, *, group_of_one: bool = False) -> DistInfo:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA); a single process otherwise.

    Args:
        group_of_one: in a single process, still create a process group (of one, in memory): FSDP needs one.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        if group_of_one and not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                    world_size=1)
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank)


def all_reduce_sum(x: Tensor, info: DistInfo) -> Tensor:
    """Sum of ``x`` over all processes (``x`` itself in a single process)."""
    if info.enabled:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_gather_objects(obj: object, info: DistInfo) -> list[object]:
    if not info.enabled:
        return [obj]
    out: list[object] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are computed over the global batch of all processes.

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this one all-reduces the per-channel sums, sums of
    squares and counts with the differentiable ``torch.distributed.nn.functional.all_reduce``, so gloo on CPU
    trains exactly like one process with the whole batch. Eval mode is plain BatchNorm (running statistics).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        C = x.shape[1]
        count = torch.full((1,), x.numel() // C, dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])  # (2C + 1,)
        stats = all_reduce(stats)                                       # summed over processes, with gradient
        n = stats[-1]
        mean = stats[:C] / n
        var = (stats[C:2 * C] / n - mean * mean).clamp(min=0)          # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.num_batches_tracked += 1
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm2d by a synchronised one (torch's on accelerators, :class:`CpuSyncBatchNorm` on CPU)."""
    if device_type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        if type(module) is nn.BatchNorm2d:
            new = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
            new.load_state_dict(module.state_dict())
            return new
        for name, child in module.named_children():
            module.add_module(name, convert(child))
        return module

    return convert(model)



# --- FSDP2 -------------------------------------------------------------------------------------------------------

def _repeated(module: nn.Module) -> bool:
    """A ModuleList / Sequential of layers of one class that hold parameters (blocks, stages, ResNet layers)."""
    if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
        return False
    return len({type(child) for child in module}) == 1 and all(
        any(True for _ in child.parameters()) for child in module)


def shard_units(model: nn.Module, levels: int = 2) -> list[tuple[str, nn.Module]]:
    """The modules :func:`shard_model` shards before the root, innermost first (see the module docstring).

    Args:
        levels: how many nested levels of repeated layers become units (2: stages and their blocks); repeated
            layers inside a block (e.g. an attention's branches) stay in their block's unit.

    Returns:
        (qualified name, module) pairs; a unit never precedes a unit nested inside it.
    """
    units: list[tuple[str, nn.Module, int]] = []

    def visit(module: nn.Module, prefix: str, depth: int) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if _repeated(child):
                if depth >= levels:
                    continue
                for i, element in child.named_children():
                    visit(element, f"{path}.{i}.", depth + 1)
                    units.append((f"{path}.{i}", element, depth))
            else:
                visit(child, f"{path}.", depth)

    visit(model, "", 0)
    units.sort(key=lambda u: -u[2])                                   # stable: deeper (inner) units first
    return [(name, module) for name, module, _ in units]


def shard_model(model: nn.Module, device_type: str) -> list[str]:
    """Shard ``model`` in place with FSDP2 over all processes: every unit of :func:`shard_units`, then the root.

    The main process's weights and buffers are first broadcast to all (as DDP does), then the parameters become
    ``DTensor`` shards (dim 0 split over the processes); buffers (BatchNorm statistics, relative-position indices)
    stay whole on every process. Build the optimizer after this call. The whole model is built on every process
    before it is sharded, so its weights must fit one process's host memory (not its accelerator's).

    Args:
        device_type: ``cpu`` (gloo) or ``cuda`` (nccl); the process group must exist (:func:`init_distributed`).

    Mixed precision is left to autocast, as under DDP: parameters are all-gathered and gradients reduced in
    float32. (FSDP's ``MixedPrecisionPolicy(param_dtype=bfloat16)`` would cast BatchNorm weights to bfloat16
    against float32 running statistics, which ``batch_norm`` rejects.)

    Returns:
        the names of the units sharded before the root.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise ValueError("shard_model needs a process group: call init_distributed(..., group_of_one=True) first")
    with torch.no_grad():                                             # every process starts from the main's
        for tensor in (*model.parameters(), *model.buffers()):       # weights, as DDP does on construction
            dist.broadcast(tensor, src=0)
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    units = shard_units(model)
    for _, unit in units:
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return [name for name, _ in units]


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The whole (unsharded) state dict of an FSDP model, on CPU, on the main process ({} on the others).

    Every process must call it (the parameters are all-gathered).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
