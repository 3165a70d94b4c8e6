"""One-off (kept as provenance): convert the pickled zoo of commit 66c48e7 (src/anycost/zoo/*.pt + cascade JSONs) to arch.tag entries: float16 safetensors in zoo/, JSON records in src/anycost/zoo/.

Usage (from the repository root):

    python benchmarks/migrate_zoo.py                      # convert every entry, then check logits
    python benchmarks/migrate_zoo.py --only cnmm_r6.kd_cifar10,resnet20.cpu30_cifar10
    python benchmarks/migrate_zoo.py --check DATA_DIR     # compare old vs new logits on CIFAR images
    python benchmarks/migrate_zoo.py --measure DATA_DIR   # measure/calibrate points on 'calib' (resumable)

The old files are read from git (``git show 66c48e7:src/anycost/zoo/NAME``) with a copy of the
old loader below (``torch.load(weights_only=True)``), so the script keeps working after they
were deleted. Weights are copied bit for bit (they were float16 already). Old operating
points become OperatingPoint dicts; a CNMM point whose params carried re-estimated BatchNorm
statistics (``params["bn"] = {module: [mean, var]}``) keeps them as op-state tensors
``op/<point>/<module>.running_mean|running_var`` (float32, as computed), ``params["bn"] = True``
and the mechanism loses its "+bn" suffix (as ``anycost.models.cnmm.split_legacy_bn`` does).

``--measure`` needs the families on the DynamicModel contract: each entry is loaded with its
converted points, the points are measured on the 'calib' half of its validation split
(``model.measure`` + ``anycost.core.pareto_subset``; ``--recalibrate`` or an entry whose points
no longer fit the family: ``model.calibrate(data, "calib")``), and the entry is rewritten.
Entries whose points are all measured on 'calib' are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OLD_REV = "66c48e7"
OLD_DIR = "src/anycost/zoo"

# old name -> new name (arch.tag); arch = the registered model (meta "model_name")
RENAMES = {
    "cnet_resnet20.cifar10": "cnet_resnet20.cifar10",
    "cnet_resnet56_kd.cifar10": "cnet_resnet56.kd_cifar10",
    "cnmm_d8.cifar10": "cnmm_d8.cifar10",
    "cnmm_d8_e30.cifar10": "cnmm_d8.e30_cifar10",
    "cnmm_r6.cifar10": "cnmm_r6.cifar10",
    "cnmm_r6_ft.cifar10": "cnmm_r6.ft_cifar10",
    "cnmm_r6_kd.cifar10": "cnmm_r6.kd_cifar10",
    "cnmm_r6_kd2.cifar10": "cnmm_r6.kd2_cifar10",
    "cnmm_r6_nc.cifar10": "cnmm_r6.nc_cifar10",
    "cnmm_r6_sw.cifar10": "cnmm_r6.sw_cifar10",
    "cnmm_r6b.cifar10": "cnmm_r6b.cifar10",
    "cnmm_r9_kd.cifar10": "cnmm_r9.kd_cifar10",
    "cnmm_r9l_kd.cifar10": "cnmm_r9l.kd_cifar10",
    "ee_resnet20.cifar10": "ee_resnet20.cifar10",
    "ee_resnet20_heads.cifar10": "ee_resnet20.heads_cifar10",
    "ee_resnet20_stage.cifar10": "ee_resnet20.stage_cifar10",
    "ee_resnet56_branch.cifar10": "ee_resnet56.branch_cifar10",
    "ee_resnet56_branch_joint.cifar10": "ee_resnet56.branch_joint_cifar10",
    "ee_resnet56_heads.cifar10": "ee_resnet56.heads_cifar10",
    "lcnet_cond_resnet20.cifar10": "lcnet_cond_resnet20.cifar10",
    "lcnet_resnet20.cifar10": "lcnet_resnet20.cifar10",
    "lcnet_resnet56_ct.cifar10": "lcnet_resnet56.ct_cifar10",
    "lcnet_resnet56_ct50.cifar10": "lcnet_resnet56.ct50_cifar10",
    "lcnet_resnet56_kd.cifar10": "lcnet_resnet56.kd_cifar10",
    "lcnet_resnet56_staged.cifar10": "lcnet_resnet56.staged_cifar10",
    "lnet_resnet20.cifar10": "lnet_resnet20.cifar10",
    "lnet_resnet20_gl.cifar10": "lnet_resnet20.gl_cifar10",
    "lnet_resnet56.cifar10": "lnet_resnet56.cifar10",
    "lnet_resnet56_kd.cifar10": "lnet_resnet56.kd_cifar10",
    "lnet_resnet56_kd2.cifar10": "lnet_resnet56.kd2_cifar10",
    "lnet_resnet56_t30.cifar10": "lnet_resnet56.t30_cifar10",
    # static: tagged with their recipe. cpu30.json states every README comparison was trained with
    # it (30 epochs, lr 0.1; benchmarks/static_cifar10.sh); cpu.json (v4, 90 epochs) states the
    # 90.24 % seed-0 run that resnet20_v4 is (90 epochs, 90.24 % val).
    "resnet8.cifar10": "resnet8.cpu30_cifar10",
    "resnet14.cifar10": "resnet14.cpu30_cifar10",
    "resnet20.cifar10": "resnet20.cpu30_cifar10",
    "resnet32.cifar10": "resnet32.cpu30_cifar10",
    "resnet56.cifar10": "resnet56.cpu30_cifar10",
    "resnet20_v4.cifar10": "resnet20.cpu_cifar10",
    "select_resnet8_resnet20.cifar10": "cascade.r8_r20_cifar10",
    "select_resnet8_resnet14_resnet20.cifar10": "cascade.r8_r14_r20_cifar10",
    "select_resnet8_resnet20_resnet56.cifar10": "cascade.r8_r20_r56_cifar10",
    "select_resnet8_resnet14_resnet20_resnet56.cifar10": "cascade.r8_r14_r20_r56_cifar10",
    "select_resnet8_resnet14_resnet20_resnet32_resnet56.cifar10": "cascade.r8_r14_r20_r32_r56_cifar10",
}
RECIPES = {"resnet20_v4.cifar10": "cpu", **{f"resnet{d}.cifar10": "cpu30" for d in (8, 14, 20, 32, 56)}}


def git_bytes(path: str) -> bytes:
    return subprocess.run(["git", "show", f"{OLD_REV}:{path}"], cwd=ROOT, check=True, capture_output=True).stdout


def old_index() -> dict:
    return json.loads(git_bytes(f"{OLD_DIR}/index.json"))


# ---------------------------------------------------------------- the old loader (commit 66c48e7)


def old_checkpoint(old: str) -> dict:
    ck = torch.load(io.BytesIO(git_bytes(f"{OLD_DIR}/{old}.pt")), map_location="cpu", weights_only=True)
    if ck.get("format") != "anycost-zoo-v1":
        raise SystemExit(f"{old}.pt: not an anycost-zoo-v1 file")
    return ck


def old_model(old: str):
    """What ``anycost.zoo.load_model_file`` of 66c48e7 built: registry model + strict load, eval."""
    from anycost.checkpoint import load_state_dict_strict
    from anycost.models import create_model

    ck = old_checkpoint(old)
    meta = ck["meta"]
    m = create_model(meta["model_name"], num_classes=meta["num_classes"], in_chans=meta["input_size"][0],
                     **meta.get("model_kwargs", {}))
    load_state_dict_strict(m, ck["state_dict"], old)
    return m.eval(), meta


# ---------------------------------------------------------------- conversion


def train_record(old: str, commit: str | None) -> dict | None:
    p = ROOT / "benchmarks" / "records" / "train" / f"{old}.json"
    if not p.is_file():
        return None
    rec = json.loads(p.read_text())
    return rec if (rec.get("git") or {}).get("commit") == commit else None


def convert_points(ops: list[dict]) -> tuple[list[dict], dict]:
    """Old point dicts -> (OperatingPoint dicts, op state {point: {key: tensor}})."""
    from anycost.core import OperatingPoint

    out, state = [], {}
    for o in ops:
        params = dict(o.get("params") or {})
        bn = params.get("bn")
        if isinstance(bn, dict):
            st = {}
            for mod, (mean, var) in bn.items():
                st[f"{mod}.running_mean"] = torch.tensor(mean, dtype=torch.float32)
                st[f"{mod}.running_var"] = torch.tensor(var, dtype=torch.float32)
            state[o["name"]] = st
            params["bn"] = True
            if str(params.get("mechanism", "")).endswith("+bn"):  # "edges+bn" is now "edges" with bn=True
                params["mechanism"] = params["mechanism"][: -len("+bn")]
        out.append(OperatingPoint.from_dict({"name": o["name"], "params": params}).to_dict())
    return unique_names(out), state


def unique_names(ops: list[dict]) -> list[dict]:
    """Point names are keys now; old lists repeated a rounded threshold ('maxprob>=1' twice):
    give such points their full threshold, else a '#k' suffix."""
    seen = {}
    for o in ops:
        seen[o["name"]] = seen.get(o["name"], 0) + 1
    used = set()
    for o in ops:
        if seen[o["name"]] > 1:
            p = o["params"]
            name = o["name"]
            if "threshold" in p and "metric" in p:
                name = f"{p['metric']}>={p['threshold']:.10g}"
            k = 2
            base = name
            while name in used:
                name, k = f"{base} #{k}", k + 1
            print(f"  renamed duplicate point {o['name']!r} -> {name!r}")
            o["name"] = name
        used.add(o["name"])
    return ops


def choose_defaults(index: dict) -> set[str]:
    """Per arch: the entry the old 'arch.cifar10' name was, else the only one, else the best top-1."""
    by_arch: dict[str, list[str]] = {}
    for old in RENAMES:
        if old.startswith("select_"):
            continue
        by_arch.setdefault(RENAMES[old].split(".")[0], []).append(old)
    out = set()
    for arch, olds in by_arch.items():
        plain = [o for o in olds if o == f"{arch}.cifar10"]
        pick = plain[0] if plain else max(olds, key=lambda o: index[o]["val_acc"] or 0)
        out.add(RENAMES[pick])
    return out


def convert(olds: list[str], weights_dir: Path, meta_dir: Path) -> None:
    from anycost.zoo import Weights, publish_entry, write_record
    from anycost.zoo.store import RELEASE_URL

    index = old_index()
    defaults = choose_defaults(index)
    for old in olds:
        new = RENAMES[old]
        arch, tag = new.split(".", 1)
        aliases = [old] if old != new else []
        if old.startswith("select_"):
            spec = json.loads(git_bytes(f"{OLD_DIR}/{old}.json"))
            members = [RENAMES[m] for m in spec["members"]]
            first = old_checkpoint(spec["members"][0])["meta"]
            ops, st = convert_points(spec.get("operating_points", []))
            assert not st
            w = Weights(name=new, arch=arch, tag=tag, family="cascade", members=members, dtype="float16",
                        num_classes=first["num_classes"], input_size=tuple(first["input_size"]),
                        normalization=first["normalization"], classes=first.get("classes"),
                        dataset=first.get("dataset"), split=first.get("split") or {}, macs=index[old]["macs"],
                        operating_points=ops, aliases=aliases, default=False,
                        provenance={"calibrated_on": spec.get("calibrated_on"),
                                    "migrated_from": f"{OLD_REV}:{OLD_DIR}/{old}.json"})
            write_record(w, meta_dir)
            print(f"{old:<58} -> {new} (cascade of {len(members)})")
            continue
        ck = old_checkpoint(old)
        meta, state = ck["meta"], ck["state_dict"]
        bad = [k for k, v in state.items() if v.is_floating_point() and v.dtype != torch.float16]
        if bad:
            raise SystemExit(f"{old}: non-float16 tensors {bad[:3]}: the copy would not be bit for bit")
        if meta["model_name"] != arch:
            raise SystemExit(f"{old}: model_name {meta['model_name']} but renamed to arch {arch}")
        m = meta["metrics"]
        rec = train_record(old, m.get("commit"))
        recipe = RECIPES.get(old)
        if meta.get("train_augment"):
            aug = meta["train_augment"]
        elif rec is not None:
            from anycost.zoo import train_augmentation
            aug = train_augmentation(rec["config"])
        elif recipe:
            from anycost.zoo import train_augmentation
            aug = train_augmentation(json.loads((ROOT / "src/anycost/recipes" / f"{recipe}.json").read_text()))
        else:
            aug = None
        ops, op_state = convert_points(meta.get("operating_points", []))
        prov = {"commit": m.get("commit"), "train_seconds": m.get("train_seconds"),
                "calibrated_on": meta.get("calibrated_on"), "migrated_from": f"{OLD_REV}:{OLD_DIR}/{old}.pt",
                "old_sha256": index[old]["sha256"]}
        if rec is not None:
            prov["train_record"] = f"benchmarks/records/train/{old}.json"
        metrics = {k: {"value": m[src], "split": "val"} for k, src in (("top1", "val_acc"), ("top5", "val_top5"))
                   if m.get(src) is not None}
        from anycost.models import model_family
        w = Weights(name=new, arch=arch, tag=tag, family=model_family(arch), file=f"{new}.safetensors",
                    dtype="float16", model_kwargs=meta.get("model_kwargs", {}), num_classes=meta["num_classes"],
                    input_size=tuple(meta["input_size"]), normalization=meta["normalization"],
                    classes=meta.get("classes"), dataset=meta.get("dataset"), split=meta.get("split") or {},
                    train_augment=aug, recipe=recipe, epochs=m.get("epochs"), macs=m.get("macs"), metrics=metrics,
                    operating_points=ops, aliases=aliases, default=new in defaults, provenance=prov)
        w = publish_entry(w, state, op_state, weights_dir, meta_dir, url=RELEASE_URL + f"{new}.safetensors")
        print(f"{old:<58} -> {new:<36} {w.size / 1e6:6.2f} MB, {len(ops)} points, {len(op_state)} with op state")


# ---------------------------------------------------------------- checks


def check(olds: list[str], data_dir: str | None, n: int = 16) -> int:
    """New entry vs the old loader: bit-identical weights and op state, identical logits on
    ``n`` CIFAR-10 holdout images (random inputs without data)."""
    import anycost
    from anycost.zoo import get_weights, weights_path
    from anycost.zoo.store import read_weights

    x_img = None
    if data_dir:
        from anycost.data import load_dataset

        ds = load_dataset("cifar10", data_dir=data_dir).get("holdout")
        x_img = ds.images[:n].float() / 255.0
    fails = 0
    for old in olds:
        new = RENAMES[old]
        w = get_weights(new)
        if w.is_cascade:
            spec = json.loads(git_bytes(f"{OLD_DIR}/{old}.json"))
            ok = [RENAMES[m] for m in spec["members"]] == list(w.members)
            ok &= [o["params"] for o in spec["operating_points"]] == [o["params"] for o in w.operating_points]
            print(f"{'ok ' if ok else 'FAIL'} {new}: members and points")
            fails += not ok
            continue
        ref, meta = old_model(old)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            model = anycost.load(old)  # through the alias: also checks it resolves to `new`
        assert model.weights.name == new
        state, op_state = read_weights(weights_path(w))
        old_state = old_checkpoint(old)["state_dict"]
        same_w = state.keys() == old_state.keys() and all(torch.equal(state[k], old_state[k]) for k in state)
        same_ops = True
        for o in meta.get("operating_points", []):
            bn = o["params"].get("bn")
            if isinstance(bn, dict):
                st = op_state[o["name"]]
                same_ops &= all(torch.equal(st[f"{k}.running_mean"], torch.tensor(mv[0])) and
                                torch.equal(st[f"{k}.running_var"], torch.tensor(mv[1])) for k, mv in bn.items())
        mean = torch.tensor(w.mean).view(1, -1, 1, 1)
        std = torch.tensor(w.std).view(1, -1, 1, 1)
        x = (x_img - mean) / std if x_img is not None else torch.randn(n, *w.input_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = ref(x), model(x)
        a = a.logits if hasattr(a, "logits") else a
        b = b.logits if hasattr(b, "logits") else b
        same_logits = torch.equal(a, b)
        ok = same_w and same_ops and same_logits
        fails += not ok
        print(f"{'ok ' if ok else 'FAIL'} {old:<50} -> {new:<34} weights {'=' if same_w else '!='}, op state "
              f"{'=' if same_ops else '!='}, logits max |diff| {float((a - b).abs().max()):.3g}")
    return fails


# ---------------------------------------------------------------- measuring (run once the families are on the contract)


def measured(w) -> bool:
    return bool(w.provenance.get("measured_on")) and all(o.get("split") == "calib" for o in w.operating_points)


def measure(names: list[str], data_dir: str, recalibrate: bool = False, batch_size: int = 500,
            bn_only: bool = False, search: dict | None = None, mechanisms: list | None = None,
            force: bool = False) -> None:
    from anycost.core import DynamicModel, pareto_subset
    from anycost.data import load_dataset
    from anycost.records import git_commit
    from anycost.zoo import get_weights, load, update_entry

    datasets = {}
    for name in names:
        w = get_weights(name)
        if measured(w) and not force:
            print(f"skip {name}: measured on calib")
            continue
        key = (w.dataset, (w.split or {}).get("val_size"), (w.split or {}).get("split_seed") or 0)
        if key not in datasets:
            datasets[key] = load_dataset(w.dataset, data_dir=data_dir, val_size=key[1], split_seed=key[2])
        data = datasets[key]
        try:
            model = load(name, operating_points=not recalibrate)
            fresh = recalibrate
        except Exception as e:  # converted points the family no longer accepts: choose new ones
            print(f"  {name}: shipped points rejected ({e}); calibrating from scratch")
            model, fresh = load(name, operating_points=False), True
        if not isinstance(model, DynamicModel):
            raise SystemExit(f"{name}: {type(model).__name__} is not a DynamicModel yet; cannot measure")
        if fresh:
            pts = model.calibrate(data, "calib", batch_size=batch_size, **(search or {}))
        else:
            cands = model.operating_points()
            if bn_only:  # CNMM: only the points with re-estimated BN statistics, and the unpruned network
                cands = [o for o in cands if o.get("bn") or o.get("budget_fraction") == 1.0]
            if mechanisms:  # CNMM: only these pruning mechanisms (where the entry has any of them)
                cands = [o for o in cands if o.get("mechanism") in mechanisms] or cands
            got = model.measure(data.get("calib"), data.mean, data.std, cands, split="calib", batch_size=batch_size)
            pts = pareto_subset(got)
            model.set_operating_points(pts)
        update_entry(name, model, provenance={"measured_on": "calib", "measured_commit": git_commit().get("commit")})
        print(f"{name}: {len(pts)} points, {pts[0].macs / 1e6:.2f}-{pts[-1].macs / 1e6:.2f} M MACs, "
              f"{pts[0].accuracy:.2f}-{pts[-1].accuracy:.2f} % on calib")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated names (old or new) to process")
    ap.add_argument("--check", metavar="DATA_DIR", nargs="?", const="", help="only compare old vs new logits")
    ap.add_argument("--measure", metavar="DATA_DIR", help="measure/calibrate converted entries on 'calib'")
    ap.add_argument("--recalibrate", action="store_true", help="with --measure: calibrate() instead of measuring the converted points")
    ap.add_argument("--bn-only", action="store_true", help="with --measure: of a CNMM's converted points, measure "
                    "only those with re-estimated BN statistics and the unpruned ones (half the time)")
    ap.add_argument("--mechanisms", help="with --measure: a CNMM's converted points of these mechanisms only, "
                    "comma-separated (e.g. greedy-unit,greedy,edges)")
    ap.add_argument("--force", action="store_true", help="with --measure: measure entries already measured again")
    ap.add_argument("--search", action="append", metavar="KEY=VALUE", default=[],
                    help="with --recalibrate: a keyword of the family's candidate search (value as JSON), repeatable")
    ap.add_argument("--weights-dir", default=str(ROOT / "zoo"))
    ap.add_argument("--meta-dir", default=str(ROOT / "src" / "anycost" / "zoo"))
    a = ap.parse_args(argv)
    olds = list(RENAMES)
    if a.only:
        back = {v: k for k, v in RENAMES.items()}
        want = [s.strip() for s in a.only.split(",") if s.strip()]
        unknown = [s for s in want if s not in RENAMES and s not in back]
        if unknown:
            ap.error(f"unknown names {unknown}")
        olds = [o for o in olds if o in want or RENAMES[o] in want]
    if a.measure:
        from anycost.zoo import get_weights
        # members before the cascades built from them
        measure(sorted((RENAMES[o] for o in olds), key=lambda n: get_weights(n).is_cascade), a.measure, a.recalibrate,
                bn_only=a.bn_only, force=a.force, mechanisms=a.mechanisms.split(",") if a.mechanisms else None, search={k: json.loads(v) for k, v in (x.split("=", 1) for x in a.search)})
        return 0
    if a.check is None:
        convert(olds, Path(a.weights_dir), Path(a.meta_dir))
    data = a.check or None
    if data is None:
        default = ROOT.parent / "shared" / "data"
        data = str(default) if (default / "cifar-10-batches-py").is_dir() else None
    return 1 if check(olds, data) else 0


if __name__ == "__main__":
    sys.exit(main())
