"""anycost bench: wall-clock latency (batch 1) and throughput per operating point."""

from __future__ import annotations

import sys
import warnings

from ._common import (EPILOG, add_zoo_dir, check_device, check_output_file, check_same_input, eval_split, load_model,
                      model_label, set_threads)
from .eval import SPLITS

HELP = "wall-clock latency (batch 1) and throughput per operating point"


def add(sub) -> None:
    b = sub.add_parser("bench", help=HELP, epilog=EPILOG,
                       description="Times every operating point with warm-up, inference_mode and a fixed thread "
                                   "count; reports the realised speed-up against the full-cost setting (or "
                                   "--reference, timed in the same rounds) next to the MAC reduction. Give "
                                   "--data-dir so dynamic models route on real images.")
    b.add_argument("model", help="zoo name, checkpoint .pt or run folder")
    add_zoo_dir(b)
    b.add_argument("--reference", metavar="MODEL",
                   help="a model taking the same inputs (e.g. the static network to beat), timed at its full cost in "
                        "the same interleaved rounds; every speed-up is then against it")
    b.add_argument("--data-dir")
    b.add_argument("--split", default="val", choices=SPLITS, help="which images to time on (with --data-dir)")
    b.add_argument("--batch-size", type=int, default=256, help="batch for throughput (default 256)")
    b.add_argument("--latency-runs", type=int, default=100, help="timed batch-1 calls per point, over all rounds")
    b.add_argument("--batches", type=int, default=5, help="timed full batches per point and round")
    b.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds over all points, in alternating "
                   "order; each figure is the median over rounds (default 5)")
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--threads", type=int, help="torch CPU threads, fixed for the run (default: torch's current count)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    b.add_argument("--record", help="where to write the record (default runs/bench/NAME.json)")
    b.set_defaults(func=run)


def run(a) -> int:
    import torch

    from anycost.bench import BenchConfig, bench_model
    from anycost.data import BatchLoader
    from anycost.records import dumps, make_record, write_json_atomic
    from anycost.report import bench_table

    check_device(a.device)
    set_threads(a.threads)
    bcfg = BenchConfig(batch_size=a.batch_size, latency_runs=a.latency_runs, throughput_batches=a.batches,
                       warmup=a.warmup, threads=a.threads, rounds=a.rounds)  # checks the counts
    name = model_label(a.model)
    rec_path = check_output_file(a.record or f"runs/bench/{name}.json", "--record")
    model, cfg = load_model(a.model, a.device, a.zoo_dir)
    reference = None
    if a.reference:
        reference, rcfg = load_model(a.reference, a.device, a.zoo_dir)
        check_same_input(cfg, rcfg, a.model, a.reference)
    n = max(a.batch_size, a.latency_runs)
    ops = model.operating_points()
    if a.data_dir or cfg.get("dataset") == "digits":
        ds, _ = eval_split(cfg, None, a.data_dir, a.split)
        x, _ = next(iter(BatchLoader(ds, min(n, len(ds)), cfg["mean"], cfg["std"], device=a.device)))
        inputs = f"{a.split} split"
    else:
        if len(ops) > 1:
            print("anycost: warning: no --data-dir: routing on random inputs does not show real per-input costs",
                  file=sys.stderr)
        x = torch.randn(n, *cfg["input_size"], generator=torch.Generator().manual_seed(0)).to(a.device)
        inputs = "random normal"
    with warnings.catch_warnings():  # said once below, in the CLI's own words
        warnings.simplefilter("ignore")
        res = bench_model(model, x, ops, bcfg, reference, model_label(a.reference) if a.reference else "reference")
    res["inputs"] = inputs
    rec = make_record("bench", {"model": a.model, "reference": a.reference, **bcfg.__dict__, "inputs": inputs},
                      {"bench": res, "method": name},
                      device=a.device, checkpoint={"path": cfg.get("source"), "sha256": cfg.get("sha256")})
    write_json_atomic(rec_path, rec)
    if a.json:
        print(dumps(dict(res, model=name, record=str(rec_path), hardware=rec["hardware"])))
    else:
        print(bench_table(name, res))
        for u in res["unsteady"]:
            print(f"anycost: warning: unsteady timing: {u['figure']} of '{u['operating_point']}' spread "
                  f"{u['spread']:.0%} across rounds (over 20 %); rerun on a quiet machine or with more --rounds",
                  file=sys.stderr)
        print(f"\ninputs: {inputs}; hardware: {rec['hardware']['cpu']}, torch {rec['hardware']['torch']}\nrecord: {rec_path}")
    return 0
