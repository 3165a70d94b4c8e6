"""anycost plot: accuracy against MACs from records (never runs a model)."""

from __future__ import annotations

from ._common import EPILOG, UserError, check_output_file, label_globs, record_set

HELP = "plot accuracy vs MACs from records (never runs a model)"


def add(sub) -> None:
    pl = sub.add_parser("plot", help=HELP, epilog=EPILOG,
                        description="Draw top-1 accuracy against mean MACs per image (log axis) for every curve "
                                    "in the given records; static networks appear as markers joined per family.")
    pl.add_argument("records", nargs="+", help="eval/demo/reproduce record files")
    pl.add_argument("-o", "--output", required=True, help="image file, e.g. curves.png")
    pl.add_argument("--title", help="plot title (default: names the measured split)")
    pl.add_argument("--static-group", action="append", default=[], metavar="LABEL=METHOD_GLOB",
                    help="draw the static networks matching the glob as their own marker series named LABEL, "
                         "e.g. 'distilled=*_kd'; '|' separates alternatives, as in `anycost report` (repeatable)")
    pl.add_argument("--exclude", action="append", metavar="PATTERN",
                    help="leave out curves whose name matches this shell pattern, e.g. '*entropy*'; '|' separates "
                         "alternatives (repeatable)")
    pl.add_argument("--train-records", nargs="+", metavar="PATH", default=[],
                    help="train records (files, or folders of them): label each model with its training compute, "
                         "summed over every stage that made it (see `anycost report --headline --equal-compute`)")
    pl.set_defaults(func=run)


def run(a) -> int:
    from anycost.plot import drop_curves, group_static, load_curves, plot_curves

    groups = label_globs(a.static_group, "--static-group", "distilled=*_kd")
    check_output_file(a.output, "--output")
    curves = drop_curves(load_curves(a.records), a.exclude or [])
    try:
        curves = group_static(curves, groups)
    except ValueError as e:
        raise UserError(str(e)) from None
    compute = None
    if a.train_records:
        from anycost.report import training_compute_of

        compute = training_compute_of(curves, record_set(a.train_records))
    out = plot_curves(curves, a.output, a.title, compute=compute)
    print(f"wrote {out}")
    return 0
