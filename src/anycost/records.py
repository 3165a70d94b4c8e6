"""Run records: every run and evaluation writes one JSON object holding its resolved
config, git commit, seed, hardware and results. Plots and reports read these, never models."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import tempfile
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch

from anycost.checkpoint import publishable

RECORD_FORMAT = "anycost-record-v1"


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        publishable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def dumps(obj: Any) -> str:
    """JSON for records: objects indented one space per level (readable, diffable), lists of
    plain values on one line (a 100-point curve or a channel list stays a few lines).

    Strict JSON: a NaN or infinite float is written as null, and a record (a dict) says why
    under :data:`NONFINITE_KEY`, ``{JSON pointer: "NaN" | "Infinity" | "-Infinity"}``, which
    :func:`loads` reads back; ``allow_nan=False`` makes anything that slips past an error."""
    bad: dict[str, str] = {}
    plain = _plain_json(obj, "", bad)
    if bad and isinstance(plain, dict):
        old = plain.get(NONFINITE_KEY)
        plain[NONFINITE_KEY] = {**(old if isinstance(old, dict) else {}), **bad}
    text = json.dumps(plain, indent=1, allow_nan=False)
    # a list holding no list or object; JSON strings never contain a raw newline, so only
    # layout whitespace is removed
    return _FLAT_LIST.sub(lambda m: _LAYOUT.sub("", m.group()), text)


def loads(text: str) -> Any:
    """A record's JSON with the values :func:`dumps` wrote as null put back (NaN, +-inf). Old
    records holding bare NaN / Infinity tokens read as before."""
    obj = json.loads(text)
    if isinstance(obj, dict) and isinstance(obj.get(NONFINITE_KEY), dict):
        for ptr, what in obj.pop(NONFINITE_KEY).items():
            _restore(obj, ptr, _NONFINITE.get(what))
    return obj


NONFINITE_KEY = "nonfinite"
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_FLAT_LIST = re.compile(r'\[(?:[^\[\]{}"]|"(?:[^"\\]|\\.)*")*\]')  # strings are skipped whole
_LAYOUT = re.compile(r"\n\s*")


def _plain_json(o: Any, ptr: str, bad: dict[str, str]) -> Any:
    """``o`` as plain JSON values (tensors as lists, objects by ``to_dict``), every non-finite
    float replaced by None and noted in ``bad`` under its JSON pointer."""
    if o is None or isinstance(o, (str, bool)):
        return o
    if isinstance(o, Integral):
        return int(o)
    if isinstance(o, Real):
        v = float(o)
        if math.isfinite(v):
            return v
        bad[ptr] = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        return None
    if isinstance(o, Mapping):
        return {k: _plain_json(v, f"{ptr}/{_escape(k)}", bad) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain_json(v, f"{ptr}/{i}", bad) for i, v in enumerate(o)]
    return _plain_json(_json_default(o), ptr, bad)


def _escape(key: Any) -> str:
    """One JSON pointer step (RFC 6901) for a key, spelt as json.dumps writes it."""
    k = key if isinstance(key, str) else json.dumps(key)  # 1 -> "1", True -> "true", None -> "null"
    return k.replace("~", "~0").replace("/", "~1")


def _restore(obj: Any, ptr: str, value: float | None) -> None:
    """Put ``value`` at JSON pointer ``ptr`` of ``obj`` where null stands there; otherwise leave it."""
    if value is None or not isinstance(ptr, str) or not ptr.startswith("/"):
        return
    *path, last = [p.replace("~1", "/").replace("~0", "~") for p in ptr[1:].split("/")]
    for step in path:
        obj = _step(obj, step)
        if obj is None:
            return
    if isinstance(obj, dict) and obj.get(last, 0) is None:
        obj[last] = value
    elif isinstance(obj, list) and last.isdigit() and int(last) < len(obj) and obj[int(last)] is None:
        obj[int(last)] = value


def _step(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    if isinstance(obj, list) and key.isdigit() and int(key) < len(obj):
        return obj[int(key)]
    return None


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, dumps(obj) + "\n")


def _json_default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def git_commit() -> dict:
    """Commit of the source tree anycost runs from (None outside a checkout), and whether it is dirty."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        st = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=5)
        return {"commit": sha.stdout.strip(), "dirty": bool(st.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: str | torch.device = "cpu") -> dict:
    dev = torch.device(device)
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(dev),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def make_record(kind: str, config: dict, results: dict, *, seed: int | None = None, device="cpu",
                git: dict | None = None, **extra) -> dict:
    """``git``: the commit to record (default: the tree's now; a long run passes the one it started from)."""
    from anycost import __version__

    rec = {
        "format": RECORD_FORMAT,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "anycost_version": __version__,
        "git": git if git is not None else git_commit(),
        "seed": seed,
        "hardware": hardware_info(device),
        "config": config,
        "results": results,
    }
    rec.update(extra)
    return rec


class RecordError(ValueError):
    pass


def read_record(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: record not found")
    try:
        rec = loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
        raise RecordError(f"{path}: not an anycost record (missing format '{RECORD_FORMAT}')")
    return rec
