"""``anycost reproduce``: the whole comparison from one command.

For every entry of a suite (static ResNets, early exit, network selection, CNMM, LC-Net),
use the zoo entry, or (without ``--reuse``) train it, calibrate it through the model
contract (``model.calibrate(data, "calib")``) and add it to the zoo folder (default: the user
zoo, ``$ANYCOST_HOME/zoo``; never the package or the repository's ``zoo/`` unless given
that folder). Then measure
every entry on the test split when its files exist, else on the validation holdout, time it
at batch 1 and in batches, and write one combined record, an accuracy-vs-MACs plot, a
wall-clock plot and a Markdown table. Entries that are neither in the zoo nor trainable
(``--reuse``) are listed as missing, never silently dropped. Training resumes where it
stopped. Nothing here knows which family an entry is.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from anycost.bench import BenchConfig, bench_model
from anycost.data import BatchLoader, has_cifar_split, load_dataset
from anycost.eval import evaluate_curve
from anycost.plot import plot_curves, plot_speedups
from anycost.records import make_record, write_json_atomic
from anycost.report import curves_table


@dataclass
class Entry:
    name: str  # zoo name, arch.tag
    family: str  # plot / table grouping
    kwargs: dict = field(default_factory=dict)
    init_from: str | None = None
    members: list[str] = field(default_factory=list)  # cascades
    epochs: int | None = None  # at most this many (heads-only fine-tuning needs fewer); None: the recipe's
    train_kw: dict = field(default_factory=dict)  # other TrainConfig fields that differ from the recipe (lr, amp)
    teacher: str | None = None  # zoo name of an earlier entry to distil from (weight train_kw["distill"], default 1)
    search: dict = field(default_factory=dict)  # keywords of the family's calibration search

    @property
    def arch(self) -> str:
        return self.name.split(".", 1)[0]


_BRANCH = {"exits": "2+5+8+13+17", "head": "branch", "distill": 0.5, "distill_temp": 3.0}
_CNMM = {"cost_weight": 0.1, "slim_l1": 0.1}


def _static(depths, tag):
    return [Entry(f"resnet{d}.{tag}", "static ResNet") for d in depths]


SUITES = {
    # our choices for CIFAR-10 with the cpu30 recipe (see the docs)
    "cifar10": _static([8, 14, 20, 32, 56], "cpu30_cifar10") + [
        Entry("ee_resnet20.heads_cifar10", "early exit", {"mode": "heads"}, "resnet20.cpu30_cifar10", epochs=10),
        Entry("ee_resnet20.cifar10", "early exit", {"mode": "joint", "exits": "stage+1+3", "distill": 0.5,
                                                    "distill_temp": 3.0}),
        Entry("cascade.r8_r14_r20_cifar10", "network selection",
              members=["resnet8.cpu30_cifar10", "resnet14.cpu30_cifar10", "resnet20.cpu30_cifar10"]),
        # 14 epochs: a CNMM epoch costs more than a ResNet-20 one, so this stays within
        # ResNet-20's 30-epoch training time
        Entry("cnmm_d8.cifar10", "cnmm", dict(_CNMM, keep_max=0.7), epochs=14),
        # fine-tunes of the zoo ResNet-20 with the recipe's own schedule (peak lr 0.1) and cost weight 2
        *[Entry(f"{v}_resnet20.cifar10", "lcnet", {"target": 0.5}, "resnet20.cpu30_cifar10", epochs=5)
          for v in ("lnet", "cnet", "lcnet")],
        Entry("lcnet_cond_resnet20.cifar10", "lcnet", {}, "resnet20.cpu30_cifar10", epochs=5),
        Entry("ee_resnet20.stage_cifar10", "early exit", {"mode": "joint", "exits": "stage", "distill": 0.5,
                                                          "distill_temp": 3.0}),
        Entry("ee_resnet56.heads_cifar10", "early exit", {"mode": "heads", "exits": "every3"}, "resnet56.cpu30_cifar10",
              epochs=10),
        # side-branch exits at blocks 2, 5, 8, 13, 17 of 27 on the frozen zoo ResNet-56, then a joint fine-tune
        Entry("ee_resnet56.branch_cifar10", "early exit", dict(_BRANCH, mode="heads"), "resnet56.cpu30_cifar10",
              epochs=15, train_kw={"amp": "bf16"}),
        Entry("ee_resnet56.branch_joint_cifar10", "early exit", dict(_BRANCH, mode="joint"),
              "ee_resnet56.branch_cifar10", epochs=10, train_kw={"amp": "bf16", "lr": 0.03}),
        Entry("cascade.r8_r20_r56_cifar10", "network selection",
              members=["resnet8.cpu30_cifar10", "resnet20.cpu30_cifar10", "resnet56.cpu30_cifar10"]),
        Entry("cascade.r8_r14_r20_r32_r56_cifar10", "network selection",
              members=[f"resnet{d}.cpu30_cifar10" for d in (8, 14, 20, 32, 56)]),
        Entry("cnmm_d8.e30_cifar10", "cnmm", dict(_CNMM, keep_max=0.7), epochs=30),
        Entry("lnet_resnet20.gl_cifar10", "lcnet", {"target": 0.5, "gate_l2": 0.01}, "resnet20.cpu30_cifar10", epochs=20),
        Entry("cnmm_r6.cifar10", "cnmm", dict(_CNMM, keep_max=0.6), epochs=24),
        # the same grid trained by budget sampling (each batch runs the network pruning keeps at a random budget)
        Entry("cnmm_r6b.cifar10", "cnmm", dict(_CNMM), epochs=24),
        # cnmm_r6 trained on: 20 more epochs from its final weights at peak lr 0.05
        Entry("cnmm_r6.ft_cifar10", "cnmm", dict(_CNMM, keep_max=0.6), "cnmm_r6.cifar10", epochs=20, train_kw={"lr": 0.05}),
        # cnmm_r6.ft trained on, distilled from the static ResNet-56 (T 4, weight 1), in bfloat16 autocast
        Entry("cnmm_r6.kd_cifar10", "cnmm", dict(_CNMM, keep_max=0.6), "cnmm_r6.ft_cifar10", epochs=40,
              train_kw={"lr": 0.05, "amp": "bf16"}, teacher="resnet56.cpu30_cifar10"),
    ],
    # a miniature of the same pipeline on the embedded digits (tests, offline trials)
    "digits": [
        Entry("resnet8.w4_digits", "static ResNet", {"widths": [4, 8, 16]}),
        Entry("resnet8.w16_digits", "static ResNet", {"widths": [16, 32, 64]}),
        Entry("test_ee_resnet.w16_digits", "early exit", {"widths": [16, 32, 64]}),
        Entry("cascade.w4_w16_digits", "network selection", members=["resnet8.w4_digits", "resnet8.w16_digits"]),
        Entry("test_cnmm.w16_digits", "cnmm", {"widths": [16, 32, 64]},
              search={"mechanisms": ["edges", "channels", "both"], "bn_batches": 5}),
        Entry("test_lcnet.digits", "lcnet", {"widths": [8, 16, 32], "target": 0.4, "lam": 4.0}),
    ],
}


def _in_zoo(zoo: Path, name: str) -> bool:
    from anycost.zoo import get_weights

    try:
        get_weights(name, zoo)
        return True
    except KeyError:
        return False


def _zoo_dep(zoo: Path, name: str, what: str) -> str:
    """An entry another one needs (its weights file), or a clear error if it is not there yet."""
    from anycost.zoo import get_weights, weights_path

    if not _in_zoo(zoo, name):
        raise FileNotFoundError(f"{what} {name}, which is not in the zoo yet")
    return str(weights_path(get_weights(name, zoo), zoo, download=False))


def _obtain(e: Entry, data, base, zoo: Path, runs: Path, say) -> None:
    """Train (or assemble) an entry that is not in the zoo, calibrate it, add it to the zoo.
    No record has its name (the caller checked), so a file left by an interrupted export may
    be replaced; shipped names are refused all the same."""
    from anycost.models.cascade import Cascade
    from anycost.train import train
    from anycost.zoo import export_cascade, export_to_zoo, load, load_model_file

    if e.members:
        missing = [m for m in e.members if not _in_zoo(zoo, m)]
        if missing:
            raise FileNotFoundError(f"{e.name} needs {', '.join(missing)} first")
        model = Cascade([load(m, zoo_dir=zoo) for m in e.members], data.input_size, e.members)
        model.calibrate(data, "calib", **e.search)
        export_cascade(e.name, list(e.members), model.operating_points(), zoo, overwrite=True)
        return
    # both are read from the zoo the suite fills (a reproduction distils from the ResNet it trained itself)
    init = _zoo_dep(zoo, e.init_from, f"{e.name} starts from") if e.init_from else None
    teacher = _zoo_dep(zoo, e.teacher, f"{e.name} distils from") if e.teacher else None
    kw = ({"teacher": teacher, "distill": 1.0} if teacher else {}) | e.train_kw
    run = runs / e.name
    cfg = replace(base, model=e.arch, model_kwargs=dict(e.kwargs), init_from=init, out_dir=str(run),
                  epochs=min(e.epochs or base.epochs, base.epochs), **kw)
    say(f"  training {e.name} -> {run}")
    train(cfg, resume=(run / "last.pt").exists(), data=data)
    model = load_model_file(run / "last.pt")
    model.calibrate(data, "calib", **e.search)
    export_to_zoo(run, e.name, zoo, model=model, overwrite=True)


def run_reproduce(dataset: str = "cifar10", recipe: str = "cpu30", data_dir: str | None = None, reuse: bool = False,
                  out: str = "runs/reproduce", zoo_dir: str | None = None, epochs: int | None = None,
                  bench: bool = True, latency_runs: int = 30, progress: bool = True, verify: int = 500) -> dict:
    """Run suite ``dataset`` (see the module docstring) with zoo folder ``zoo_dir`` (default:
    the user zoo) and outputs in ``out``; returns the combined record."""
    from anycost.train import TrainConfig, load_recipe
    from anycost.zoo import load, user_dir

    t_start = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    if dataset not in SUITES:
        raise ValueError(f"no reproduction suite for '{dataset}' (have: {', '.join(SUITES)})")
    zoo = Path(zoo_dir) if zoo_dir else user_dir()
    outp = Path(out)
    base = TrainConfig.from_dict(dict(load_recipe(recipe), dataset=dataset, data_dir=data_dir))
    base = replace(base, progress=progress, epochs=epochs or base.epochs)
    data = load_dataset(dataset, data_dir)
    measure = "test" if dataset in ("cifar10", "cifar100") and has_cifar_split(data_dir, dataset, "test") else "holdout"
    say(f"suite {dataset}: {len(SUITES[dataset])} entries; measuring on '{measure}'"
        + ("" if measure == "test" else " (no test files: the validation holdout)") + f"; new entries go to {zoo}")
    curves, benches, missing = [], {}, []
    suite = SUITES[dataset]
    for i, e in enumerate(suite, 1):
        if not _in_zoo(zoo, e.name):
            if reuse:
                missing.append({"name": e.name, "why": "not in the zoo (--reuse trains nothing)"})
                say(f"  {e.name}: missing from the zoo")
                continue
            try:
                _obtain(e, data, base, zoo, outp / "runs", say)
            except FileNotFoundError as err:
                missing.append({"name": e.name, "why": str(err)})
                say(f"  {e.name}: skipped ({err})")
                continue
        model = load(e.name, zoo_dir=zoo)
        ops = model.operating_points()
        ds = data.get(measure)
        t0 = time.perf_counter()
        with torch.inference_mode():
            c = evaluate_curve(model, ds, data.mean, data.std, ops, method=e.name,
                               calibrated_on=ops[0].split if ops[0].calibrated else None, measured_on=measure,
                               progress=progress and sys.stderr.isatty(), verify=verify)
        c.family = e.family
        curves.append(c)
        if bench:
            x = next(iter(BatchLoader(ds, 256, data.mean, data.std)))[0]
            with warnings.catch_warnings():  # unsteady figures are listed in the record and said once below
                warnings.simplefilter("ignore")
                benches[c.method] = bench_model(model, x, ops, BenchConfig(batch_size=256, latency_runs=latency_runs,
                                                                           throughput_batches=2, warmup=3, rounds=3))
            if benches[c.method]["unsteady"]:
                say(f"  {e.name}: {len(benches[c.method]['unsteady'])} timing(s) spread over 20 % across rounds")
        best = max(c.points, key=lambda p: p.accuracy)
        done = time.perf_counter() - t_start
        say(f"  [{i}/{len(suite)}] {e.name:<42} {len(c.points):>3} points, best {best.accuracy:.2f}% at "
            f"{best.macs_mean / 1e6:.2f} M MACs ({time.perf_counter() - t0:.0f}s; elapsed {done / 60:.1f} min, "
            f"about {done / i * (len(suite) - i) / 60:.1f} min to go)")
    rec = make_record("reproduce", {"dataset": dataset, "recipe": recipe, "data_dir": data_dir, "reuse": reuse,
                                    "measured_on": measure, "zoo": str(zoo)},
                      {"curves": [c.to_dict() for c in curves], "bench": benches, "missing": missing,
                       "seconds": time.perf_counter() - t_start})
    write_json_atomic(outp / "reproduce_record.json", rec)
    if curves:
        plot_curves(curves, outp / "accuracy_vs_macs.png", title=f"{dataset}: accuracy vs MACs (measured on {measure})")
    if benches:
        plot_speedups(benches, outp / "wallclock.png", title=f"{dataset}: wall-clock speed-up vs MAC reduction")
    table = curves_table(curves, frontier_only=True) if curves else "(nothing to measure)"
    (outp / "results.md").write_text(f"Measured on: {measure}. Pareto points of each curve; all points are in "
                                     f"reproduce_record.json.\n\n{table}\n"
                                     + ("".join(f"\nmissing: {m['name']} ({m['why']})" for m in missing)))
    say(f"\nrecord: {outp / 'reproduce_record.json'}; plots and results.md in {outp} "
        f"({time.perf_counter() - t_start:.0f}s)")
    return rec
