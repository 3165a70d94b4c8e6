"""``anycost demo``: the main job on the embedded default, offline, in about a minute.

It trains small models of every family on scikit-learn's 8x8 digits (shipped with the
package, no download), calibrates each through the one model contract
(``model.calibrate(data, "calib")``: the family's own search, frontier kept), measures the
shipped points with real routing on the other half of the validation split ('holdout'),
prints an accuracy-vs-MACs table and writes a plot and a JSON record:

* static ResNets of several widths/depths (markers);
* early exit: a jointly trained multi-exit ResNet, and network selection over three of the
  static ResNets (Bolukbasi et al.);
* CNMM: one convolutional neural mixture model, pruned to many budgets without re-training;
* LC-Net: layer skipping, channel skipping, both, and the budget-conditioned variant.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from anycost.data import load_dataset
from anycost.eval import evaluate_curve
from anycost.models import create_model
from anycost.models.cascade import Cascade
from anycost.plot import plot_curves
from anycost.records import make_record, write_json_atomic
from anycost.report import curves_table
from anycost.train import TrainConfig, load_recipe, train

MEASURE, CALIB = "holdout", "calib"


@dataclass
class Job:
    label: str  # display name
    family: str  # plot / table grouping
    arch: str | None = None  # registered model to train
    kwargs: dict = field(default_factory=dict)
    members: list[str] = field(default_factory=list)  # a cascade over earlier jobs' networks
    search: dict = field(default_factory=dict)  # keywords of the family's calibration search


_LC = {"widths": [8, 16, 32], "target": 0.4, "lam": 4.0}
JOBS = [
    Job("resnet8-w4", "static ResNet", "resnet8", {"widths": [4, 8, 16]}),
    Job("resnet8-w8", "static ResNet", "resnet8", {"widths": [8, 16, 32]}),
    Job("resnet14-w8", "static ResNet", "resnet14", {"widths": [8, 16, 32]}),
    Job("resnet8-w16", "static ResNet", "resnet8", {"widths": [16, 32, 64]}),
    Job("multi-exit resnet8-w16", "early exit", "test_ee_resnet", {"widths": [16, 32, 64]}),
    Job("selection", "network selection", members=["resnet8-w4", "resnet8-w8", "resnet8-w16"]),
    Job("cnmm", "cnmm", "test_cnmm", {"widths": [16, 32, 64]},
        search={"mechanisms": ["edges", "channels", "both"], "fractions": [1.0, 0.7, 0.5, 0.35, 0.25, 0.15],
                "bn_batches": 5}),
    Job("L-Net", "lcnet", "test_lcnet", dict(_LC, layers=True, channels=False)),
    Job("C-Net", "lcnet", "test_lcnet", dict(_LC, layers=False, channels=True)),
    Job("LC-Net", "lcnet", "test_lcnet", dict(_LC, layers=True, channels=True)),
    Job("LC-Net budget-conditioned", "lcnet", "test_lcnet", dict(_LC, layers=True, channels=True, conditioned=True)),
]


def _train(base: TrainConfig, out: Path, job: Job, data):
    torch.manual_seed(base.seed)
    net = create_model(job.arch, num_classes=data.num_classes, in_chans=data.input_size[0], **job.kwargs)
    train(replace(base, model=job.arch, model_kwargs=job.kwargs, out_dir=str(out / "runs" / job.label.replace(" ", "-"))),
          model=net, data=data, overwrite=True)  # scratch runs: a second demo into one --out starts afresh
    return net.eval()


def run_demo(out_dir: str = "runs/demo", epochs: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    t_start = time.perf_counter()
    out = Path(out_dir)
    data = load_dataset("digits", split_seed=seed)
    base = TrainConfig.from_dict(load_recipe("demo"))
    base = replace(base, seed=seed, progress=False, epochs=epochs or base.epochs)
    say = print if progress else (lambda *a, **k: None)
    curves, runs, nets = [], {}, {}
    hold = data.get(MEASURE)
    for job in JOBS:
        t0 = time.perf_counter()
        if job.members:
            model = Cascade([nets[m] for m in job.members], data.input_size, job.members)
        else:
            model = _train(base, out, job, data)
        nets[job.label] = model
        ops = model.calibrate(data, CALIB, batch_size=256, **job.search)
        c = evaluate_curve(model, hold, data.mean, data.std, ops, method=job.label, calibrated_on=CALIB,
                           measured_on=MEASURE)
        c.family = job.family
        curves.append(c)
        runs[job.label] = {"seconds": time.perf_counter() - t0, "operating_points": len(ops)}
        best = max(c.points, key=lambda p: p.accuracy)
        say(f"  {job.label:<26} {job.family:<18} {len(ops):>2} points, best {best.accuracy:6.2f}% at "
            f"{best.macs_mean / 1e6:6.3f} M MACs  ({runs[job.label]['seconds']:.1f}s)")
    rec = make_record("demo", {"dataset": "digits", "epochs": base.epochs, "seed": seed, "calibrated_on": CALIB,
                               "measured_on": MEASURE},
                      {"curves": [c.to_dict() for c in curves], "runs": runs, "seconds": time.perf_counter() - t_start},
                      seed=seed, split=data.split_info)
    write_json_atomic(out / "demo_record.json", rec)
    plot_curves(curves, out / "demo.png", title=f"anycost demo: digits (8x8), measured on {MEASURE}")
    if progress:
        print("\nPareto points of each curve (all points are in the record):\n")
        print(curves_table(curves, frontier_only=True))
        print(f"\nrecord: {out / 'demo_record.json'}\nplot:   {out / 'demo.png'}  ({time.perf_counter() - t_start:.0f}s)")
    return rec
