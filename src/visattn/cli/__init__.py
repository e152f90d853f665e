"""``visattn <command>``: one console script, one module per command (``add_parser()`` + ``run()``).

Command modules import only argparse at module level; torch and the models load inside ``run()``, so
``visattn --help`` answers at once. Errors a user can act on (bad data, unknown model, a checkpoint of another
architecture, divergence...) print one line and exit with status 1; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

__all__ = ["COMMANDS", "main"]

# command -> module (``list`` is a Python builtin, hence list_.py)
COMMANDS = {
    "list": "list_",
    "info": "info",
    "train": "train",
    "eval": "eval",
    "predict": "predict",
    "convert": "convert",
    "bench": "bench",
    "show": "show",
    "restore": "restore",
    "export": "export",
}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"visattn: {level}{record.getMessage()}"


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")
        sys.stderr.flush()


def _setup_logging(debug: bool) -> None:
    logger = logging.getLogger("visattn")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="visattn",
        description="Efficient vision attention: train, evaluate, predict, convert, benchmark and visualise.",
    )
    parser.add_argument("--version", action="version", version=f"visattn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--no-allocator-tuning", action="store_true",
                        help="leave the C allocator as it is (by default glibc keeps freed large CPU buffers for "
                             "reuse: faster on large inputs, resident memory stays near its peak; see "
                             "visattn.allocator)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        importlib.import_module(f".{module}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``visattn`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("VISATTN_DEBUG") == "1"
    _setup_logging(debug)
    if not (args.no_allocator_tuning or os.environ.get("VISATTN_NO_ALLOCATOR_TUNING") == "1"):
        from ..allocator import keep_freed_memory

        keep_freed_memory()
    try:
        return int(args.run(args) or 0)
    except BrokenPipeError:  # `visattn list | head`: the reader went away; leave quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("visattn: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; the traceback with --debug
        if debug:
            raise
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not isinstance(err, (ValueError, RuntimeError, OSError, LookupError)):
            message = f"{type(err).__name__}: {message}"
        print(f"visattn {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
