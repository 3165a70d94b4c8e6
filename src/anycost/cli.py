"""The ``anycost`` command: a thin layer over the Python API.

A user mistake prints one line on stderr and exits 2 (no traceback); ``--traceback``
shows the full one for bug reports.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

EPILOG = "All costs are MACs (multiply-accumulates) per input; FLOPs = 2 x MACs."


class UserError(Exception):
    pass


def _parse_set(items: list[str] | None) -> dict:
    """--set key=value (value parsed as JSON when it can be, else a string)."""
    out = {}
    for it in items or []:
        if "=" not in it:
            raise UserError(f"--set expects key=value, got '{it}'")
        k, v = it.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


# --------------------------------------------------------------------------- train


def cmd_train(a) -> int:
    from anycost.train import TrainConfig, load_recipe, train

    d = load_recipe(a.recipe)
    if a.download:
        from anycost.data import download_cifar

        ds = a.dataset or d.get("dataset")
        if ds not in ("cifar10", "cifar100") or not a.data_dir:
            raise UserError("--download works for cifar10/cifar100 and needs --data-dir (where to put the files)")
        a.data_dir = str(download_cifar(a.data_dir, ds))
    overrides = {"model": a.model, "dataset": a.dataset, "data_dir": a.data_dir, "epochs": a.epochs,
                 "batch_size": a.batch_size, "lr": a.lr, "device": a.device, "threads": a.threads,
                 "seed": a.seed, "compile": a.compile, "amp": a.amp, "val_size": a.val_size, "init_from": a.init_from,
                 "teacher": a.teacher, "distill": a.distill}
    d.update({k: v for k, v in overrides.items() if v is not None})
    if a.teacher and a.distill is None and not d.get("distill"):
        d["distill"] = 1.0
    if a.amp == "none":  # a recipe's bf16 switched off
        d["amp"] = None
    d.update(_parse_set(a.set))
    if a.no_progress:
        d["progress"] = False
    d["out_dir"] = a.out or d.get("out_dir") or f"runs/{d.get('model', 'model')}-{d.get('dataset', 'data')}-{Path(a.recipe).stem}-s{d.get('seed', 0)}"
    cfg = TrainConfig.from_dict(d)
    rec = train(cfg, resume=a.resume)
    fin = rec["results"]["final"] or {}
    msg = f"done: {cfg.model} on {cfg.dataset}, {rec['results']['epochs_done']} epochs"
    if "val_acc" in fin:
        msg += f", val top-1 {fin['val_acc']:.2f}%"
    print(f"{msg}; run folder {cfg.out_dir}")
    return 0


# --------------------------------------------------------------------------- helpers


def _eval_split(meta: dict, dataset: str | None, data_dir: str | None, split: str):
    """The split to measure, normalised with the model's own statistics. 'test' reads only
    the test files (test_batch + batches.meta suffice); 'val' re-carves the model's split."""
    from anycost.data import load_cifar, load_dataset

    dataset = dataset or meta.get("dataset") or "digits"
    if dataset in ("cifar10", "cifar100") and split == "test":
        if not data_dir:
            raise UserError(f"{dataset} needs --data-dir")
        return load_cifar(data_dir, dataset, "test"), dataset
    sp = meta.get("split") or {}
    data = load_dataset(dataset, data_dir, sp.get("val_size"), sp.get("split_seed") or 0)
    return data.get(split), dataset


def _model_name(spec: str, meta: dict) -> str:
    p = Path(spec)
    return p.parent.name if p.name == "last.pt" else (p.stem if p.suffix == ".pt" else p.name)


# --------------------------------------------------------------------------- commands


def cmd_models(a) -> int:
    from anycost.models import create_model, list_models, model_family

    rows = []
    for n in list_models(a.pattern or "*", include_test=a.all):
        m = create_model(n)
        macs = m.declared_macs((3, 32, 32)) if hasattr(m, "declared_macs") else None
        rows.append({"name": n, "family": model_family(n), "params": sum(p.numel() for p in m.parameters()), "macs_32x32": macs})
    if a.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{'model':<16} {'family':<10} {'params':>10} {'MACs @32x32':>14}")
        for r in rows:
            mac = f"{r['macs_32x32'] / 1e6:.2f} M" if r["macs_32x32"] else "-"
            print(f"{r['name']:<16} {r['family']:<10} {r['params']:>10,} {mac:>14}")
    return 0


