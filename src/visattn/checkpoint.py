"""Checkpoints: safetensors tensors + JSON metadata, written atomically; finding and loading them again.

A training run folder looks like::

    run/
      model.safetensors, model.json        the final model (what eval / predict / show take)
      checkpoints/
        latest                             name of the newest complete checkpoint (replaced atomically)
        step00000120/
          model.safetensors                weights, loadable by visattn.load_pretrained
          model.json                       model name + config, classes, input size, normalisation
          train_state.safetensors          optimizer moments, EMA weights, RNG states
          train_state.json                 step, epoch, schedule, run settings, running sums
        step00000240/                      a sharded checkpoint (``--fsdp``): no model.safetensors, instead
          sharded/                         model, optimizer (and EMA) shards written by torch.distributed.checkpoint:
            .metadata, __<rank>_0.distcp   the global layout, and one file of shards per process
          model.json, train_state.json     as above
          train_state.safetensors          RNG states of every process

Every file is written to a temporary name, fsynced and renamed; a checkpoint directory is assembled under a
temporary name and renamed into place before ``latest`` is switched to it. A process killed at any instant leaves
``latest`` naming a complete checkpoint. Nothing is unpickled: tensors come from safetensors, the rest from JSON
(a sharded checkpoint's ``.metadata`` is torch.distributed.checkpoint's own pickle, read only when resuming a run).
A sharded checkpoint is written by every process into the same temporary folder (multi-node runs need the run folder
on a shared file system), then renamed by the main process.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MODEL_FILE",
    "MODEL_META",
    "Checkpoint",
    "atomic_write_bytes",
    "check_finite",
    "export_model",
    "latest_checkpoint",
    "load_checkpoint",
    "load_model",
    "load_published_model",
    "load_sharded_state",
    "optimizer_state_from_flat",
    "optimizer_state_to_flat",
    "resolve_model_file",
    "save_checkpoint",
    "save_safetensors_atomic",
    "save_sharded_checkpoint",
    "write_json_atomic",
]

MODEL_FILE, MODEL_META = "model.safetensors", "model.json"
STATE_FILE, STATE_META = "train_state.safetensors", "train_state.json"
SHARDED_DIR = "sharded"
LATEST = "latest"
FORMAT = "visattn-model/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked (missing, incomplete, another architecture)."""


# --- atomic writes -------------------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: no partial file stays behind
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _plain_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    # safetensors wants contiguous CPU tensors that share no storage.
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict[str, Tensor],
                            metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save(_plain_tensors(tensors), metadata=metadata))


# --- training checkpoints ------------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    path: Path
    model_state: dict[str, Tensor]       # {} for a sharded checkpoint (see ``sharded``)
    model_meta: dict[str, Any]
    train_tensors: dict[str, Tensor]
    train_meta: dict[str, Any]

    @property
    def sharded(self) -> bool:
        """Written by an FSDP run: model and optimizer live in ``path / "sharded"`` (:func:`load_sharded_state`)."""
        return (self.path / SHARDED_DIR).is_dir()


