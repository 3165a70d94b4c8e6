"""anycost eval: accuracy and per-input MACs at every shipped operating point, on a split."""

from __future__ import annotations

import sys
import time

from ._common import (EPILOG, UserError, add_zoo_dir, check_device, check_input_size, check_output_file, eval_split,
                      load_model, model_label, set_threads)

HELP = "measure accuracy and per-input MACs at every operating point"
SPLITS = ["val", "calib", "holdout", "test", "train"]


def add(sub) -> None:
    e = sub.add_parser("eval", help=HELP, epilog=EPILOG,
                       description="Evaluate a zoo model (e.g. resnet20.cifar10), a checkpoint or a run folder with "
                                   "real routing: one point for a static model, one per shipped operating point for "
                                   "a dynamic one. Writes a JSON record.")
    e.add_argument("model", help="zoo name, checkpoint .pt or run folder")
    add_zoo_dir(e)
    e.add_argument("--data-dir", help="dataset folder (CIFAR: the batches folder or its parent)")
    e.add_argument("--dataset", help="override the dataset the model was trained on")
    e.add_argument("--download", action="store_true", help="download CIFAR into --data-dir first (needs internet; never implicit)")
    e.add_argument("--split", choices=SPLITS, default="val",
                   help="val: carved from the training files as in training (calib/holdout: its first/second half); "
                        "test: needs only test_batch + batches.meta")
    e.add_argument("--op", action="append", metavar="NAME",
                   help="evaluate only this shipped operating point (repeatable; default: every shipped point)")
    e.add_argument("--limit", type=int, metavar="N", help="only the first N images of the split (quick checks)")
    e.add_argument("--real-routing", action="store_true",
                   help="route every image for real at every point (default: a family's exact fast path, e.g. one "
                        "cached pass for multi-exit models and cascades, checked against real routing on --verify images)")
    e.add_argument("--verify", type=int, default=1000, metavar="N",
                   help="images (spread over the split) routed for real at every point to check the fast path; "
                        "a difference is an error (default 1000; 0: no check)")
    e.add_argument("--batch-size", type=int, default=1000)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    e.add_argument("--json", action="store_true", help="print one JSON object (model, split, points, ...)")
    e.add_argument("--record", help="where to write the record (default runs/eval/NAME-SPLIT.json)")
    e.add_argument("--no-record", action="store_true", help="do not write a record")
    e.set_defaults(func=run)


def run(a) -> int:
    import torch

    from anycost.eval import evaluate_curve, fast_path
    from anycost.records import dumps, make_record, write_json_atomic
    from anycost.report import curves_table

    name = model_label(a.model)
    rec_path = a.record or f"runs/eval/{name}-{a.split}.json"
    check_args(a, rec_path)
    model, cfg = load_model(a.model, a.device, a.zoo_dir)
    if a.download:
        from anycost.data import download_cifar

        if not a.data_dir:
            raise UserError("--download needs --data-dir (where to put the files)")
        a.data_dir = str(download_cifar(a.data_dir, a.dataset or cfg.get("dataset") or "cifar10"))
    ds, dataset = eval_split(cfg, a.dataset, a.data_dir, a.split)
    if a.limit is not None and a.limit < len(ds.labels):
        ds = ds.subset(torch.arange(a.limit))
    check_input_size(ds, cfg, a.split)
    ops = model.operating_points()
    if a.op:
        ops = [model.find_op(n) for n in a.op]
    calibrated_on = ops[0].split if ops[0].calibrated else None
    t0 = time.perf_counter()
    with torch.inference_mode():
        curve = evaluate_curve(model, ds, cfg["mean"], cfg["std"], ops, method=name, calibrated_on=calibrated_on,
                               measured_on=a.split, batch_size=a.batch_size, device=a.device,
                               progress=sys.stderr.isatty(), real_routing=a.real_routing, verify=a.verify)
    seconds = time.perf_counter() - t0
    how = "real routing" if a.real_routing or not fast_path(model) else \
        f"one cached pass, checked against real routing on {min(a.verify, len(ds.labels))} images" if a.verify else \
        "one cached pass, unchecked"
    print(f"anycost: evaluated {len(ds.labels)} images at {len(ops)} point{'s' if len(ops) != 1 else ''} "
          f"({how}) in {seconds:.1f} s", file=sys.stderr)
    curve.family = model.family
    if calibrated_on and calibrated_on == a.split and len(ops) > 1:
        print(f"anycost: warning: operating points were chosen on '{calibrated_on}' and are measured on it too; "
              "these numbers are optimistic", file=sys.stderr)
    rec = make_record("eval", {"model": a.model, "dataset": dataset, "data_dir": a.data_dir, "split": a.split,
                               "batch_size": a.batch_size, "ops": a.op, "limit": a.limit, "real_routing": a.real_routing,
                               "verify": a.verify},
                      {"curve": curve.to_dict(), "seconds": seconds, "method": how, "peak_rss_mb": peak_rss_mb()},
                      device=a.device,
                      checkpoint={"path": cfg.get("source"), "sha256": cfg.get("sha256")})
    if not a.no_record:
        write_json_atomic(rec_path, rec)
    if a.json:
        pts = [{"accuracy": p.accuracy, "top5": p.top5, "macs_mean": p.macs_mean, "macs_median": p.macs_median,
                "macs_p95": p.macs_p95, "path_fractions": p.path_fractions, "operating_point": p.operating_point.to_dict()}
               for p in curve.points]
        print(dumps({"model": name, "family": model.family, "split": a.split, "dataset": dataset,
                     "n": curve.points[0].n, "calibrated_on": calibrated_on, "measured_on": a.split,
                     "checkpoint_sha256": cfg.get("sha256"), "points": pts,
                     "record": None if a.no_record else rec_path}))
    else:
        print(curves_table([curve]))
        if not a.no_record:
            print(f"\nrecord: {rec_path}")
    return 0


def check_args(a, rec_path: str) -> None:
    """Every flag that can be wrong, checked before the model loads: a mistake costs no work."""
    check_device(a.device)
    set_threads(a.threads)
    if a.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1 images, got {a.batch_size}")
    if a.limit is not None and a.limit <= 0:
        raise UserError(f"--limit must be a positive number of images, got {a.limit}")
    if a.verify < 0:
        raise UserError(f"--verify must be >= 0 images, got {a.verify}")
    if not a.no_record:
        check_output_file(rec_path, "--record")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (None where the OS does not say)."""
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return kb / 1024 if sys.platform != "darwin" else kb / 2**20
    except (ImportError, OSError):
        return None
