"""mkdocs hooks: serve the committed benchmark plots as ``img/...`` and expand the CLI
reference from argparse, so neither is copied by hand into the docs."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
CLI_MARK = re.compile(r"<!--\s*anycost:cli-reference\s*-->")


def on_files(files, config):
    # benchmarks/x/y.png -> img/x/y.png: plots stay next to the records that made them
    for png in sorted(BENCH.rglob("*.png")):
        files.append(File.generated(config, f"img/{png.relative_to(BENCH).as_posix()}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    if CLI_MARK.search(markdown):
        markdown = CLI_MARK.sub(lambda _: cli_reference(), markdown)
    return markdown


def cli_reference() -> str:
    from anycost.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = ["## anycost", "", "```text", _help(parser), "```", ""]
    for name in COMMANDS:
        out += [f"## anycost {name}", "", "```text", _help(sub.choices[name]), "```", ""]
    return "\n".join(out)


def _help(p: argparse.ArgumentParser) -> str:
    import os

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # stable wrapping, whatever the terminal
    try:
        return p.format_help().rstrip()
    finally:
        if old is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = old
