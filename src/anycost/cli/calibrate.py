"""anycost calibrate: choose a model's operating points on one split, measure them on another."""

from __future__ import annotations

import sys
import time

from ._common import EPILOG, UserError, load_data, load_model, model_label, parse_set

HELP = "choose operating points on one split, measure them on another"


def add(sub) -> None:
    c = sub.add_parser("calibrate", help=HELP, epilog=EPILOG,
                       description="Run the model family's own search for operating points (thresholds and learned "
                                   "policies for exits and cascades, pruned networks for a CNMM, gate thresholds for "
                                   "an LC-Net) on --calib-split, keep the accuracy-vs-MACs frontier, and measure it "
                                   "with real routing on --split. --budget also reports the point (or the mixture of "
                                   "two) that at_budget picks. --save stores the calibrated model as a zoo entry in the "
                                   "user zoo ($ANYCOST_HOME/zoo, default ~/.cache/anycost/zoo) or --zoo-dir; shipped "
                                   "entries are never replaced, and a taken name needs --overwrite.")
    c.add_argument("model", nargs="?", help="zoo name, checkpoint .pt or run folder")
    c.add_argument("--cascade", nargs="+", metavar="MODEL", help="network selection over these classifiers, cheapest first")
    c.add_argument("--data-dir")
    c.add_argument("--dataset", help="override the dataset recorded with the model")
    c.add_argument("--calib-split", default="calib", help="where the points are chosen (default: calib, the first half of val)")
    c.add_argument("--split", default="holdout", help="where they are measured (default: holdout, the second half of val)")
    c.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a keyword of the family's search, repeatable (e.g. metrics='[\"maxprob\"]' for exits, "
                        "mechanisms='[\"edges\"]' for a CNMM); see the family's candidate_operating_points")
    c.add_argument("--budget", type=float, help="also report what at_budget picks for this mean-MAC budget")
    c.add_argument("--save", metavar="ARCH.TAG",
                   help="store the calibrated model under this name ([a-z0-9_.-], starting with the model's arch) "
                        "in --zoo-dir, else the user zoo")
    c.add_argument("--overwrite", action="store_true", help="let --save replace an entry of yours with that name "
                                                            "(shipped entries are never replaced)")
    c.add_argument("--zoo-dir", help="zoo folder: where zoo names are looked up first, and where --save writes "
                                     "(default: the user zoo)")
    c.add_argument("--batch-size", type=int, default=500)
    c.add_argument("--device", default="cpu")
    c.add_argument("--record", help="record path (default runs/calibrate/NAME.json)")
    c.set_defaults(func=run)


def run(a) -> int:
    import torch

    from anycost.eval import evaluate_curve
    from anycost.records import make_record, write_json_atomic
    from anycost.report import curves_table

    if a.calib_split == a.split:
        raise UserError("--calib-split and --split must differ: choosing and measuring on the same images is optimistic")
    if a.budget is not None:  # before the long calibration, not after it
        from anycost.core import check_budget

        check_budget(a.budget)
    if a.cascade:
        from anycost.zoo import build_cascade

        model = build_cascade(a.cascade).to(a.device).eval()
        cfg = dict(model.pretrained_cfg)
        name = "cascade(" + ",".join(model_label(m) for m in a.cascade) + ")"
    elif a.model:
        model, cfg = load_model(a.model, a.device, a.zoo_dir)
        name = model_label(a.model)
    else:
        raise UserError("give a MODEL or --cascade M1 M2 ...")
    if a.save:
        _check_save(model, a)
    data, dataset = load_data(cfg, a.dataset, a.data_dir)
    options = parse_set(a.option, "--option")
    t0 = time.perf_counter()
    try:
        ops = model.calibrate(data, a.calib_split, batch_size=a.batch_size, progress=sys.stderr.isatty(), **options)
    except TypeError as e:  # an --option the family's search does not take
        raise UserError(f"--option: {e}") from None
    with torch.inference_mode():
        curve = evaluate_curve(model, data.get(a.split), data.mean, data.std, ops, method=name,
                               calibrated_on=a.calib_split, measured_on=a.split, batch_size=a.batch_size, device=a.device,
                               progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    print(f"anycost: calibrated {len(ops)} points on '{a.calib_split}' and measured them on '{a.split}' "
          f"in {seconds:.1f} s", file=sys.stderr)
    curve.family = model.family
    budget = None
    if a.budget is not None:
        choice = model.at_budget(a.budget)
        budget = {"target_macs": a.budget, "choice": choice.name, "expected_macs": choice.macs,
                  "expected_accuracy": choice.accuracy, "chosen_on": a.calib_split}
        print(f"budget {a.budget / 1e6:.3f} M MACs: {choice.name}, {choice.accuracy:.2f}% at "
              f"{choice.macs / 1e6:.3f} M MACs on {a.calib_split}")
    rec = make_record("calibrate", {"model": a.model, "cascade": a.cascade, "dataset": dataset, "calib_split": a.calib_split,
                                    "split": a.split, "options": options, "budget": a.budget},
                      {"curves": [curve.to_dict()], "operating_points": [o.to_dict() for o in ops], "budget": budget,
                       "seconds": seconds},
                      device=a.device)
    rec_path = a.record or f"runs/calibrate/{name}.json"
    write_json_atomic(rec_path, rec)
    if a.save:
        from anycost.zoo import save_model

        out = save_model(model, a.save, a.zoo_dir, overwrite=a.overwrite)
        print(f"saved {len(ops)} operating points with the model: {out}")
    print(curves_table([curve]))
    print(f"\nchosen on: {a.calib_split}; measured on: {a.split}; record: {rec_path}")
    return 0


def _check_save(model, a) -> None:
    """Refuse a bad --save name before calibrating, saying where it would have gone."""
    from anycost.zoo import check_save, user_dir

    try:
        check_save(model, a.save, a.zoo_dir, a.overwrite)
    except ValueError as e:
        where = a.zoo_dir or f"the user zoo {user_dir()}"
        raise UserError(f"--save: {e} (target: {where}; --zoo-dir DIR saves elsewhere)") from None
