"""Helpers shared by the fault-injection scripts: run the CLI in a fresh process or in this one, print a table."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

# a 0.03M-parameter MaxViT: the whole training run takes seconds on one core
TINY_MODEL = ["--model", "maxvit_tiny", "--set", "stem_width=8", "--set", "dims=8,16,16,16", "--set",
              "depths=1,1,1,1", "--set", "head_dim=8", "--set", "partition_size=4"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``python -m visattn.cli`` child: this checkout's src first, one thread."""
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", **(extra or {})}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "visattn.cli", *args]


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``visattn ARGS`` in a fresh process (the console script's code path)."""
    return subprocess.run(cli_command(*args), capture_output=True, text=True, env=cli_env(env), timeout=timeout,
                          check=False)


def run_cli_here(*args: str) -> tuple[int | None, str, str, BaseException | None]:
    """``visattn ARGS`` in this process: (exit status, stdout, stderr, the exception that escaped ``main``)."""
    from visattn.cli import main

    out, err = io.StringIO(), io.StringIO()
    status, escaped = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exit_:                 # argparse: usage error
            status = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException as exc:  # noqa: BLE001 - what a user would see as a bare traceback
            escaped = exc
    return status, out.getvalue(), err.getvalue(), escaped


def print_table(rows: list[dict[str, object]], columns: list[str]) -> None:
    """A Markdown table of ``rows`` (the scripts' summaries are pasted into benchmarks/results/faults.md)."""
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("| " + " | ".join("-" * w for w in widths) + " |")
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) + " |")
