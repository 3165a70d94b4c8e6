"""``anycost demo``: the main job on the embedded default, offline, in about a minute.

It trains small models on scikit-learn's 8x8 digits (shipped with the package, no
download), chooses every operating point on the 'calib' half of the validation split and
measures every model on the other half ('holdout'), prints an accuracy-vs-MACs table and
writes a plot and a JSON record. Each method family adds its curves here:

* static ResNets of several widths/depths (markers);
* early exit: a jointly trained multi-exit ResNet with threshold, learned and oracle
  policies, and network selection over the static members (Bolukbasi et al.);
* CNMM: one convolutional neural mixture model, pruned to many budgets without
  re-training, by edges, by channels and both, with and without BN re-estimation;
* LC-Net: layer skipping, channel skipping, both, and the budget-conditioned variant,
  each swept over its decision thresholds (or budgets).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from anycost.calibrate import bn_statistics_loader, cache_split, calibrate
from anycost.data import load_dataset
from anycost.eval import evaluate_curve
from anycost.models import create_model
from anycost.models.cnmm import MECHANISMS, pruning_operating_points
from anycost.plot import plot_curves
from anycost.records import make_record, write_json_atomic
from anycost.report import curves_table
from anycost.selection import Cascade
from anycost.train import TrainConfig, load_recipe, train
from anycost.zoo import train_augmentation

# (display name, registered model, constructor kwargs): a static family spanning ~15x in MACs
STATIC_FAMILY = [
    ("resnet8-w4", "resnet8", {"widths": [4, 8, 16]}),
    ("resnet8-w8", "resnet8", {"widths": [8, 16, 32]}),
    ("resnet14-w8", "resnet14", {"widths": [8, 16, 32]}),
    ("resnet8-w16", "resnet8", {"widths": [16, 32, 64]}),
]
CASCADE = ["resnet8-w4", "resnet8-w8", "resnet8-w16"]
MEASURE, CALIB = "holdout", "calib"


def _train(base: TrainConfig, out: Path, name: str, model: str, kw: dict, data):
    torch.manual_seed(base.seed)
    net = create_model(model, num_classes=data.num_classes, in_chans=data.input_size[0], **kw)
    train(replace(base, model=model, model_kwargs=kw, out_dir=str(out / "runs" / name)), model=net, data=data)
    return net.eval()


def run_demo(out_dir: str = "runs/demo", epochs: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    t_start = time.perf_counter()
    out = Path(out_dir)
    data = load_dataset("digits", split_seed=seed)
    base = TrainConfig.from_dict(load_recipe("demo"))
    base = replace(base, seed=seed, progress=False, epochs=epochs or base.epochs)
    curves, runs, nets = [], {}, {}
    say = print if progress else (lambda *a, **k: None)
    hold = data.get(MEASURE)

    say("static ResNets")
    for name, model, kw in STATIC_FAMILY:
        t0 = time.perf_counter()
        nets[name] = _train(base, out, name, model, kw, data)
        c = evaluate_curve(nets[name], hold, data.mean, data.std, method=name, measured_on=MEASURE)
        c.family = "static ResNet"
        curves.append(c)
        runs[name] = {"seconds": time.perf_counter() - t0}
        p = c.points[0]
        say(f"  {name:<16} {p.accuracy:6.2f}%  {p.macs_mean / 1e6:7.3f} M MACs  ({runs[name]['seconds']:.1f}s)")

    say("early exit (Bolukbasi et al.): multi-exit ResNet, policies chosen on calib")
    t0 = time.perf_counter()
    ee = _train(base, out, "ee-resnet8-w16", "test_ee_resnet", {"widths": [16, 32, 64]}, data)
    res = calibrate(ee, cache_split(ee, data, CALIB), cache_split(ee, data, MEASURE), metrics=("maxprob",), name="multi-exit")
    curves += [c for c in res["curves"] if "fixed exit" not in c.method]
    runs["ee-resnet8-w16"] = {"seconds": time.perf_counter() - t0}
    say(f"  multi-exit resnet8-w16 trained and calibrated ({runs['ee-resnet8-w16']['seconds']:.1f}s)")

    say("network selection: " + " -> ".join(CASCADE))
    casc = Cascade([nets[n] for n in CASCADE], data.input_size, CASCADE)
    res = calibrate(casc, cache_split(casc, data, CALIB), cache_split(casc, data, MEASURE), metrics=("maxprob",),
                    jump=True, name="selection")
    curves += [c for c in res["curves"] if "learned" in c.method or "threshold" in c.method]

    say("CNMM (Ruiz & Verbeek): one mixture, pruned to many budgets")
    t0 = time.perf_counter()
    cn = _train(base, out, "cnmm", "test_cnmm", {"widths": [16, 32, 64]}, data)
    # BN statistics re-estimated on training batches augmented as the demo recipe trains (crop, no flips)
    bn_loader = bn_statistics_loader(data, data.mean, data.std, train_augment=train_augmentation(asdict(base)), batch_size=128)
    res = pruning_operating_points(cn, fractions=(1.0, 0.7, 0.5, 0.35, 0.25, 0.15), mechanisms=MECHANISMS,
                                   bn_loader=bn_loader, bn_batches=5)
    for mech, ops in res["ops"].items():
        c = evaluate_curve(cn, hold, data.mean, data.std, ops, method=f"cnmm: {mech}", measured_on=MEASURE)
        c.family = "cnmm"
        curves.append(c)
    runs["cnmm"] = {"seconds": time.perf_counter() - t0, "unreachable": res["unreachable"]}
    say(f"  cnmm trained once, pruned to {sum(len(v) for v in res['ops'].values())} operating points "
        f"({runs['cnmm']['seconds']:.1f}s)")

    say("LC-Net (Xia et al.): per-input layer and channel skipping")
    t0 = time.perf_counter()
    for label, kw in (("L-Net", {"layers": True, "channels": False}), ("C-Net", {"layers": False, "channels": True}),
                      ("LC-Net", {"layers": True, "channels": True}),
                      ("LC-Net budget-conditioned", {"layers": True, "channels": True, "conditioned": True})):
        kw = dict(kw, widths=[8, 16, 32], target=0.4, lam=4.0)
        net = _train(base, out, label.replace(" ", "-"), "test_lcnet", kw, data)
        c = evaluate_curve(net, hold, data.mean, data.std, net.operating_points(), method=label, measured_on=MEASURE)
        c.family = "lcnet"
        curves.append(c)
    runs["lcnet"] = {"seconds": time.perf_counter() - t0}
    say(f"  L-Net, C-Net, LC-Net and the budget-conditioned LC-Net trained ({runs['lcnet']['seconds']:.1f}s)")

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
