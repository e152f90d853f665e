"""Bad command-line arguments: does every one end in a one-line error (exit status != 0), never a bare traceback?

Each case runs ``visattn ...`` in this process (``visattn.cli.main``, the console script's code path) and is counted
as: ``clear`` (non-zero exit, no traceback, one ``visattn CMD: error: ...`` line or argparse's usage error),
``TRACEBACK`` (an exception escaped ``main`` or a traceback was printed), or ``ACCEPTED`` (exit 0: the bad argument
went through).

    python benchmarks/faults/cli_bad_args.py                  # about 30 seconds
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import TINY_MODEL, print_table, run_cli_here

TRAIN = [*TINY_MODEL, "--data", "digits", "--train-limit", "32", "--val-limit", "16", "--batch-size", "16",
         "--epochs", "1", "--threads", "1", "--out", "DIR/run"]   # a command line that trains writes there


def _fixtures(folder: Path) -> dict[str, str]:
    """A tiny saved model and damaged copies of it, an image, a text file."""
    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file

    import visattn
    from visattn.checkpoint import export_model, model_meta

    model = visattn.create_model("maxvit_tiny", stem_width=8, dims=(8, 16, 16, 16), depths=(1, 1, 1, 1),
                                 head_dim=8, partition_size=4, num_classes=10)
    meta = model_meta(model, task="classification", img_size=32, data={"source": "digits", "builtin": True})
    good = export_model(folder / "good", model.state_dict(), meta)
    truncated = export_model(folder / "truncated", model.state_dict(), meta)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    nan = export_model(folder / "nan", model.state_dict(), meta)
    state = load_file(nan)
    state["head.fc.weight"][0, 0] = float("nan")
    save_file(state, nan, metadata={"format": "visattn", "model": "maxvit_tiny"})
    typed = export_model(folder / "typed", model.state_dict(), meta)
    bad_meta = json.loads(typed.with_suffix(".json").read_text())
    bad_meta["config"]["dims"] = "8,16,16,16"
    typed.with_suffix(".json").write_text(json.dumps(bad_meta))
    grl_cls = visattn.registry.get_model_class("grl_tiny")
    grl = visattn.create_model("grl_tiny", **grl_cls.test_overrides)
    restoration = export_model(folder / "grl", grl.state_dict(), model_meta(grl, task="sr"))
    Image.new("RGB", (40, 40), (1, 2, 3)).save(folder / "img.png")
    (folder / "notes.txt").write_text("not an image")
    torch.save({"w": torch.zeros(2)}, folder / "other.pth")
    return {"GOOD": str(good), "TRUNC": str(truncated), "NAN": str(nan), "TYPED": str(typed),
            "GRL": str(restoration), "IMG": str(folder / "img.png"), "TXT": str(folder / "notes.txt"), "PTH": str(folder / "other.pth"),
            "DIR": str(folder)}


CASES: list[list[str]] = [
    # train: refused before any data is read
    ["train", *TRAIN, "--batch-size", "0"], ["train", *TRAIN, "--epochs", "-1"], ["train", *TRAIN, "--img-size", "0"],
    ["train", *TRAIN, "--lr", "-1"], ["train", *TRAIN, "--lr", "nan"], ["train", *TRAIN, "--ema", "1.5"],
    ["train", *TRAIN, "--val-fraction", "0"], ["train", *TRAIN, "--amp", "fp8"], ["train", *TRAIN, "--device", "cuda"],
    ["train", *TRAIN, "--set", "head_dim=0"], ["train", *TRAIN, "--set", "partition_size=0"],
    ["train", *TRAIN, "--set", "num_classes=-1"], ["train", *TRAIN, "--set", "dims=abc"],
    ["train", *TRAIN, "--set", "head_dim=3.5"], ["train", *TRAIN, "--set", "nosuch=1"],
    ["train", *TRAIN, "--set", "noequals"], ["train", *TRAIN, "--model", "nosuch"],
    ["train", *TRAIN, "--data", "DIR/absent"], ["train", *TRAIN, "--data", "TXT"],
    ["train", *TRAIN, "--max-bad-fraction", "2"], ["train", *TRAIN, "--task", "nosuch"],
    ["train", "--resume", "DIR/absent"], ["train", *TRAIN, "--pretrained", "DIR/absent.pth"],
    ["train", *TRAIN, "--pretrained", "TRUNC"], ["train", *TRAIN, "--workers", "-1"],
    ["train", *TRAIN, "--keep", "0"], ["train", *TRAIN, "--threads", "0"],
    # eval / predict
    ["eval", "--checkpoint", "DIR/absent"], ["eval", "--checkpoint", "GOOD", "--batch-size", "0"],
    ["eval", "--checkpoint", "TRUNC"], ["eval", "--checkpoint", "NAN"], ["eval", "--checkpoint", "TYPED"],
    ["eval", "--checkpoint", "GOOD", "--limit", "0"], ["eval", "--checkpoint", "GOOD", "--data", "DIR/absent"],
    ["eval", "--checkpoint", "PTH", "--model", "maxvit_tiny"], ["eval", "--checkpoint", "IMG"],
    ["predict", "--checkpoint", "GOOD", "--topk", "0", "IMG"], ["predict", "--checkpoint", "GOOD", "--topk", "-3", "IMG"],
    ["predict", "--checkpoint", "GOOD"], ["predict", "--checkpoint", "GOOD", "DIR/absent.png"],
    ["predict", "--checkpoint", "GOOD", "TXT"], ["predict", "--checkpoint", "NAN", "IMG"],
    ["predict", "--checkpoint", "TRUNC", "IMG"],
    # convert
    ["convert", "DIR/absent.pth", "--model", "maxvit_tiny"], ["convert", "PTH", "--model", "maxvit_tiny"],
    ["convert", "GOOD", "--model", "nosuch"], ["convert", "TXT", "--model", "maxvit_tiny"],
    ["convert", "GOOD", "--model", "maxvit_tiny", "--out", "DIR/x.bin"],
    # bench / info / export / show / restore / list
    ["bench", "--model", "maxvit_tiny", "--sizes=-32"], ["bench", "--model", "maxvit_tiny", "--sizes", "0"],
    ["bench", "--model", "maxvit_tiny", "--sizes", "abc"],
    ["bench", "--model", "maxvit_tiny", "--sizes", "32", "--batch-size", "0"],
    ["bench", "--model", "maxvit_tiny", "--sizes", "32", "--iters", "0"],
    ["bench", "--model", "maxvit_tiny", "--sizes", "32", "--warmup", "-1"], ["bench", "--model", "nosuch"], ["bench"],
    ["bench", "--attention", "nosuch"], ["bench", "--model", "maxvit_tiny", "--sizes", "32", "--set", "head_dim=0"],
    ["bench", "--attention", "multi_axis", "--sizes", "16", "--set", "dim=-8"],
    ["info", "nosuch"], ["info", "maxvit_tiny", "--set", "head_dim=0"], ["info", "maxvit_tiny", "--sizes=-1"],
    ["info", "maxvit_tiny", "--set", "depths=1,x"],
    ["export", "maxvit_tiny", "--out", "DIR/x.onnx", "--size", "0"], ["export", "nosuch", "--out", "DIR/x.onnx"],
    ["export", "maxvit_tiny", "--out", "DIR/x.txt"], ["export", "maxvit_tiny", "--format", "torch-export", "--out",
                                                      "DIR/x.onnx"], ["export", "maxvit_tiny", "--checkpoint", "NAN", "--out",
                                                      "DIR/y.onnx"],
    ["show", "partition", "--size", "0"], ["show", "partition", "--partition-size", "0"],
    ["show", "partition", "--size", "abc"], ["show", "attention", "--checkpoint", "NAN"],
    ["restore", "IMG", "--checkpoint", "DIR/absent"], ["restore", "IMG", "--checkpoint", "GOOD"],
    ["restore", "DIR/absent.png", "--checkpoint", "GRL"], ["restore", "IMG", "--checkpoint", "GRL", "--tile", "-1"],
    ["restore", "IMG", "--checkpoint", "GRL", "--tile-overlap", "-5"], ["restore", "IMG", "--checkpoint", "GRL",
                                                                         "--tile", "16", "--tile-overlap", "16"],
    ["restore", "IMG", "--checkpoint", "GRL", "--scale", "0"], ["restore", "IMG", "--checkpoint", "GRL", "--ext",
                                                                 ".xyz", "--out", "DIR/restored"],
    ["restore", "TXT", "--checkpoint", "GRL", "--out", "DIR/restored"],
    ["list", "--nosuch"], ["nosuch"],
]


def classify(status: int | None, err: str, escaped: BaseException | None) -> str:
    if escaped is not None or "Traceback (most recent call last)" in err:
        return "TRACEBACK"
    if status == 0:
        return "ACCEPTED"
    return "clear"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="only", help="only cases whose command line contains this")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="visattn_cli_"))
    paths = _fixtures(work)
    rows = []
    start = time.perf_counter()
    for case in CASES:
        argv = [paths.get(a, a) for a in case]
        argv = [a.replace("DIR", paths["DIR"]) for a in argv]
        tiny = case[1:1 + len(TRAIN)] == TRAIN                     # shown as "train ... FLAGS"
        shown = " ".join(case[:1] + (["..."] + case[1 + len(TRAIN):] if tiny else case[1:]))
        if args.only and args.only not in " ".join(case):
            continue
        status, _, err, escaped = run_cli_here(*argv)
        kind = classify(status, err, escaped)
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
        message = (f"{type(escaped).__name__}: {escaped}" if escaped is not None else (lines[-1] if lines else ""))
        rows.append({"command": "visattn " + shown, "exit": status, "result": kind, "message": message[:110]})
        print(rows[-1], flush=True)
    print()
    print_table(rows, ["command", "exit", "result", "message"])
    count = {k: sum(r["result"] == k for r in rows) for k in ("clear", "TRACEBACK", "ACCEPTED")}
    print(f"\n{len(rows)} bad command lines in {time.perf_counter() - start:.0f}s: {count['clear']} clear one-line "
          f"errors, {count['TRACEBACK']} tracebacks, {count['ACCEPTED']} accepted")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
