"""Docs and repository hygiene: generated tables match their records, the site builds with
warnings as errors, docstrings hold no measurements, no tracked file is bulky."""

from __future__ import annotations

import ast
import io
import re
import shlex
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from anycost.cli import main as cli
from anycost.report import section_markers

ROOT = Path(__file__).resolve().parents[1]
GENERATED = re.compile(r"<!-- anycost:([A-Za-z0-9_.-]+):begin -->\n_Generated from records by `([^`]+)`\._\n")
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _sections():
    for page in PAGES:
        for m in GENERATED.finditer(page.read_text()):
            yield pytest.param(page, m.group(1), m.group(2), id=f"{page.relative_to(ROOT)}:{m.group(1)}")


def _body(text: str, section: str) -> str:
    begin, end = section_markers(section)
    inner = text.split(begin, 1)[1].split(end, 1)[0]
    return inner.split("\n", 2)[2]  # after the "_Generated ..._" line


@pytest.mark.parametrize("page,section,command", list(_sections()))
def test_generated_tables_match_their_records(page, section, command, tmp_path, monkeypatch, capsys):
    argv = shlex.split(command)[1:]  # drop "anycost"
    i = argv.index("--into")
    copy = tmp_path / page.name
    shutil.copy(page, copy)
    argv[i + 1] = str(copy)
    monkeypatch.chdir(ROOT)
    assert cli(argv) == 0
    assert _body(copy.read_text(), section) == _body(page.read_text(), section), \
        f"{page.name} section '{section}' is stale: re-run `{command}`"


def test_generated_sections_exist():
    found = {(p.name, s) for p, s, _ in (x.values for x in _sections())}
    assert ("README.md", "headline") in found and ("results.md", "headline") in found


def test_readme_is_short_and_links_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), f"README links to missing {link}"
    assert (ROOT / "README.md").read_text().count("```bash") >= 2


@pytest.mark.slow
def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT,
                       env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").read_text().count("anycost train") > 0


# a measured result: a percentage with decimals, a gap in points, a speed-up factor with decimals
MEASUREMENT = re.compile(r"\b\d+\.\d+\s?%|\b\d+(?:\.\d+)?\s?pts?\b|\b\d+\.\d+x\b")


def _docstrings_and_comments(path: Path):
    src = path.read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield getattr(node, "lineno", 1), doc
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string


def test_no_docstring_or_comment_quotes_a_measurement():
    bad = [f"{p.relative_to(ROOT)}:{line}: {m.group()!r}"
           for p in sorted((ROOT / "src" / "anycost").rglob("*.py"))
           for line, text in _docstrings_and_comments(p) for m in MEASUREMENT.finditer(text)]
    assert not bad, "measurements belong in docs/, not in code:\n" + "\n".join(bad)


def _tracked() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def test_no_tracked_file_over_5_mb_and_records_are_compact():
    files = _tracked()
    big = [f"{f.relative_to(ROOT)} ({f.stat().st_size / 2**20:.1f} MB)" for f in files if f.stat().st_size > 5 * 2**20]
    assert not big, "tracked files over 5 MB: " + ", ".join(big)
    records = [f for f in files if f.suffix == ".json" and (ROOT / "benchmarks") in f.parents]
    fat = [str(f.relative_to(ROOT)) for f in records if f.stat().st_size > 2 * 2**20]
    assert not fat, "records over 2 MB (keep tensors and per-sample arrays out of JSON): " + ", ".join(fat)
    total = sum(f.stat().st_size for f in files if (ROOT / "benchmarks" / "records") in f.parents)
    assert total < 25 * 2**20, f"benchmarks/records holds {total / 2**20:.1f} MB"


@pytest.mark.slow
def test_wheel_is_small(tmp_path):
    if not (ROOT / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    if r.returncode and "setuptools" in r.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("anycost-*.whl")
    assert wheel.stat().st_size < 10 * 2**20
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith((".pt", ".safetensors", ".pth"))], "weights inside the wheel"
