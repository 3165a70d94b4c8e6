"""The CLI, reproduce and demo call only the model contract: no probing for family methods
and no branch on a model's kind."""

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "anycost"
CALLERS = sorted((SRC / "cli").glob("*.py")) + [SRC / "reproduce.py", SRC / "demo.py"]
PATTERNS = [r"hasattr\(\s*model", r"\bkind\s*==", r"\.family\s*==", r"isinstance\([^)]*(Cascade|CNMM|LCResNet|MultiExit)"]


def test_callers_do_not_branch_on_the_family():
    hits = [f"{p.name}:{i}: {line.strip()}" for p in CALLERS for i, line in enumerate(p.read_text().splitlines(), 1)
            if any(re.search(pat, line) for pat in PATTERNS)]
    assert not hits, "\n".join(hits)
