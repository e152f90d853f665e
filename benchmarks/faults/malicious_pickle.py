"""Malicious pickles through every entry point that loads a file: does any of them run the pickled code?

Each trial writes a file whose unpickling would create a marker file (an object whose ``__reduce__`` calls
``open(marker, "w")``), hands it to one entry point, and checks afterwards whether the marker exists. The count of
markers created must be 0. Entry points: ``load_pretrained`` / ``read_state_dict`` / ``create_model(checkpoint=)``
with .pth, .pt, .bin and .ckpt files, a ``file://`` URL through the torch hub cache, ``visattn convert``, ``eval``,
``predict``, ``restore``, ``export``, ``show``, ``train --pretrained``, ``train --resume`` of a run whose checkpoint
files were replaced by pickles, a pickle named ``.safetensors``, and ``train --resume`` of a sharded (``--fsdp``)
run whose ``.metadata`` (torch.distributed.checkpoint's own pickle) was replaced.

    python benchmarks/faults/malicious_pickle.py             # about 1 minute on 2 shared cores
"""

from __future__ import annotations

import argparse
import builtins
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from _common import TINY_MODEL, print_table, run_cli, run_cli_here

TINY_SET = TINY_MODEL[2:]                                   # the --set flags of the tiny MaxViT
TRAIN = [*TINY_MODEL, "--data", "digits", "--train-limit", "32", "--val-limit", "16", "--batch-size", "16",
         "--epochs", "1", "--threads", "1", "--deterministic"]


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file proves that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (builtins.open, (self.marker, "w"))


def write_torch_pickle(path: Path, marker: Path) -> Path:
    import torch

    torch.save({"state_dict": {"head.fc.weight": Payload(marker), "head.fc.bias": torch.zeros(3)}}, path)
    return path


def write_plain_pickle(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump(Payload(marker), f)
    return path


def _image(folder: Path) -> Path:
    from PIL import Image

    path = folder / "in.png"
    Image.new("RGB", (40, 40), (20, 120, 200)).save(path)
    return path


def _tiny_model():
    import visattn

    return visattn.create_model("maxvit_tiny", stem_width=8, dims=(8, 16, 16, 16), depths=(1, 1, 1, 1),
                                head_dim=8, partition_size=4)


def _api(call: Callable[[Path], object]) -> Callable[[Path, Path], str]:
    def trial(folder: Path, marker: Path) -> str:
        try:
            call(write_torch_pickle(folder / "evil.pth", marker))
        except Exception as err:  # noqa: BLE001 - refused: the outcome we want, recorded
            return f"refused: {type(err).__name__}: {str(err).splitlines()[0]}"
        return "accepted"
    return trial


def _suffix(suffix: str) -> Callable[[Path, Path], str]:
    def trial(folder: Path, marker: Path) -> str:
        from visattn.weights import load_pretrained

        path = write_torch_pickle(folder / f"evil{suffix}", marker)
        try:
            load_pretrained(_tiny_model(), path)
        except Exception as err:  # noqa: BLE001
            return f"refused: {type(err).__name__}: {str(err).splitlines()[0]}"
        return "accepted"
    return trial


def _cli(*args: str, fresh_process: bool = False, file: str = "evil.pth",
         writer: Callable[[Path, Path], Path] = write_torch_pickle) -> Callable[[Path, Path], str]:
    def trial(folder: Path, marker: Path) -> str:
        evil = writer(folder / file, marker)
        argv = [a.replace("EVIL", str(evil)).replace("IMAGE", str(_image(folder))).replace("DIR", str(folder))
                for a in args]
        if fresh_process:
            proc = run_cli(*argv)
            status, err = proc.returncode, proc.stderr
        else:
            status, _, err, escaped = run_cli_here(*argv)
            if escaped is not None:
                return f"traceback: {type(escaped).__name__}"
        last = [line for line in err.splitlines() if line.strip()][-1:] or [""]
        return f"exit {status}: {last[0]}"
    return trial


def _resume_replaced_checkpoint(folder: Path, marker: Path) -> str:
    from visattn.checkpoint import latest_checkpoint

    run = folder / "run"
    proc = run_cli("train", *TRAIN, "--save-every", "1", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    latest = latest_checkpoint(run)
    for name in ("model.safetensors", "train_state.safetensors"):
        write_torch_pickle(latest / name, marker)
    proc = run_cli("train", "--resume", str(run))
    return f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1]}"


