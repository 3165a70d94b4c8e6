"""Serving benchmark (#35): does moving the operating point with the load hold a latency target?

For each model: measure the capacity C of a server pinned to the most accurate point (its
throughput under overload), set the target to twice that server's p95 at 0.5C, then offer
0.5C, 1C, 2C and 4C (open-loop Poisson, holdout images) to three servers: pinned to the most
accurate point, pinned to the cheapest, and adaptive (``--slo-ms``). Servers run with one
torch thread, so that the client and the HTTP side have the other core.

    python benchmarks/serve_load.py --data-dir ../shared/data/cifar-10-batches-py \
        --out benchmarks/records/serve

writes one loadtest record per server, ``summary.json`` (the table) and ``MODEL.png`` per
model. Pause other work on the machine first: this measures wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from anycost.records import dumps, make_record, write_json_atomic
from anycost.serve.loadtest import plot_loadtest, run_loadtest

MODELS = ["ee_resnet56.branch_joint_cifar10", "cnmm_r9.kd_cifar10", "cnmm_r6.kd2_cifar10"]
LOADS = [0.5, 1.0, 2.0, 4.0]
SERVER = ["--threads", "1", "--max-batch", "64", "--max-wait-ms", "5", "--max-queue", "1024"]


class Server:
    def __init__(self, model: str, data_dir: str, *args: str):
        cmd = [sys.executable, "-m", "anycost.cli", "serve", model, "--port", "0", "--data-dir", data_dir, *SERVER, *args]
        self.p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if not m:
            self.p.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.p.stderr.read()}")
        self.url = m.group(1)
        self.args = list(args)

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/health", timeout=30) as r:
            return json.load(r)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.p.terminate()
        self.p.communicate(timeout=120)


def bench_model(model: str, data_dir: str, out: Path, duration: float, seed: int) -> dict:
    common = dict(data_dir=data_dir, split="holdout", seed=seed, connections=2048, timeout=60.0, progress=True)
    with Server(model, data_dir) as probe:
        pts = probe.health()["operating_points"]
    top = max(pts, key=lambda p: (p["accuracy"], -p["macs"]))["name"]
    cheap = min(pts, key=lambda p: p["macs"])["name"]

    with Server(model, data_dir, "--op", top) as s:
        table = s.health()["latency_table"]
        guess = table["sizes"][-1] / table["seconds"][top][-1]  # images/s at full batches
        over = run_loadtest(s.url, rates=[3 * guess], requests=int(3 * guess * 10), duration=10.0, **common)
        capacity = over["results"]["runs"][0]["throughput"]
        half = run_loadtest(s.url, rates=[0.5 * capacity], requests=int(0.5 * capacity * duration),
                            duration=duration, capacity=capacity, **common)
    slo = 2 * half["results"]["runs"][0]["latency_ms"]["p95"]
    print(f"{model}: capacity {capacity:.0f} req/s at {top}; SLO {slo:.1f} ms", flush=True)

    rates = [f * capacity for f in LOADS]
    records = {}
    for label, args in [(f"pinned {top}", ["--op", top]), (f"pinned {cheap}", ["--op", cheap]),
                        ("adaptive", ["--slo-ms", f"{slo:.3f}"])]:
        with Server(model, data_dir, *args) as s:
            rec = run_loadtest(s.url, rates=rates, requests=int(max(rates) * duration), duration=duration,
                               capacity=capacity, slo_ms=slo, label=f"{model} {label}", **common)
        rec["config"]["server_args"] = SERVER + args
        safe = label.replace(" ", "_").replace("/", "_").replace(">=", "ge").replace("=", "")
        write_json_atomic(out / f"{model}-{safe}.json", rec)
        records[label] = rec
    plot_loadtest(list(records.values()), out / f"{model}.png",
                  title=f"{model}: p95 latency and served accuracy vs offered load (C = {capacity:.0f} req/s)")

    rows = []
    for label, rec in records.items():
        for run in rec["results"]["runs"]:
            rows.append({"server": label, "load": run["offered_load"], "rate": run["rate"],
                         "throughput": run["throughput"], "p95_ms": run["latency_ms"]["p95"],
                         "p99_ms": run["latency_ms"]["p99"], "accuracy": run["accuracy"],
                         "accuracy_ci95": run["accuracy_ci95"], "sent": run["sent"], "ok": run["ok"],
                         "rejected": run["rejected"], "errors": run["errors"], "lost": run["lost"],
                         "macs_mean": run["macs_mean"], "within_slo": (run["latency_ms"]["p95"] or 1e9) <= slo,
                         "operating_points": run["operating_points"]})
    return {"model": model, "top": top, "cheapest": cheap, "capacity": capacity, "slo_ms": slo,
            "capacity_run": over["results"]["runs"][0], "half_load_run": half["results"]["runs"][0], "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--out", default="benchmarks/records/serve")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per offered load")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results = [bench_model(m, a.data_dir, out, a.duration, a.seed) for m in a.models]
    rec = make_record("serve-benchmark", {"argv": sys.argv, "models": a.models, "loads": LOADS,
                                          "duration": a.duration, "server_args": SERVER}, {"models": results},
                      seed=a.seed)
    rec["wall_s"] = time.time() - t0
    write_json_atomic(out / "summary.json", rec)
    print(dumps([{k: v for k, v in r.items() if k != "rows"} for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