def checkpoint_root(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints"


def _start_checkpoint(run_dir: str | os.PathLike, tmp_name: str) -> Path:
    """Create the temporary folder a checkpoint is assembled in (after removing ones left by killed runs)."""
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a process killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / tmp_name
    tmp.mkdir()
    return tmp


def _finish_checkpoint(tmp: Path, name: str, keep: int, protect: str | None = None) -> Path:
    """Rename a complete temporary folder to ``name``, point ``latest`` at it and prune old checkpoints (never
    ``protect``)."""
    root = tmp.parent
    _kill_point(name)
    final = root / name
    if final.exists():
        if _read_latest(root) == name:
            raise CheckpointError(f"refusing to overwrite {final}, the latest complete checkpoint")
        shutil.rmtree(final)  # an orphan written after `latest` was last switched, by a killed run
    os.rename(tmp, final)
    _fsync_dir(root)
    atomic_write_bytes(root / LATEST, name.encode())
    for old in _complete(root)[:-keep] if keep > 0 else []:
        if old.name not in (name, protect):
            shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def last_validated_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint saved after a validation (its ``eval`` is recorded), or None."""
    for path in reversed(_complete(checkpoint_root(run_dir))):
        try:
            if _read_json(path / STATE_META).get("eval"):
                return path
        except CheckpointError:
            continue
    return None


def discard_checkpoints_after(run_dir: str | os.PathLike, good: Path | None) -> Path | None:
    """Remove every checkpoint newer than ``good`` (all of them when None) and point ``latest`` at ``good``.

    A diverged run calls this: checkpoints saved after the last validated one hold weights that no validation
    vouched for. Returns ``good``.
    """
    root = checkpoint_root(run_dir)
    if good is None:
        (root / LATEST).unlink(missing_ok=True)
    elif _read_latest(root) != good.name:
        atomic_write_bytes(root / LATEST, good.name.encode())
    for path in _complete(root):
        if good is None or path.name > good.name:
            shutil.rmtree(path, ignore_errors=True)
    return good


def _no_space(err: BaseException, run_dir: str | os.PathLike, name: str) -> BaseException:
    # disk full: name the device's folder and the checkpoint that is still complete
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return CheckpointError(f"no space left on the device of {checkpoint_root(run_dir)} while writing checkpoint "
                               f"{name}; the latest complete checkpoint is {latest_checkpoint(run_dir) or '(none)'}")
    return err


def save_checkpoint(run_dir: str | os.PathLike, name: str, *, model_state: dict[str, Tensor],
                    model_meta: dict[str, Any], train_tensors: dict[str, Tensor], train_meta: dict[str, Any],
                    keep: int = 2, protect: str | None = None) -> Path:
    """Write checkpoint ``name`` under ``run_dir/checkpoints`` atomically, point ``latest`` at it, prune old ones.

    Args:
        keep: how many complete checkpoints to keep (the newest ones).
        protect: a checkpoint never pruned (the training loop's last validated one, its fallback on divergence).
    """
    tmp = _start_checkpoint(run_dir, f".tmp-{name}-{os.getpid()}")
    try:
        save_safetensors_atomic(tmp / MODEL_FILE, model_state)
        write_json_atomic(tmp / MODEL_META, model_meta)
        save_safetensors_atomic(tmp / STATE_FILE, train_tensors)
        write_json_atomic(tmp / STATE_META, train_meta)
    except BaseException as err:  # disk full or interrupted: the partial folder goes, the latest checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise _no_space(err, run_dir, name) from err
    return _finish_checkpoint(tmp, name, keep, protect)


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                   ema: nn.Module | None) -> dict[str, dict[str, Any]]:
    """The sharded state dicts (DTensor values) of an FSDP model, its optimizer and its EMA copy."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    if ema is not None:
        state["ema"] = get_model_state_dict(ema)
    return state


def save_sharded_checkpoint(run_dir: str | os.PathLike, name: str, *, model: nn.Module,
                            optimizer: torch.optim.Optimizer, ema: nn.Module | None, model_meta: dict[str, Any],
                            train_tensors: dict[str, Tensor], train_meta: dict[str, Any], keep: int = 2,
                            protect: str | None = None) -> Path:
    """Every process writes its shards of ``model``, ``optimizer`` and ``ema`` (FSDP modules) into checkpoint
    ``name`` with torch.distributed.checkpoint; the main process adds the JSON and ``train_tensors`` and renames
    the folder into place as :func:`save_checkpoint` does. A collective call: all processes, same arguments.

    Returns:
        the checkpoint folder.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    main = dist.get_rank() == 0
    tmp_name = f".tmp-{name}-sharded"
    if main:
        _start_checkpoint(run_dir, tmp_name)
    dist.barrier()                                                    # the folder exists, stale ones are gone
    tmp = checkpoint_root(run_dir) / tmp_name
    try:
        dcp.save(_sharded_state(model, optimizer, ema), checkpoint_id=tmp / SHARDED_DIR)
        if main:
            write_json_atomic(tmp / MODEL_META, model_meta)
            save_safetensors_atomic(tmp / STATE_FILE, train_tensors)
            write_json_atomic(tmp / STATE_META, train_meta)
    except BaseException as err:  # as save_checkpoint: no partial folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise _no_space(err, run_dir, name) from err
    if main:
        _finish_checkpoint(tmp, name, keep, protect)
    dist.barrier()
    return checkpoint_root(run_dir) / name


def load_sharded_state(checkpoint: Checkpoint, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                       ema: nn.Module | None) -> None:
    """Load a sharded checkpoint into an FSDP ``model``, its ``optimizer`` and its ``ema`` copy, in place.

    Resume with as many processes as wrote it: torch.distributed.checkpoint can reshard, but the RNG states and the
    data slicing are per process (and another count is not tested).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    if not checkpoint.sharded:
        raise CheckpointError(f"{checkpoint.path} is not a sharded checkpoint (no {SHARDED_DIR}/ folder)")
    state = _sharded_state(model, optimizer, ema)
    if (ema is None) != ("ema" not in _sharded_keys(checkpoint.path / SHARDED_DIR)):
        raise CheckpointError(f"{checkpoint.path}: the run {'had no' if ema is not None else 'had an'} EMA")
    dcp.load(state, storage_reader=_metadata_checking_reader(checkpoint.path / SHARDED_DIR))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if ema is not None:
        set_model_state_dict(ema, state["ema"])


def _sharded_keys(path: Path) -> set[str]:
    """The top-level names (model, optim, ema) stored in a torch.distributed.checkpoint folder."""
    return {key.split(".", 1)[0] for key in _metadata_checking_reader(path).read_metadata().state_dict_metadata}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles torch.distributed.checkpoint's ``.metadata`` and nothing else: the only globals it resolves are the
    dataclasses and enums of ``torch.distributed.checkpoint``, torch dtypes, layouts and ``Size``, paths and
    ``OrderedDict``. Anything else (a function a malicious file would call) is refused before it runs."""

    def find_class(self, module: str, name: str) -> Any:
        import dataclasses
        import enum

        obj = super().find_class(module, name) if module.split(".")[0] in _METADATA_ROOTS else None
        if module.startswith("torch.distributed.checkpoint.") and isinstance(obj, type) and (
                dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum)):
            return obj
        if module == "torch" and (name == "Size" or isinstance(obj, (torch.dtype, torch.layout,
                                                                      torch.memory_format))):
            return obj
        if (module, name) in _METADATA_GLOBALS:
            return obj
        raise pickle.UnpicklingError(f"a sharded checkpoint's .metadata may not reference {module}.{name}")


_METADATA_ROOTS = ("torch", "pathlib", "collections")
_METADATA_GLOBALS = {("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
                     ("pathlib", "PurePosixPath"), ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict")}


def _metadata_checking_reader(path: Path) -> Any:
    """A torch.distributed.checkpoint ``FileSystemReader`` of ``path`` whose metadata (a pickle) is first read by
    :class:`_MetadataUnpickler`: a file referencing anything else raises a :class:`CheckpointError` unrun."""
    from torch.distributed.checkpoint import FileSystemReader

    class Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            name = ".metadata" if rank is None else f"__{rank}.metadata"
            try:
                with open(Path(path) / name, "rb") as f:
                    _MetadataUnpickler(f).load()
            except FileNotFoundError:
                raise CheckpointError(f"missing {Path(path) / name}") from None
            except Exception as err:  # a refused global, or not a pickle at all
                raise CheckpointError(f"{Path(path) / name} is not a torch.distributed.checkpoint metadata file "
                                      f"({err})") from None
            return super().read_metadata(*args, **kwargs)

    return Reader(path)


def _kill_point(name: str) -> None:
    # Fault injection for the resume test: VISATTN_FAULT_KILL_IN_SAVE=<checkpoint name> kills the process with
    # SIGKILL here, after that checkpoint's files are written and before they are renamed into place.
    if os.environ.get("VISATTN_FAULT_KILL_IN_SAVE") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _read_latest(root: Path) -> str | None:
    try:
        return (root / LATEST).read_text().strip() or None
    except FileNotFoundError:
        return None


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    root = checkpoint_root(run_dir)
    name = _read_latest(root)
    return root / name if name and (root / name).is_dir() else None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    # Read into memory rather than memory-map: a mapped file stays allocated on disk after pruning deletes it,
    # so a resumed run would need room for one checkpoint more than an uninterrupted one.
    from safetensors.torch import load

    try:
        return load(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}") from None
    except Exception as err:  # truncated or not a safetensors file
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint directory (a run folder resolves to its latest checkpoint)."""
    path = Path(path)
    if not (path / STATE_META).is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no training checkpoint in {path} (expected {path}/checkpoints/{LATEST})")
        path = latest
    model_state = {} if (path / SHARDED_DIR).is_dir() else _read_safetensors(path / MODEL_FILE)
    return Checkpoint(path=path, model_state=model_state, model_meta=_read_json(path / MODEL_META),
                      train_tensors=_read_safetensors(path / STATE_FILE), train_meta=_read_json(path / STATE_META))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None


def optimizer_state_to_flat(state: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (moments, step counts) and JSON (groups, scalars)."""
    tensors, scalars = {}, {}
    for pid, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_flat(tensors: dict[str, Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


# --- models for inference ------------------------------------------------------------------------------------------

def model_meta(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """The JSON that, with the weights, rebuilds ``model``: variant name, config class and fields, plus ``extra``."""
    from .registry import config_to_dict

    return {"format": FORMAT, "model": getattr(model, "variant_name", None), "model_class": type(model).__name__,
            "config": config_to_dict(model.config), **extra}


def export_model(out_dir: str | os.PathLike, state: dict[str, Tensor], meta: dict[str, Any],
                 stem: str = "model") -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` (weights first, each atomically)."""
    out = Path(out_dir)
    weights = out / f"{stem}.safetensors"
    save_safetensors_atomic(weights, state, metadata={"format": FORMAT, "model": str(meta.get("model"))})
    write_json_atomic(out / f"{stem}.json", meta)
    return weights


def resolve_model_file(path: str | os.PathLike) -> tuple[Path, dict[str, Any] | None]:
    """A weights file and its metadata (None if it has none) from a file, a run folder or a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / MODEL_FILE, ):
            if candidate.is_file():
                return candidate, _meta_beside(candidate)
        if (path / SHARDED_DIR).is_dir():
            raise CheckpointError(_SHARDED_ONLY.format(path=path))
        latest = latest_checkpoint(path)
        if latest is not None and (latest / SHARDED_DIR).is_dir():
            raise CheckpointError(_SHARDED_ONLY.format(path=latest))
        if latest is not None:
            return latest / MODEL_FILE, _meta_beside(latest / MODEL_FILE)
        raise CheckpointError(f"no {MODEL_FILE} and no checkpoints/{LATEST} in {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path, _meta_beside(path)


_SHARDED_ONLY = (f"{{path}} is a sharded (--fsdp) training checkpoint without {MODEL_FILE}: finish the run (it writes "
                 f"the whole model to the run folder), or resume it with `visattn train --resume`")


def _meta_beside(weights: Path) -> dict[str, Any] | None:
    for candidate in (weights.with_suffix(".json"), weights.parent / MODEL_META):
        if candidate.is_file():
            meta = _read_json(candidate)
            if meta.get("format") == FORMAT:
                return meta
    return None


def load_model(path: str | os.PathLike, *, model_name: str | None = None,
               overrides: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a visattn checkpoint (or plain weights plus ``model_name``) and load its weights.

    Args:
        path: a weights file, a run folder or a checkpoint folder.
        model_name: required for weights without visattn metadata; if the metadata names another
            architecture, a :class:`CheckpointError` says so.
        overrides: config fields for a model built from ``model_name`` (weights without metadata).

    Returns:
        the model (eval mode, on CPU) and its metadata (``{}`` when the checkpoint has none).
    """
    from .registry import config_from_dict, create_model, get_model_class
    from .weights import load_pretrained
    from .weights.load import ArchitectureMismatchError

    weights, meta = resolve_model_file(path)
    if meta is not None:
        saved = meta.get("model")
        expected = _variant_name(model_name) if model_name else None
        if expected and saved and expected != saved:
            named = model_name if expected == model_name else f"{model_name} (visattn's {expected})"
            raise CheckpointError(f"{weights} holds a {saved} ({meta.get('model_class')}) model, not {named}; "
                                  f"drop --model or pass a {model_name} checkpoint")
        cls = get_model_class(saved)
        if meta.get("model_class") not in (None, cls.__name__):
            raise CheckpointError(f"{weights}: saved class {meta['model_class']} is not {cls.__name__}")
        try:
            config = config_from_dict(cls, meta["config"])
        except (TypeError, ValueError) as err:  # a hand-edited or damaged model.json
            raise CheckpointError(f"the model config beside {weights}: {err}") from err
        model = cls(config)
        model.variant_name = saved
    else:
        if not model_name:
            raise CheckpointError(f"{weights} has no visattn metadata ({MODEL_META}); pass --model NAME")
        model = create_model(model_name, **(overrides or {}))
        meta = {}
    from .weights.load import read_state_dict

    try:
        state = read_state_dict(weights)                             # a damaged file: its own message, with the path
    except ValueError as err:
        raise CheckpointError(str(err)) from err
    try:
        load_pretrained(model, state)
    except ArchitectureMismatchError as err:
        raise CheckpointError(f"{weights} holds a {err.found} model, not {model.variant_name}; pass --model "
                              f"{err.found}") from err
    except ValueError as err:
        first = str(err).splitlines()[0].rstrip(":")
        raise CheckpointError(f"{weights}: {first}. Is it a checkpoint of another architecture?") from err
    check_finite(model.state_dict(), weights)
    return model.eval(), meta


def _variant_name(name: str) -> str:
    """The registered variant ``name`` stands for: itself, or the variant of a weights tag or timm / torchvision
    alias (``maxvit_tiny_tf_224.in1k`` -> ``maxvit_tiny``); an unknown name is returned as is."""
    from .registry import list_models
    from .weights.registry import get_weights

    if name in list_models():
        return name
    try:
        return get_weights(name).model
    except ValueError:
        return name


def load_published_model(name: str, *, overrides: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build a model with published weights, and the metadata a checkpoint of it would hold.

    Args:
        name: a weights tag or alias (``maxvit_tiny.in1k_384``, ``maxvit_tiny_tf_224.in1k``) or a registered name
            with published weights (its default tag); see ``visattn list --pretrained``.
        overrides: config fields on top of those the weights need.

    Returns:
        the model (eval mode, on CPU) and its metadata: ``model``, ``weights`` (the tag), the publisher's
        evaluation preprocessing (``img_size``, ``crop_pct``, ``crop_mode``, ``interpolation``, ``mean``, ``std``,
        ``transform``), for video weights also the clip (``frames``, ``stride``, ``views`` as the video task names
        them, ``resize_size``: the short side before the crop) and, for a classifier whose width matches the label
        set, ``classes`` (label names) and ``class_ids`` (ImageNet synsets).
    """
    from .registry import create_model, list_models
    from .weights.registry import resolve_pretrained

    try:
        variant, entry = resolve_pretrained(name)
    except ValueError as err:
        if name in list_models():
            raise CheckpointError(f"{name} has no published weights; pass --checkpoint with your own weights "
                                  "(`visattn list --pretrained` lists the published ones)") from None
        raise CheckpointError(str(err)) from None
    model = create_model(variant, pretrained=entry.name, **(overrides or {}))
    pre = entry.preprocessing()
    meta = model_meta(model, weights=entry.name, img_size=pre["input_size"][-1], crop_pct=pre["crop_pct"],
                      crop_mode=pre["crop_mode"], interpolation=pre["interpolation"], mean=list(pre["mean"]),
                      std=list(pre["std"]), transform=pre["transform"])
    if len(pre["input_size"]) == 4:                                    # (C, T, H, W): a clip
        meta.update(frames=pre["input_size"][1], stride=pre["frame_stride"], views=pre["views"],
                    resize_size=round(pre["input_size"][-1] / pre["crop_pct"]))
    if pre["label_names"] and getattr(model.config, "num_classes", None) == len(pre["label_names"]):
        meta["classes"] = pre["label_names"]
        if pre["label_ids"]:
            meta["class_ids"] = pre["label_ids"]
    return model.eval(), meta


def check_finite(state: dict[str, Tensor], source: str | os.PathLike) -> None:
    """Raise a :class:`CheckpointError` naming the first floating-point tensor of ``state`` holding NaN or inf
    (a model saved after its training diverged computes only NaN)."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{source}: tensor {name!r} holds {bad} non-finite value(s) (NaN or inf) of "
                                  f"{tensor.numel()}; the weights are unusable (did the training diverge?)")
