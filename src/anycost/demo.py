"""``anycost demo``: the main job on the embedded default, offline, in about a minute.

It trains small models on scikit-learn's 8x8 digits (shipped with the package, no
download), measures each on the validation split through the measurement spine, prints
an accuracy-vs-MACs table and writes a plot and a JSON record. Every method family adds
its curve here as it lands.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from anycost.data import load_dataset
from anycost.eval import evaluate_curve
from anycost.plot import plot_curves
from anycost.records import make_record, write_json_atomic
from anycost.report import curves_table
from anycost.train import TrainConfig, load_recipe

# (display name, registered model, constructor kwargs): a static family spanning ~15x in MACs
STATIC_FAMILY = [
    ("resnet8-w4", "resnet8", {"widths": [4, 8, 16]}),
    ("resnet8-w8", "resnet8", {"widths": [8, 16, 32]}),
    ("resnet14-w8", "resnet14", {"widths": [8, 16, 32]}),
    ("resnet8-w16", "resnet8", {"widths": [16, 32, 64]}),
]


def run_demo(out_dir: str = "runs/demo", epochs: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    t_start = time.perf_counter()
    out = Path(out_dir)
    data = load_dataset("digits", split_seed=seed)
    base = TrainConfig.from_dict(load_recipe("demo"))
    base = replace(base, seed=seed, progress=False, epochs=epochs or base.epochs)
    curves, runs = [], {}
    for name, model, kw in STATIC_FAMILY:
        t0 = time.perf_counter()
        cfg = replace(base, model=model, model_kwargs=kw, out_dir=str(out / "runs" / name))
        from anycost.train import train
        from anycost.zoo import load_model_file

        train(cfg, data=data)
        net, _ = load_model_file(out / "runs" / name / "last.pt")
        c = evaluate_curve(net, data.val, data.mean, data.std, method=name, measured_on="val")
        c.family = "static ResNet"
        curves.append(c)
        runs[name] = {"seconds": time.perf_counter() - t0, "config": cfg.__dict__}
        if progress:
            p = c.points[0]
            print(f"  trained {name:<14} {p.accuracy:6.2f}%  {p.macs_mean / 1e6:7.3f} M MACs  ({runs[name]['seconds']:.1f}s)")
    rec = make_record("demo", {"dataset": "digits", "epochs": base.epochs, "seed": seed},
                      {"curves": [c.to_dict() for c in curves], "runs": runs,
                       "seconds": time.perf_counter() - t_start}, seed=seed, split=data.split_info)
    write_json_atomic(out / "demo_record.json", rec)
    plot_curves(curves, out / "demo.png", title="anycost demo: digits (8x8), validation split")
    if progress:
        print()
        print(curves_table(curves))
        print(f"\nrecord: {out / 'demo_record.json'}\nplot:   {out / 'demo.png'}  ({time.perf_counter() - t_start:.0f}s)")
    return rec