def cmd_zoo(a) -> int:
    from anycost.zoo import read_index

    idx = read_index()
    if a.json:
        print(json.dumps([{"name": k, **v} for k, v in idx.items()], indent=1))
        return 0
    if not idx:
        print("the zoo is empty")
        return 0
    print(f"{'name':<24} {'family':<10} {'val top-1':>9} {'MACs':>10} {'epochs':>6} {'size':>8}")
    for k, v in idx.items():
        acc = f"{v['val_acc']:.2f}%" if v.get("val_acc") is not None else "-"
        epochs = v.get("epochs")  # None for cascades, whose members were trained apart
        epochs = "-" if epochs is None else epochs
        print(f"{k:<24} {v['family']:<10} {acc:>9} {v['macs'] / 1e6:>8.2f} M {epochs:>6} {v['size_bytes'] / 1e6:>6.2f}MB")
    return 0


def cmd_export(a) -> int:
    from anycost.zoo import export_to_zoo

    out = export_to_zoo(a.run_dir, a.name, a.zoo_dir)
    print(f"exported {a.run_dir} -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_eval(a) -> int:
    import torch

    from anycost.eval import OperatingPoint, evaluate_curve
    from anycost.records import make_record, write_json_atomic
    from anycost.report import curves_table
    from anycost.zoo import resolve_model

    if a.threads:
        torch.set_num_threads(a.threads)
    model, meta = resolve_model(a.model)
    model.to(a.device)
    if a.download:
        from anycost.data import download_cifar

        if not a.data_dir:
            raise UserError("--download needs --data-dir (where to put the files)")
        a.data_dir = str(download_cifar(a.data_dir, a.dataset or meta.get("dataset") or "cifar10"))
    ds, dataset = _eval_split(meta, a.dataset, a.data_dir, a.split)
    norm = meta["normalization"]
    if tuple(ds.images.shape[1:]) != tuple(meta["input_size"]):
        raise UserError(f"{a.split} images are {tuple(ds.images.shape[1:])} but the model expects {tuple(meta['input_size'])}")
    ops = [OperatingPoint.from_dict(o) for o in meta.get("operating_points", [])] or None
    calibrated_on = meta.get("calibrated_on") if ops else None
    name = _model_name(a.model, meta)
    with torch.inference_mode():
        curve = evaluate_curve(model, ds, norm["mean"], norm["std"], ops, method=name, calibrated_on=calibrated_on,
                               measured_on=a.split, batch_size=a.batch_size, device=a.device, progress=sys.stderr.isatty())
    if calibrated_on and calibrated_on == a.split:
        print(f"anycost: warning: operating points were chosen on '{calibrated_on}' and are measured on it too; "
              "these numbers are optimistic", file=sys.stderr)
    rec = make_record("eval", {"model": a.model, "dataset": dataset, "data_dir": a.data_dir, "split": a.split,
                               "batch_size": a.batch_size}, {"curve": curve.to_dict()}, device=a.device,
                      checkpoint={"path": meta.get("path"), "sha256": meta.get("sha256")})
    rec_path = a.record or f"runs/eval/{name}-{a.split}.json"
    if not a.no_record:
        write_json_atomic(rec_path, rec)
    if a.json:
        pts = [{"accuracy": p.accuracy, "top5": p.top5, "macs_mean": p.macs_mean, "macs_median": p.macs_median,
                "macs_p95": p.macs_p95, "path_fractions": p.path_fractions, "operating_point": p.operating_point.to_dict()}
               for p in curve.points]
        print(json.dumps({"model": name, "split": a.split, "dataset": dataset, "n": curve.points[0].n,
                          "calibrated_on": calibrated_on, "measured_on": a.split, "checkpoint_sha256": meta.get("sha256"),
                          "points": pts, "record": None if a.no_record else rec_path}, indent=1))
    else:
        print(curves_table([curve]))
        if not a.no_record:
            print(f"\nrecord: {rec_path}")
    return 0


def cmd_bench(a) -> int:
    import torch

    from anycost.bench import BenchConfig, bench_model
    from anycost.data import BatchLoader
    from anycost.eval import OperatingPoint
    from anycost.records import make_record, write_json_atomic
    from anycost.report import bench_table
    from anycost.zoo import resolve_model

    if a.threads:
        torch.set_num_threads(a.threads)
    model, meta = resolve_model(a.model)
    model.to(a.device)
    n = max(a.batch_size, a.latency_runs)
    ops = [OperatingPoint.from_dict(o) for o in meta.get("operating_points", [])] or None
    if a.data_dir or (meta.get("dataset") == "digits"):
        ds, _ = _eval_split(meta, None, a.data_dir, a.split)
        norm = meta["normalization"]
        x, _ = next(iter(BatchLoader(ds, min(n, len(ds)), norm["mean"], norm["std"], device=a.device)))
        inputs = f"{a.split} split"
    else:
        if ops:
            print("anycost: warning: no --data-dir: routing on random inputs does not show real per-input costs",
                  file=sys.stderr)
        x = torch.randn(n, *meta["input_size"], generator=torch.Generator().manual_seed(0)).to(a.device)
        inputs = "random normal"
    cfg = BenchConfig(batch_size=a.batch_size, latency_runs=a.latency_runs, throughput_batches=a.batches,
                      warmup=a.warmup, threads=a.threads, rounds=a.rounds)
    res = bench_model(model, x, ops, cfg)
    res["inputs"] = inputs
    name = _model_name(a.model, meta)
    rec = make_record("bench", {"model": a.model, **cfg.__dict__, "inputs": inputs}, {"bench": res, "method": name},
                      device=a.device, checkpoint={"path": meta.get("path"), "sha256": meta.get("sha256")})
    rec_path = a.record or f"runs/bench/{name}.json"
    write_json_atomic(rec_path, rec)
    if a.json:
        print(json.dumps(dict(res, model=name, record=rec_path, hardware=rec["hardware"]), indent=1))
    else:
        print(bench_table(name, res))
        print(f"\ninputs: {inputs}; hardware: {rec['hardware']['cpu']}, torch {rec['hardware']['torch']}\nrecord: {rec_path}")
    return 0


def cmd_calibrate(a) -> int:
    from anycost.calibrate import cache_split, calibrate, calibrate_budget
    from anycost.data import load_dataset
    from anycost.eval import TradeoffCurve
    from anycost.policies import apply_policy, policy_point
    from anycost.records import make_record, write_json_atomic
    from anycost.report import curves_table
    from anycost.selection import Cascade
    from anycost.zoo import resolve_model

    if a.cascade:
        members = [resolve_model(m) for m in a.cascade]
        metas = [m for _, m in members]
        if any(m["normalization"] != metas[0]["normalization"] for m in metas):
            raise UserError("cascade members were trained with different input normalisation")
        model = Cascade([n for n, _ in members], tuple(metas[0]["input_size"]), list(a.cascade))
        meta = metas[0]
        name = a.name or "selection"
    else:
        if not a.model:
            raise UserError("give a multi-exit MODEL or --cascade M1 M2 ...")
        model, meta = resolve_model(a.model)
        if not hasattr(model, "cache_outputs") and not hasattr(model, "prune_spec"):
            raise UserError(f"{a.model} is a static model: calibrate needs a multi-exit model, a CNMM or --cascade")
        name = a.name or _model_name(a.model, meta)
    model.to(a.device)
    sp = meta.get("split") or {}
    data = load_dataset(a.dataset or meta.get("dataset") or "digits", a.data_dir, sp.get("val_size"), sp.get("split_seed") or 0)
    norm = meta["normalization"]
    if hasattr(model, "prune_spec"):  # a CNMM: pruned networks, chosen from its own parameters
        return _calibrate_cnmm(a, model, data, norm, name, meta.get("train_augment"))
    if a.calib_split == a.split:
        raise UserError("--calib-split and --split must differ: choosing and measuring on the same images is optimistic")
    cal = cache_split(model, data, a.calib_split, a.batch_size, a.device, norm["mean"], norm["std"])
    mea = cache_split(model, data, a.split, a.batch_size, a.device, norm["mean"], norm["std"])
    res = calibrate(model, cal, mea, metrics=tuple(a.metrics.split(",")), jump=bool(a.cascade), name=name)
    curves: list[TradeoffCurve] = res["curves"]
    ops = [o.to_dict() for o in res["operating_points"]]
    budget = None
    if a.budget is not None:
        b = calibrate_budget(cal, a.budget, a.policy)
        measured = policy_point(mea, *apply_policy(mea, b["point"].operating_point.params), b["point"].operating_point)
        budget = {"target_macs": a.budget, "reachable": b["reachable"], "message": b["message"],
                  "chosen_on_calib": b["point"].to_dict(), "measured": measured.to_dict()}
        ops = [b["point"].operating_point.to_dict()]
        print(f"budget {a.budget / 1e6:.3f} M MACs ({a.policy}): {'reachable' if b['reachable'] else 'NOT reachable'}; "
              f"{b['message']}; on {a.split}: {measured.accuracy:.2f}% at {measured.macs_mean / 1e6:.3f} M MACs")
    rec = make_record("calibrate", {"model": a.model, "cascade": a.cascade, "calib_split": a.calib_split,
                                    "split": a.split, "metrics": a.metrics, "budget": a.budget, "policy": a.policy},
                      {"curves": [c.to_dict() for c in curves], "operating_points": ops, "budget": budget},
                      device=a.device)
    rec_path = a.record or f"runs/calibrate/{name}.json"
    write_json_atomic(rec_path, rec)
    _export_operating_points(a, model, meta, ops)
    if budget is None:
        print(curves_table(curves, frontier_only=True))
    print(f"\nchosen on: {a.calib_split}; measured on: {a.split}; record: {rec_path}")
    return 0


def _export_operating_points(a, model, meta, ops, calibrated_on=None) -> None:
    from anycost.zoo import export_cascade, export_to_zoo, set_operating_points

    calibrated_on = calibrated_on or a.calib_split
    if a.export:
        if a.cascade:
            out = export_cascade(a.export, list(a.cascade), ops, a.calib_split, model.net_macs, meta.get("dataset"), a.zoo_dir)
        elif Path(a.model).is_dir():
            out = export_to_zoo(a.model, a.export, a.zoo_dir, extra_meta={"operating_points": ops, "calibrated_on": calibrated_on})
        else:
            out = set_operating_points(a.export, ops, calibrated_on, a.zoo_dir)
        print(f"exported {len(ops)} operating points with the model: {out}")


def _calibrate_cnmm(a, model, data, norm, name, train_augment=None) -> int:
    """CNMM: every pruning mechanism at a range of budgets (or at --budget), with and
    without BN re-estimation on training batches; measured on --split."""
    from anycost.calibrate import calibrate_pruning
    from anycost.models.cnmm import CALIBRATED_MECHANISMS, MECHANISMS
    from anycost.records import make_record, read_record, write_json_atomic
    from anycost.report import curves_table

    fractions = None
    if a.budget is not None:
        full = model.full_macs()
        if not 0 < a.budget <= full:
            raise UserError(f"--budget {a.budget / 1e6:.3f} M MACs: give a budget above 0 and at most the full "
                            f"model's {full / 1e6:.3f} M")
        fractions = (a.budget / full,)
    # the greedy edge order is chosen on --calib-split, never where it is measured
    path = None
    if a.greedy_path:  # an order found before: the record says where it was chosen
        src = read_record(a.greedy_path)
        path, a.calib_split = (src.get("results") or {}).get("greedy_path"), (src.get("config") or {}).get("calib_split")
        if not path or not a.calib_split:
            raise UserError(f"--greedy-path {a.greedy_path}: no greedy_path (and its calib_split) in this record")
        if a.calib_split == a.split:
            raise UserError(f"--greedy-path {a.greedy_path}: its order was chosen on {a.split}, the split to measure on")
    greedy = a.calib_split != a.split and data.val is not None
    mechanisms = None
    if a.mechanisms:
        mechanisms = tuple(m.strip() for m in a.mechanisms.split(","))
        unknown = set(mechanisms) - set(MECHANISMS + CALIBRATED_MECHANISMS)
        if unknown:
            raise UserError(f"--mechanisms: unknown {', '.join(sorted(unknown))} "
                            f"(choose from {', '.join(MECHANISMS + CALIBRATED_MECHANISMS)})")
        if not greedy and set(mechanisms) & set(CALIBRATED_MECHANISMS):
            raise UserError("--mechanisms: the greedy mechanisms need a --calib-split other than --split")
    if not greedy:
        print("no greedy edge order: " + ("--calib-split = --split" if data.val is not None else "no validation split"))
    res = calibrate_pruning(model, data, a.split, name=name, batch_size=a.batch_size, device=a.device,
                            mean=norm["mean"], std=norm["std"], fractions=fractions,
                            calib_split=a.calib_split if greedy else None, bn_augment=a.bn_augment,
                            train_augment=train_augment, greedy_path=path, mechanisms=mechanisms, progress=True)
    ops = [o.to_dict() for o in res["operating_points"]]
    if not ops:
        raise UserError(f"no pruning mechanism reaches {a.budget / 1e6:.3f} M MACs")
    rec = make_record("calibrate", {"model": a.model, "split": a.split, "budget": a.budget, "kind": "cnmm pruning",
                                    "calib_split": a.calib_split if greedy else None, "bn_augment": a.bn_augment,
                                    "train_augment": train_augment, "greedy_path_from": a.greedy_path,
                                    "mechanisms": list(mechanisms) if mechanisms else None},
                      {"curves": [c.to_dict() for c in res["curves"]], "operating_points": ops,
                       "unreachable": res["unreachable"], "greedy_path": res["greedy_path"]}, device=a.device)
    rec_path = a.record or f"runs/calibrate/{name}.json"
    write_json_atomic(rec_path, rec)
    chosen = "train (BN statistics)" + (f"; {a.calib_split} (greedy edge order)" if greedy else "")
    _export_operating_points(a, model, None, ops, calibrated_on=chosen)
    print(curves_table(res["curves"]))
    for u in res["unreachable"]:
        print(f"unreachable: {u['mechanism']} at {u['fraction']:.0%} of the full MACs")
    print(f"\nedges, channels, both: no split chose these points (they follow from the model's own parameters)"
          + (f"; greedy: edge order chosen on {a.calib_split}" if greedy else "") + f"; measured on: {a.split}; record: {rec_path}")
    return 0


def _label_globs(values: list[str], flag: str, example: str) -> dict[str, str]:
    """LABEL=METHOD_GLOB arguments as {label: glob}."""
    groups = {}
    for g in values:
        label, eq, pattern = g.partition("=")
        if not (eq and label and pattern):
            raise UserError(f"{flag} takes LABEL=METHOD_GLOB (e.g. '{example}'), got '{g}'")
        groups[label] = pattern
    return groups


def cmd_plot(a) -> int:
    from anycost.plot import drop_curves, group_static, load_curves, plot_curves

    groups = _label_globs(a.static_group, "--static-group", "distilled=*_kd")
    curves = drop_curves(load_curves(a.records), a.exclude or [])
    try:
        curves = group_static(curves, groups)
    except ValueError as e:
        raise UserError(str(e)) from None
    out = plot_curves(curves, a.output, a.title)
    print(f"wrote {out}")
    return 0


def cmd_report(a) -> int:
    from anycost.plot import curves_from_record
    from anycost.records import RecordError, read_record
    from anycost.report import bench_table, curves_table, gap_table, summary_table, train_table

    if not a.summary and (a.reference or a.max_loss != [0.5, 1.0]):
        raise UserError("--reference and --max-loss belong to --summary")
    if bool(a.gap) != bool(a.gap_to):
        raise UserError("--gap METHOD_GLOB needs at least one --gap-to LABEL=METHOD_GLOB, and the reverse")
    groups = _label_globs(a.gap_to, "--gap-to", "L-Net=lnet_*")
    curves, benches, trains = [], [], []
    for p in a.records:
        rec = read_record(p)
        found = curves_from_record(rec)
        if rec.get("kind") == "bench":
            benches.append((rec["results"].get("method", p), rec["results"]["bench"]))
        elif rec.get("kind") == "train":
            trains.append(rec)
        elif not found:
            raise RecordError(f"{p}: record has neither a curve, a benchmark nor a training history")
        curves.extend(found)
    parts = [train_table(trains)] if trains else []
    if curves and a.gap:
        parts.append(gap_table(curves, a.gap, groups))
    elif curves and a.summary:
        parts.append(summary_table(curves, a.reference, a.max_loss))
    elif curves:
        parts.append(curves_table(curves, frontier_only=a.frontier))
    parts += [bench_table(m, b) for m, b in benches]
    text = "\n\n".join(parts)
    if a.into:
        from anycost.report import replace_section

        opts = (["--frontier"] if a.frontier else []) + (["--summary"] if a.summary else [])
        opts += (["--reference", a.reference] if a.reference else [])
        opts += (["--max-loss", *map(str, a.max_loss)] if a.summary and a.max_loss != [0.5, 1.0] else [])
        opts += (["--gap", a.gap] + [x for g in a.gap_to for x in ("--gap-to", g)] if a.gap else [])
        cmd = shlex.join(["anycost", "report", *a.records, *opts, "--into", a.into, "--section", a.section])
        replace_section(a.into, a.section, f"_Generated from records by `{cmd}`._\n\n{text}")
        print(f"wrote section '{a.section}' of {a.into}")
    else:
        print(text)
    return 0


def cmd_reproduce(a) -> int:
    from anycost.reproduce import run_reproduce

    recipe = a.recipe or ("cpu30" if a.dataset == "cifar10" else "demo")
    run_reproduce(a.dataset, recipe, a.data_dir, a.reuse, a.out, a.zoo_dir, a.epochs, bench=not a.no_bench,
                  latency_runs=a.latency_runs)
    return 0


def cmd_demo(a) -> int:
    from anycost.demo import run_demo

    run_demo(a.out, epochs=a.epochs, seed=a.seed)
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="anycost",
        description="Networks whose inference cost is chosen at run time: train, evaluate, calibrate, "
                    "benchmark and plot accuracy against MACs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from anycost import __version__

    p.add_argument("--version", action="version", version=f"anycost {__version__}")
    p.add_argument("--traceback", action="store_true", help="show full tracebacks on errors (for bug reports)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a recipe", epilog=EPILOG,
                       description="Train a registered model. A recipe (packaged name or .json path) gives the "
                                   "defaults; flags and --set key=value override them. Each epoch writes "
                                   "last.pt and record.json to the run folder atomically; --resume continues "
                                   "exactly where the last completed epoch left off.")
    t.add_argument("model", nargs="?", help="registered model name (see `anycost models`); default: the recipe's")
    t.add_argument("--recipe", default="cpu", help="packaged recipe (cpu, cpu30, paper, demo) or path to a .json (default: cpu)")
    t.add_argument("--dataset", choices=["cifar10", "cifar100", "digits", "folder"])
    t.add_argument("--data-dir", help="CIFAR batches folder or its parent; for 'folder', one sub-folder per class")
    t.add_argument("--download", action="store_true", help="download CIFAR into --data-dir first (needs internet; never implicit)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--val-size", type=int, help="images carved off the training files for validation")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the recipe's, else cpu)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.add_argument("--seed", type=int)
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the training step")
    t.add_argument("--amp", choices=["bf16", "none"], help="bfloat16 autocast for the training forward (weights and "
                                                   "evaluation stay float32; ~1.6x per step on an AVX512-BF16 CPU)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any TrainConfig field (repeatable)")
    t.add_argument("--init-from", help="start from a trained model (zoo name, .pt or run folder); its weights go "
                                       "into the new model's backbone, e.g. resnet20.cifar10 for ee_resnet20")
    t.add_argument("--teacher", help="distil from this frozen model (zoo name, .pt or run folder), e.g. the "
                                     "unpruned resnet56.cifar10 while fine-tuning lnet_resnet56")
    t.add_argument("--distill", type=float, help="weight of the distillation term T^2 KL(teacher || student) added "
                                                 "to the loss (default 1 with --teacher); --set distill_temp=T sets T (4)")
    t.add_argument("--out", help="run folder (default: runs/MODEL-DATASET-RECIPE-sSEED)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's last.pt")
    t.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    t.set_defaults(func=cmd_train)

    m = sub.add_parser("models", help="list registered model architectures", epilog=EPILOG,
                       description="List the architectures create_model() knows, with parameter counts and "
                                   "MACs per 32x32 RGB image (declared from layer shapes, tested against "
                                   "torch.utils.flop_counter).")
    m.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    m.add_argument("--all", action="store_true", help="include the tiny test_* variants")
    m.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    m.set_defaults(func=cmd_models)

    z = sub.add_parser("zoo", help="list pretrained models shipped with anycost", epilog=EPILOG,
                       description="List the trained checkpoints committed with anycost: name (use it with "
                                   "`anycost eval NAME` or create_model(arch, pretrained=TAG)), family, "
                                   "validation top-1, MACs per image, epochs and file size.")
    z.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    z.set_defaults(func=cmd_zoo)

    x = sub.add_parser("export", help="add a finished training run to the zoo (float16 weights)", epilog=EPILOG,
                       description="Write a run folder's final weights as a float16 zoo file with its metadata "
                                   "(normalisation, classes, validation metrics, measured MACs) and update "
                                   "the zoo's index.json.")
    x.add_argument("run_dir", help="run folder holding last.pt and record.json")
    x.add_argument("--name", required=True, help="zoo name, e.g. resnet20.cifar10")
    x.add_argument("--zoo-dir", help="target folder (default: the package's zoo)")
    x.set_defaults(func=cmd_export)

    e = sub.add_parser("eval", help="measure accuracy and per-input MACs at every operating point", epilog=EPILOG,
                       description="Evaluate a zoo model (e.g. resnet20.cifar10), a checkpoint or a run folder. "
                                   "Static models give one point; adaptive ones one point per operating point "
                                   "calibrated on validation. Writes a JSON record.")
    e.add_argument("model", help="zoo name, checkpoint .pt or run folder")
    e.add_argument("--data-dir", help="dataset folder (CIFAR: the batches folder or its parent)")
    e.add_argument("--dataset", help="override the dataset the model was trained on")
    e.add_argument("--download", action="store_true", help="download CIFAR into --data-dir first (needs internet; never implicit)")
    e.add_argument("--split", choices=["val", "calib", "holdout", "test", "train"], default="val",
                   help="val: carved from the training files as in training (calib/holdout: its first/second half); "
                        "test: needs only test_batch + batches.meta")
    e.add_argument("--batch-size", type=int, default=1000)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    e.add_argument("--json", action="store_true", help="print one JSON object (model, split, points, ...)")
    e.add_argument("--record", help="where to write the record (default runs/eval/NAME-SPLIT.json)")
    e.add_argument("--no-record", action="store_true", help="do not write a record")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="wall-clock latency (batch 1) and throughput per operating point", epilog=EPILOG,
                       description="Times every operating point with warm-up, inference_mode and a fixed thread "
                                   "count; reports the realised speed-up against the full-cost setting next to "
                                   "the MAC reduction. Give --data-dir so dynamic models route on real images.")
    b.add_argument("model", help="zoo name, checkpoint .pt or run folder")
    b.add_argument("--data-dir")
    b.add_argument("--split", default="val", choices=["val", "calib", "holdout", "test", "train"],
                   help="which images to time on (with --data-dir)")
    b.add_argument("--batch-size", type=int, default=256, help="batch for throughput (default 256)")
    b.add_argument("--latency-runs", type=int, default=100, help="timed batch-1 calls per point")
    b.add_argument("--batches", type=int, default=5, help="timed full batches per point and round")
    b.add_argument("--rounds", type=int, default=3, help="batched timing rounds over all points (median counts)")
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    b.add_argument("--record", help="where to write the record (default runs/bench/NAME.json)")
    b.set_defaults(func=cmd_bench)

    c = sub.add_parser("calibrate", help="choose exit/selection policies on one split, measure them on another",
                       epilog=EPILOG, description="Cache every exit's outputs (or every cascade member's) on the "
                       "calibration split, build threshold (max-prob, entropy, margin), learned (Bolukbasi et al.'s "
                       "weighted binary reduction, swept over lambda) and oracle policies there, and measure them "
                       "on --split. --budget picks one operating point for a mean-MAC budget and says whether it "
                       "is reachable. --export stores the chosen operating points with the model in the zoo. "
                       "For a CNMM: every pruning mechanism (edges, channels, both, and greedy and greedy-unit, whose "
                       "edge order is chosen on --calib-split; with and without BN re-estimation on training batches) "
                       "at a range of budgets, or at --budget, measured on --split.")
    c.add_argument("model", nargs="?", help="multi-exit model or CNMM: zoo name, .pt or run folder")
    c.add_argument("--cascade", nargs="+", metavar="MODEL", help="network selection over these classifiers, cheapest first")
    c.add_argument("--data-dir")
    c.add_argument("--dataset", help="override the dataset recorded with the model")
    c.add_argument("--calib-split", default="calib", help="where policies, and a CNMM's greedy edge order, are chosen (default: calib, the first half of val)")
    c.add_argument("--split", default="holdout", help="where they are measured (default: holdout, the second half of val)")
    c.add_argument("--metrics", default="maxprob,entropy,margin", help="threshold confidence metrics, comma-separated")
    c.add_argument("--budget", type=float, help="target mean MACs per image, e.g. 20e6")
    c.add_argument("--policy", default="threshold", choices=["threshold", "learned"], help="policy for --budget")
    c.add_argument("--name", help="method name in records and plots")
    c.add_argument("--export", metavar="ZOO_NAME", help="store the operating points with the model under this zoo name")
    c.add_argument("--zoo-dir", help="zoo folder for --export (default: the package's zoo)")
    c.add_argument("--batch-size", type=int, default=500)
    c.add_argument("--bn-augment", action=argparse.BooleanOptionalAction, default=True,
                   help="CNMM: re-estimate BN statistics on augmented training batches, like the ones training saw "
                        "(default; --no-bn-augment: plain images, which cost the static ResNet-20 2.3 pt)")
    c.add_argument("--mechanisms", metavar="M1,M2", help="CNMM: only these pruning mechanisms (default: edges, channels, "
                   "both, greedy, greedy-unit)")
    c.add_argument("--greedy-path", metavar="RECORD", help="CNMM: reuse the greedy edge order of an earlier calibrate "
                   "record of the same model (the search is the slow part: ~E^2/2 evaluations of the calib split)")
    c.add_argument("--device", default="cpu")
    c.add_argument("--record", help="record path (default runs/calibrate/NAME.json)")
    c.set_defaults(func=cmd_calibrate)

    pl = sub.add_parser("plot", help="plot accuracy vs MACs from records (never runs a model)", epilog=EPILOG,
                        description="Draw top-1 accuracy against mean MACs per image (log axis) for every curve "
                                    "in the given records; static networks appear as markers joined per family.")
    pl.add_argument("records", nargs="+", help="eval/demo/reproduce record files")
    pl.add_argument("-o", "--output", required=True, help="image file, e.g. curves.png")
    pl.add_argument("--title", help="plot title (default: names the measured split)")
    pl.add_argument("--static-group", action="append", default=[], metavar="LABEL=METHOD_GLOB",
                    help="draw the static networks matching the glob as their own marker series named LABEL, "
                         "e.g. 'distilled=*_kd' (repeatable)")
    pl.add_argument("--exclude", action="append", metavar="PATTERN",
                    help="leave out curves whose name matches this shell pattern, e.g. '*entropy*' (repeatable)")
    pl.set_defaults(func=cmd_plot)

    r = sub.add_parser("report", help="Markdown tables from records", epilog=EPILOG,
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
                   "matching this glob (e.g. 'lcnet_*'), the accuracy of each --gap-to group's frontier at equal "
                   "mean MACs (interpolated linearly) and the gap in points")
    r.add_argument("--gap-to", metavar="LABEL=METHOD_GLOB", action="append", default=[],
                   help="with --gap, repeatable: a group of curves merged into one frontier, e.g. 'L-Net=lnet_*'")
    r.add_argument("--into", metavar="FILE", help="write the tables, and this command, between the "
                   "'<!-- anycost:SECTION:begin -->' and ':end -->' markers of a Markdown file (e.g. README.md)")
    r.add_argument("--section", default="results", help="marker name for --into (default: results)")
    r.set_defaults(func=cmd_report)

    rp = sub.add_parser("reproduce", help="train or reuse every family, calibrate, measure, plot: the whole comparison",
                        epilog=EPILOG, description="For each entry of the dataset's suite (static ResNets, early exit, "
                        "network selection, CNMM, LC-Net): use its zoo checkpoint or train it, choose its operating "
                        "points on validation, add it to the zoo; then measure all on the test split if its files are "
                        "present (else the validation holdout), time them at batch 1 and 256, and write "
                        "reproduce_record.json, accuracy_vs_macs.png, wallclock.png and results.md.")
    rp.add_argument("dataset", choices=["cifar10", "digits"])
    rp.add_argument("--recipe", default=None, help="training recipe (default: cpu30 for cifar10, the recipe the committed zoo was trained with; demo for digits)")
    rp.add_argument("--data-dir")
    rp.add_argument("--reuse", action="store_true", help="evaluate committed checkpoints only; train nothing")
    rp.add_argument("--out", default="runs/reproduce")
    rp.add_argument("--zoo-dir", help="zoo folder to read and extend (default: the package's zoo)")
    rp.add_argument("--epochs", type=int, help="override the recipe's epochs (quick trials)")
    rp.add_argument("--no-bench", action="store_true", help="skip the wall-clock measurements")
    rp.add_argument("--latency-runs", type=int, default=30, help="timed batch-1 calls per operating point")
    rp.set_defaults(func=cmd_reproduce)

    d = sub.add_parser("demo", help="offline demo: train small models on the embedded digits, table + plot", epilog=EPILOG,
                       description="Train small models of every family on scikit-learn's 8x8 digits (shipped "
                                   "with the package; no download), measure them on the validation split, print "
                                   "an accuracy-vs-MACs table and write demo.png and demo_record.json.")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--epochs", type=int, help="epochs per model (default: the demo recipe's)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 0
    from anycost.checkpoint import CheckpointError
    from anycost.data import DataError
    from anycost.records import RecordError

    try:
        return a.func(a) or 0
    except KeyboardInterrupt:
        print("anycost: interrupted (completed epochs are saved; continue with --resume)", file=sys.stderr)
        return 130
    except (UserError, DataError, CheckpointError, RecordError, ValueError, KeyError, FileNotFoundError) as e:
        if a.traceback:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"anycost: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
