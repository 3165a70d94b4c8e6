"""One-off (issue #32): shrink the committed JSON records without changing a result.

Drops per-point BatchNorm statistics (replaced by their sha256; the tensors stay in git
history before this commit and, for shipped points, in the zoo entry's op state), replaces
CIFAR validation index lists by their fingerprint, and rewrites with ``records.dumps``.
Run: python benchmarks/compact_records.py [--check]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from anycost.data import split_fingerprint
from anycost.records import dumps

BN_NOTE = "BatchNorm statistics dropped from the record (issue #32); see git history or the zoo entry's op state"


def compact(o, key=None):
    if isinstance(o, dict):
        if key == "bn" and len(json.dumps(o)) > 1000:
            blob = json.dumps(o, sort_keys=True).encode()
            return {"dropped": BN_NOTE, "modules": len(o), "sha256": hashlib.sha256(blob).hexdigest()}
        out = {}
        for k, v in o.items():
            if k == "val_indices" and isinstance(v, list) and len(v) > 1000:
                out.update(split_fingerprint(v))
            else:
                out[k] = compact(v, k)
        return out
    if isinstance(o, list):
        return [compact(v) for v in o]
    return o


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only report sizes, write nothing")
    args = ap.parse_args()
    files = [Path(f) for f in subprocess.check_output(["git", "ls-files", "benchmarks"], text=True).split() if f.endswith(".json")]
    before = after = 0
    for f in files:
        text = f.read_text()
        new = dumps(compact(json.loads(text))) + "\n"
        before, after = before + len(text), after + len(new)
        if not args.check and new != text:
            f.write_text(new)
    print(f"{len(files)} records: {before / 2**20:.1f} MB -> {after / 2**20:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