def _resume_sharded_metadata(folder: Path, marker: Path) -> str:
    from visattn.checkpoint import latest_checkpoint

    run = folder / "run"
    proc = run_cli("train", *TRAIN, "--fsdp", "--out", str(run), "--device", "cpu")
    if proc.returncode != 0:
        return f"(could not make an --fsdp run here: {proc.stderr.strip().splitlines()[-1]})"
    latest = latest_checkpoint(run)
    write_plain_pickle(latest / "sharded" / ".metadata", marker)
    (run / "model.safetensors").unlink()                       # so that the run is not finished
    proc = run_cli("train", "--resume", str(run), "--epochs", "2")
    return f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1]}"


def _file_url(folder: Path, marker: Path) -> str:
    from visattn.weights import load_pretrained

    os.environ["TORCH_HOME"] = str(folder / "torch_home")     # a fresh hub cache
    path = write_torch_pickle(folder / "evil_url.pth", marker)
    try:
        load_pretrained(_tiny_model(), path.as_uri())
    except Exception as err:  # noqa: BLE001
        return f"refused: {type(err).__name__}: {str(err).splitlines()[0]}"
    return "accepted"


def trials() -> dict[str, Callable[[Path, Path], str]]:
    from visattn.weights.load import read_state_dict

    def create_from_checkpoint(path: Path) -> object:
        import visattn

        return visattn.create_model("maxvit_tiny", checkpoint=str(path), stem_width=8, dims=(8, 16, 16, 16),
                                    depths=(1, 1, 1, 1), head_dim=8, partition_size=4)

    return {
        "load_pretrained .pth": _suffix(".pth"),
        "load_pretrained .pt": _suffix(".pt"),
        "load_pretrained .bin": _suffix(".bin"),
        "load_pretrained .ckpt": _suffix(".ckpt"),
        "read_state_dict .pth": _api(read_state_dict),
        "create_model(checkpoint=.pth)": _api(create_from_checkpoint),
        "load_pretrained file:// URL": _file_url,
        "visattn convert": _cli("convert", "EVIL", "--model", "maxvit_tiny", *TINY_SET, "--out", "DIR/out.safetensors"),
        "visattn eval --checkpoint": _cli("eval", "--checkpoint", "EVIL", "--model", "maxvit_tiny"),
        "visattn predict --checkpoint": _cli("predict", "--checkpoint", "EVIL", "--model", "maxvit_tiny", "IMAGE"),
        "visattn restore --checkpoint": _cli("restore", "IMAGE", "--checkpoint", "EVIL", "--model", "grl_tiny",
                                             "--out", "DIR"),
        "visattn export --checkpoint": _cli("export", "maxvit_tiny", "--checkpoint", "EVIL", "--out", "DIR/x.onnx"),
        "visattn show attention --checkpoint": _cli("show", "attention", "--checkpoint", "EVIL", "--model",
                                                    "maxvit_tiny", "--out", "DIR/a.png"),
        "visattn eval (pickle named .safetensors)": _cli("eval", "--checkpoint", "EVIL", "--model", "maxvit_tiny",
                                                         file="evil.safetensors"),
        "visattn train --pretrained": _cli("train", *TRAIN, "--pretrained", "EVIL", "--out", "DIR/run",
                                           fresh_process=True),
        "visattn train --resume (checkpoint files replaced)": _resume_replaced_checkpoint,
        "visattn train --resume (--fsdp .metadata replaced)": _resume_sharded_metadata,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="only", help="run only the trials whose name contains this")
    args = parser.parse_args()
    import logging

    logging.getLogger("visattn").disabled = True
    work = Path(tempfile.mkdtemp(prefix="visattn_pickle_"))
    rows = []
    for i, (name, trial) in enumerate(trials().items()):
        if args.only and args.only not in name:
            continue
        folder = work / f"t{i}"
        folder.mkdir()
        marker = work / f"marker{i}"
        try:
            outcome = trial(folder, marker)
        except Exception as err:  # noqa: BLE001 - the harness itself failed: say so
            outcome = f"harness error: {type(err).__name__}: {err}"
        outcome = outcome.replace(str(work), "$TMP")[:110]
        rows.append({"entry point": name, "pickled code ran": marker.exists(), "outcome": outcome})
        print(f"{name}: ran={marker.exists()} {outcome}", flush=True)
    print()
    print_table(rows, ["entry point", "pickled code ran", "outcome"])
    print(f"\npickled code ran in {sum(r['pickled code ran'] for r in rows)} of {len(rows)} entry points")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
