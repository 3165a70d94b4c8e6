"""anycost report: Markdown tables from records."""

from __future__ import annotations

import math
import shlex

from ._common import EPILOG, UserError, label_globs, record_set

HELP = "Markdown tables from records"


def add(sub) -> None:
    r = sub.add_parser("report", help=HELP, epilog=EPILOG,
                       description="Print the curves (accuracy, top-5, mean and p95 MACs, calibration and "
                                   "measurement splits) and benchmarks in the given records as Markdown tables.")
    r.add_argument("records", nargs="+", help="train, eval, calibrate, bench, demo or reproduce record files")
    r.add_argument("--frontier", action="store_true", help="only each curve's Pareto points")
    r.add_argument("--summary", action="store_true", help="one row per dynamic curve instead of every point: its "
                   "cheapest point within each --max-loss of the reference, and the MAC reduction there")
    r.add_argument("--reference", metavar="METHOD", help="with --summary: the curve (method name, e.g. "
                   "resnet20.cifar10) whose full cost is the reference (default: each curve's own full cost)")
    r.add_argument("--max-loss", type=float, nargs="+", default=[0.5, 1.0], metavar="PT",
                   help="with --summary: accuracy losses in points (default: 0.5 1.0)")
    r.add_argument("--gap", metavar="METHOD_GLOB", help="instead of every point: for each point of the curves "
                   "matching this glob (e.g. 'lcnet_*'; '|' separates alternatives), the accuracy of each --gap-to group's frontier at equal "
                   "mean MACs (interpolated linearly) and the gap in points")
    r.add_argument("--headline", action="store_true", help="with --gap and --reference: one row per curve, its "
                   "cheapest point within the first --max-loss of the reference's accuracy (else its best point), "
                   "with 95 %% intervals and a tie/above/below verdict against each --gap-to frontier")
    r.add_argument("--gap-to", metavar="LABEL=METHOD_GLOB", action="append", default=[],
                   help="with --gap, repeatable: a group of curves merged into one frontier, e.g. 'L-Net=lnet_*'")
    r.add_argument("--train-records", nargs="+", metavar="PATH", default=[],
                   help="train records (files, or folders of them) that trace each curve's training: with --headline, "
                        "adds each row's training compute, summed over every stage (init_from chain), teacher passes "
                        "included")
    r.add_argument("--equal-compute", metavar="METHOD_GLOB", help="with --headline and --train-records: compare each "
                   "row with the frontier of only those static curves matching this glob that had at least its "
                   "training compute and the same teacher (e.g. 'resnet*')")
    r.add_argument("--into", metavar="FILE", help="write the tables, and this command, between the "
                   "'<!-- anycost:SECTION:begin -->' and ':end -->' markers of a Markdown file (e.g. README.md)")
    r.add_argument("--section", default="results", help="marker name for --into (default: results)")
    r.set_defaults(func=run)


def run(a) -> int:
    from anycost.plot import curves_from_record
    from anycost.records import RecordError, read_record
    from anycost.report import (bench_table, curves_table, gap_table, headline_table, loadtest_table, summary_table,
                                train_table, training_compute_of)

    bad = [x for x in a.max_loss if not (math.isfinite(x) and x >= 0)]
    if bad:
        raise UserError(f"--max-loss takes accuracy losses in points, finite and >= 0, got {bad[0]}")
    if not (a.summary or a.headline) and (a.reference or a.max_loss != [0.5, 1.0]):
        raise UserError("--reference and --max-loss belong to --summary or --headline")
    if a.headline and not (a.gap and a.reference):
        raise UserError("--headline needs --gap METHOD_GLOB, --gap-to LABEL=METHOD_GLOB and --reference METHOD")
    if bool(a.gap) != bool(a.gap_to):
        raise UserError("--gap METHOD_GLOB needs at least one --gap-to LABEL=METHOD_GLOB, and the reverse")
    if (a.train_records or a.equal_compute) and not a.headline:
        raise UserError("--train-records and --equal-compute belong to --headline")
    if a.equal_compute and not a.train_records:
        raise UserError("--equal-compute needs --train-records: the training compute of every curve")
    groups = label_globs(a.gap_to, "--gap-to", "L-Net=lnet_*")
    curves, benches, trains, loads = [], [], [], []
    for p in a.records:
        rec = read_record(p)
        found = curves_from_record(rec)
        if rec.get("kind") == "bench":
            benches.append((rec["results"].get("method", p), rec["results"]["bench"]))
        elif rec.get("kind") == "train":
            trains.append(rec)
        elif rec.get("kind") == "loadtest":
            loads.append(rec)
        elif not found:
            raise RecordError(f"{p}: record has neither a curve, a benchmark nor a training history")
        curves.extend(found)
    parts = [train_table(trains)] if trains else []
    if curves and a.headline:
        compute = training_compute_of(curves, record_set(a.train_records)) if a.train_records else None
        parts.append(headline_table(curves, a.gap, groups, a.reference, a.max_loss[0], compute, a.equal_compute))
    elif curves and a.gap:
        parts.append(gap_table(curves, a.gap, groups))
    elif curves and a.summary:
        parts.append(summary_table(curves, a.reference, a.max_loss))
    elif curves:
        parts.append(curves_table(curves, frontier_only=a.frontier))
    parts += [bench_table(m, b) for m, b in benches]
    parts += [loadtest_table(loads)] if loads else []
    text = "\n\n".join(parts)
    if a.into:
        from anycost.report import replace_section

        opts = (["--frontier"] if a.frontier else []) + (["--summary"] if a.summary else [])
        opts += ["--headline"] if a.headline else []
        opts += (["--reference", a.reference] if a.reference else [])
        opts += (["--max-loss", *map(str, a.max_loss)] if (a.summary or a.headline) and a.max_loss != [0.5, 1.0] else [])
        opts += (["--gap", a.gap] + [x for g in a.gap_to for x in ("--gap-to", g)] if a.gap else [])
        opts += (["--train-records", *a.train_records] if a.train_records else [])
        opts += (["--equal-compute", a.equal_compute] if a.equal_compute else [])
        typed = [x for x in getattr(a, "argv", []) if x != "--traceback"]
        cmd = shlex.join(["anycost", *typed]) if typed else \
            shlex.join(["anycost", "report", *a.records, *opts, "--into", a.into, "--section", a.section])
        replace_section(a.into, a.section, f"_Generated from records by `{cmd}`._\n\n{text}")
        print(f"wrote section '{a.section}' of {a.into}")
    else:
        print(text)
    return 0
