"""anycost loadtest: open-loop Poisson load against a local ``anycost serve`` server."""

from __future__ import annotations

import sys

from ._common import EPILOG, UserError, check_output_file

HELP = "open-loop load test of a local anycost server: latency, throughput and served accuracy per rate"


def add(sub) -> None:
    x = sub.add_parser("loadtest", help=HELP, epilog=EPILOG,
                       description="Send labelled images from the model's own validation split to a server on "
                                   "this machine (loopback only) as Poisson arrivals at each --rate in turn, each "
                                   "request at its scheduled time whatever the server's pace (open loop). Prints "
                                   "per rate: throughput, 503 rejections, errors, latency percentiles from the "
                                   "moment a request was due, served accuracy with its 95 % Wilson interval, the "
                                   "operating-point mix and mean MACs; --out writes the record, --plot draws p95 "
                                   "latency and accuracy against offered load.")
    x.add_argument("url", help="the server, e.g. http://127.0.0.1:8000 (loopback addresses only)")
    x.add_argument("--rate", type=float, nargs="+", required=True, metavar="R",
                   help="offered rates in requests/s, one run each, in this order (give the URL first, "
                        "or end the list with --)")
    x.add_argument("--requests", type=int, default=1000, metavar="N",
                   help="arrivals per run at most (default 1000)")
    x.add_argument("--duration", type=float, default=30.0, metavar="S",
                   help="seconds of arrivals per run at most (default 30); a run ends at whichever limit comes first")
    x.add_argument("--data-dir", help="dataset folder (CIFAR: the batches folder or its parent; digits needs none)")
    x.add_argument("--split", default="holdout", choices=["val", "calib", "holdout", "test", "train"],
                   help="which labelled images to send (default holdout: the half of val not used to calibrate)")
    x.add_argument("--format", dest="fmt", default="png", choices=["png", "npy"],
                   help="request body: one PNG, or a uint8 .npy of shape (1, H, W, C) (default png)")
    x.add_argument("--seed", type=int, default=0, help="seeds the arrival times and the image order (default 0)")
    x.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds after a request is due before it counts as an error (default 30)")
    x.add_argument("--connections", type=int, default=256, metavar="N",
                   help="keep-alive connections at most; a request waits (and its latency grows) when all are "
                        "busy (default 256)")
    x.add_argument("--capacity", type=float, metavar="R",
                   help="the server's capacity in requests/s: also report and plot load as a multiple of it")
    x.add_argument("--slo-ms", type=float, metavar="MS",
                   help="latency objective drawn on the plot (default: the server's own, if it has one)")
    x.add_argument("--label", help="name of this run in tables and plots (default: the model and its setting)")
    x.add_argument("--out", metavar="RECORD.json", help="write the record here")
    x.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    x.add_argument("--plot", metavar="PNG", help="draw p95 latency and served accuracy against offered load")
    x.add_argument("--compare", nargs="+", metavar="RECORD.json", default=[],
                   help="earlier load-test records drawn on the same --plot")
    x.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    x.set_defaults(func=run)


def run(a) -> int:
    from anycost.records import read_record, write_json_atomic
    from anycost.serve.loadtest import plot_loadtest, run_loadtest

    out = check_output_file(a.out, "--out") if a.out else None
    if out is not None and out.exists() and not a.overwrite:
        raise UserError(f"--out {a.out} exists; pass --overwrite to replace it")
    plot = check_output_file(a.plot, "--plot") if a.plot else None
    if a.compare and plot is None:
        raise UserError("--compare draws earlier records on the --plot; give --plot PNG too")
    earlier = [read_record(p) for p in a.compare]
    for p, r in zip(a.compare, earlier):
        if r.get("kind") != "loadtest":
            raise UserError(f"--compare {p}: not a load-test record (kind '{r.get('kind')}')")
    rec = run_loadtest(a.url, rates=a.rate, requests=a.requests, duration=a.duration, data_dir=a.data_dir,
                       split=a.split, seed=a.seed, fmt=a.fmt, timeout=a.timeout, connections=a.connections,
                       capacity=a.capacity, slo_ms=a.slo_ms, label=a.label, progress=not a.no_progress)
    print(table(rec))
    if out is not None:
        write_json_atomic(out, rec)
        print(f"record: {out}")
    if plot is not None:
        print(f"plot: {plot_loadtest([*earlier, rec], plot)}")
    waits = max(u["connection_waits"] for u in rec["results"]["runs"])
    if waits:
        print(f"anycost: warning: up to {waits} requests per run waited for one of the {a.connections} connections: "
              f"the client, not the server, capped the requests in flight (their wait counts as latency); "
              f"raise --connections to let the server's queue see the load", file=sys.stderr)
    lost = sum(u["lost"] for u in rec["results"]["runs"])
    if lost:
        print(f"anycost: warning: {lost} requests are unaccounted for (a load-generator bug; please report it)",
              file=sys.stderr)
    return 0


def _f(v, spec: str) -> str:
    """``v`` formatted to ``spec`` (e.g. '8.1f'), or a right-aligned '-' of the same width when absent."""
    return format(v, spec) if v is not None else "-".rjust(int(spec.split(".")[0]))


def table(rec: dict) -> str:
    """One row per rate: what was offered, what came back, how fast and how accurate."""
    cfg, runs = rec["config"], rec["results"]["runs"]
    rel = cfg.get("capacity") is not None
    lines = [f"{cfg['label']}: {cfg['dataset']} {cfg['split']} images as {cfg['format']}, seed {rec.get('seed')}",
             f"{'rate/s':>8} " + (f"{'load':>5} " if rel else "") + f"{'sent':>6} {'ok':>6} {'503':>5} {'err':>4} "
             f"{'thru/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'acc %':>6} {'95% CI':>13} {'MACs (M)':>9}  mix"]
    for u in runs:
        lat, ci = u["latency_ms"], u["accuracy_ci95"]
        mix = " ".join(f"{k}:{v:.0%}" for k, v in sorted(u["operating_points"].items(), key=lambda kv: -kv[1])[:3])
        macs = None if u["macs_mean"] is None else u["macs_mean"] / 1e6
        lines.append(f"{u['rate']:>8g} " + (f"{u['offered_load']:>5.2f} " if rel else "") +
                     f"{u['sent']:>6} {u['ok']:>6} {u['rejected']:>5} {u['errors']:>4} {u['throughput']:>8.1f} "
                     f"{_f(lat['p50'], '8.1f')} {_f(lat['p95'], '8.1f')} {_f(lat['p99'], '8.1f')} "
                     f"{_f(u['accuracy'], '6.2f')} {(f'[{ci[0]:.1f}, {ci[1]:.1f}]' if ci else '-'):>13} "
                     f"{_f(macs, '9.3f')}  {mix}")
        if u["error_kinds"]:
            lines.append(f"{'':>8} errors: " + ", ".join(f"{k} x{v}" for k, v in u["error_kinds"].items()))
    return "\n".join(lines)
