"""Prometheus text-format metrics for the server: counters, gauges and histograms with labels.

Small on purpose (no client library): the worker thread and the event loop both update
them, so every update takes one lock; ``render`` writes the exposition format 0.0.4.
"""

from __future__ import annotations

import math
import threading
from typing import Sequence

__all__ = ["Metrics", "LATENCY_BUCKETS"]

# seconds: 1 ms .. 10 s, roughly 2x apart (a p95 target lands between two buckets at most 2x wide)
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    esc = {k: str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for k, v in labels.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in sorted(esc.items())) + "}"


def _num(v: float) -> str:
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


class Metrics:
    """All the server's metrics. ``inc``/``set``/``observe`` take a metric name and labels."""

    def __init__(self, prefix: str = "anycost"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}  # name -> (type, help)
        self._values: dict[str, dict[tuple, float]] = {}
        self._hist: dict[str, tuple[Sequence[float], dict[tuple, list]]] = {}

    def counter(self, name: str, help: str) -> None:
        self._help[name] = ("counter", help)
        self._values.setdefault(name, {})

    def gauge(self, name: str, help: str) -> None:
        self._help[name] = ("gauge", help)
        self._values.setdefault(name, {})

    def histogram(self, name: str, help: str, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self._help[name] = ("histogram", help)
        self._hist.setdefault(name, (tuple(buckets), {}))

    def inc(self, name: str, value: float = 1.0, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            d = self._values[name]
            d[key] = d.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = float(value)

    def observe(self, name: str, value: float, **labels) -> None:
        buckets, series = self._hist[name]
        key = tuple(sorted(labels.items()))
        with self._lock:
            s = series.setdefault(key, [[0] * len(buckets), 0, 0.0])  # per-bucket counts, count, sum
            for i, b in enumerate(buckets):
                if value <= b:
                    s[0][i] += 1
            s[1] += 1
            s[2] += value

    def value(self, name: str, **labels) -> float:
        """A counter's or gauge's current value (0 if never set); a histogram's count."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            if name in self._hist:
                s = self._hist[name][1].get(key)
                return float(s[1]) if s else 0.0
            return self._values[name].get(key, 0.0)

    def render(self) -> str:
        out = []
        with self._lock:
            for name, (kind, help) in self._help.items():
                full = f"{self.prefix}_{name}"
                out += [f"# HELP {full} {help}", f"# TYPE {full} {kind}"]
                if kind != "histogram":
                    for key, v in sorted(self._values[name].items()):
                        out.append(f"{full}{_labels(dict(key))} {_num(v)}")
                    continue
                buckets, series = self._hist[name]
                for key, (counts, n, total) in sorted(series.items()):
                    lab = dict(key)
                    for b, c in zip(buckets, counts):
                        out.append(f"{full}_bucket{_labels({**lab, 'le': _num(b)})} {c}")
                    out.append(f"{full}_bucket{_labels({**lab, 'le': '+Inf'})} {n}")
                    out.append(f"{full}_sum{_labels(lab)} {_num(total)}")
                    out.append(f"{full}_count{_labels(lab)} {n}")
        return "\n".join(out) + "\n"
