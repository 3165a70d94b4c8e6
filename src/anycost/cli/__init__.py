"""The ``anycost`` command: one module per command, each only parsing its arguments and
calling the Python API. A user mistake prints one line on stderr and exits 2 (no
traceback); ``--traceback`` shows the full one for bug reports."""

from __future__ import annotations

import argparse
import importlib
import sys

from ._common import EPILOG, UserError

__all__ = ["main", "build_parser", "UserError", "COMMANDS"]

# in the order `anycost --help` lists them
COMMANDS = ["demo", "models", "zoo", "train", "publish", "calibrate", "eval", "predict", "bench", "export", "plot",
            "report", "reproduce", "serve", "loadtest"]


class OneLineParser(argparse.ArgumentParser):
    """argparse's own errors (an unknown flag, ``--epochs 1.5``) as one line, exit 2, like
    every other user error; the usage is one ``--help`` away. Sub-commands inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from anycost import __version__

    p = OneLineParser(
        prog="anycost", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        fromfile_prefix_chars="@",  # `anycost report @args.txt`: long record lists live in a file
        description="Networks whose inference cost is chosen at run time: train, calibrate, evaluate, "
                    "benchmark, export and plot accuracy against MACs.")
    p.add_argument("--version", action="version", version=f"anycost {__version__}")
    p.add_argument("--traceback", action="store_true", help="show full tracebacks on errors (for bug reports)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"anycost.cli.{name}").add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    a = parser.parse_args(raw)
    a.argv = raw  # as typed (before @file expansion), for records and generated sections
    if not getattr(a, "func", None):
        parser.print_help()
        return 0
    from anycost.checkpoint import CheckpointError
    from anycost.data import DataError
    from anycost.records import RecordError

    try:
        return a.func(a) or 0
    except KeyboardInterrupt:
        hint = " (completed epochs are saved; continue with --resume)" if a.cmd == "train" else ""
        print(f"anycost: interrupted{hint}", file=sys.stderr)
        return 130
    except (UserError, DataError, CheckpointError, RecordError, ValueError, KeyError,
            FileNotFoundError) as e:
        if a.traceback:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"anycost: error: {msg}", file=sys.stderr)
        return 2
