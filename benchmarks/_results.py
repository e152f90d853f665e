"""Where the benchmark drivers file their tables, and how: CSV, a PNG bar chart and a Markdown page per table.

Results go under ``<base>/<machine type>/`` (``benchmarks/results/xeon-avx512-amx/``): the machine type is
:func:`visattn.machine.machine_slug`, which names the CPU family, its widest instruction set and any ISA cap in effect
(``...-avx2-capped``), so runs on different machines or under different caps never overwrite each other.
"""

from __future__ import annotations

import csv
import datetime
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from visattn.machine import CAP_VARIABLES, machine_slug
from visattn.plots import have_matplotlib

__all__ = ["bar_chart", "command_line", "results_dir", "write_csv", "write_markdown"]


def results_dir(base: str | os.PathLike) -> Path:
    """``base / machine_slug()``, created."""
    path = Path(base) / machine_slug()
    path.mkdir(parents=True, exist_ok=True)
    return path


def command_line() -> str:
    """The command that is running, as one would type it again: the ISA caps set in the environment first."""
    caps = [f"{v}={shlex.quote(os.environ[v])}" for v in CAP_VARIABLES.values() if v in os.environ]
    script = os.path.relpath(sys.argv[0]) if os.path.exists(sys.argv[0]) else sys.argv[0]
    return " ".join([*caps, "REF/bin/python", shlex.quote(script), *map(shlex.quote, sys.argv[1:])])


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One row per mapping; the columns are the keys in first-seen order (floats written with 6 significant
    digits)."""
    path = Path(path)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return path


def bar_chart(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], label: str,
              panels: Sequence[tuple[str, str, Mapping[str, str]]], title: str = "") -> Path | None:
    """Grouped bars, one group per row (named by ``row[label]``), one panel per ``(title, y label, {column: legend})``
    side by side; each bar carries its value. None (with a warning) where matplotlib is not installed."""
    if not have_matplotlib():
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    names = [str(row[label]) for row in rows]
    for ax, (panel_title, ylabel, series) in zip(axes[0], panels):
        width = 0.8 / len(series)
        for i, (column, legend) in enumerate(series.items()):
            xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
            values = [float(row[column]) for row in rows]
            bars = ax.bar(xs, values, width, label=legend)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(range(len(rows)), names, rotation=15 if max(map(len, names)) > 12 else 0)
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.12)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def write_markdown(path: str | os.PathLike, title: str, header: Sequence[str], tables: Sequence[str],
                   notes: Sequence[str] = ()) -> Path:
    """A page with the command that made it, the date, ``header`` lines (machine, versions) in a code block, the
    tables (Markdown text) and ``notes``."""
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [f"# {title}", "", "```", command_line(), f"date: {date}", *header, "```", ""]
    for table in tables:
        lines += [table.rstrip("\n"), ""]
    lines += [*notes]
    path = Path(path)
    path.write_text("\n".join(lines).rstrip("\n") + "\n")
    return path
