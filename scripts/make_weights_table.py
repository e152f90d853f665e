"""Regenerate the weights table of docs/weights.md from visattn.weights.registry (between the TABLE markers).

    PYTHONPATH=src python scripts/make_weights_table.py [--check]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visattn.weights.registry import LEFT_OUT, list_pretrained

DOC = Path(__file__).resolve().parents[1] / "docs" / "weights.md"
BEGIN, END = "<!-- TABLE BEGIN (scripts/make_weights_table.py) -->", "<!-- TABLE END -->"


def table() -> str:
    rows = ["| model | tag | alias | source | input | classes | publisher's top-1 |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for e in list_pretrained():
        source = e.source + (f" (sha256 {e.hash_prefix}...)" if e.hash_prefix else "")
        top1 = f"{e.top1:.3f}" if e.top1 is not None else "-"
        rows.append(f"| {e.model} | {e.tag} | {', '.join(e.aliases)} | {source} | "
                    f"{'x'.join(map(str, e.input_size[1:]))} | {e.num_classes or '-'} | {top1} |")
    rows += ["", "Not registered:", ""]
    rows += [f"- {what}: {why}" for what, why in LEFT_OUT.items()]
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/weights.md is not up to date")
    args = parser.parse_args()
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{BEGIN}\n{table()}\n{END}{tail}"
    if args.check:
        return 0 if new == text else 1
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
