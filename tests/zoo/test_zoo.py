"""The zoo: arch.tag entries, typed Weights records, float16 safetensors outside the package,
sha256-verified lookup (zoo_dir / repo folder / cache / download), aliases, create_model."""

import dataclasses
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import anycost
from anycost.checkpoint import CheckpointError
from anycost.core import DynamicModel
from anycost.cost import module_macs
from anycost.zoo import (IntegrityError, Weights, ZooError, export_to_zoo, get_weights, list_weights, load,
                         load_model_file, publish_entry, read_index, resolve_model, weights_path)
from anycost.zoo import store

INDEX = read_index()
NAMES = sorted(INDEX["entries"])
ALIASES = dict(INDEX["aliases"])
FAST = ["resnet20.cpu30_cifar10", "cnmm_d8.cifar10", "ee_resnet20.heads_cifar10", "cascade.r8_r20_cifar10"]


@pytest.fixture
def no_pickle(monkeypatch):
    """Zoo loads must never unpickle: torch.load raises while this fixture is active."""
    def refuse(*a, **k):
        raise AssertionError("torch.load called while loading a zoo entry")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No repository folder, an empty cache under tmp, no $ANYCOST_ZOO / $ANYCOST_ZOO_URL."""
    monkeypatch.setattr(store, "repo_zoo_dir", lambda: None)
    monkeypatch.setenv("ANYCOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANYCOST_ZOO", raising=False)
    monkeypatch.delenv("ANYCOST_ZOO_URL", raising=False)
    return tmp_path


def _repo_file(name: str) -> Path:
    return store.repo_zoo_dir() / get_weights(name).file


# ---------------------------------------------------------------------------- the committed entries


def test_index_covers_the_old_zoo():
    assert len(NAMES) >= 42 and len(ALIASES) == 33  # the 42 migrated entries and any shipped since
    assert set(ALIASES.values()) <= set(NAMES) and not set(ALIASES) & set(NAMES)
    # names are arch.tag with a registered arch
    for n in NAMES:
        arch, tag = n.split(".", 1)
        assert arch in anycost.list_models(), n
        assert tag.endswith("cifar10")
    assert ALIASES["cnmm_r6_kd.cifar10"] == "cnmm_r6.kd_cifar10"
    assert ALIASES["resnet20.cifar10"] == "resnet20.cpu30_cifar10"
    assert ALIASES["select_resnet8_resnet20.cifar10"] == "cascade.r8_r20_cifar10"


def test_package_ships_no_weights():
    pkg = store.package_dir()
    assert not list(pkg.glob("*.pt")) and not list(pkg.glob("*.safetensors"))
    assert sum(p.stat().st_size for p in pkg.glob("*.json")) < 5_000_000
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert "zoo/*.pt" not in text


def test_weights_files_verified_and_float16():
    from safetensors import safe_open

    for w in list_weights():
        if w.is_cascade:
            assert w.file is None and w.sha256 is None
            continue
        p = weights_path(w, download=False)
        assert p.parent == store.repo_zoo_dir() and p.name == f"{w.name}.safetensors"
        assert p.stat().st_size == w.size and store.file_sha256(p) == w.sha256
        with safe_open(str(p), "pt") as f:
            assert f.metadata()["format"] == store.WEIGHTS_FORMAT
            for k in f.keys():
                t = f.get_tensor(k)
                if t.is_floating_point() and not k.startswith("op/"):
                    assert t.dtype == torch.float16, (w.name, k)


def test_typed_record():
    w = get_weights("cnmm_r6.kd_cifar10")
    assert isinstance(w, Weights) and (w.arch, w.tag, w.family) == ("cnmm_r6", "kd_cifar10", "cnmm")
    assert w.file == "cnmm_r6.kd_cifar10.safetensors" and w.dtype == "float16"
    assert w.url == store.RELEASE_URL + w.file
    assert w.num_classes == 10 and w.input_size == (3, 32, 32) and len(w.classes) == 10
    assert len(w.normalization["mean"]) == 3 and len(w.normalization["std"]) == 3
    assert w.dataset == "cifar10" and w.split == {"val_size": None, "split_seed": 0}
    assert w.metrics["top1"] == {"value": 87.7, "split": "val"} and w.top1() == (87.7, "val")
    assert w.epochs == 40 and w.macs == 92455552 and w.aliases == ["cnmm_r6_kd.cifar10"]
    assert w.train_augment == {"augment": True, "flip": True, "pad": None, "cutout": 0}
    # CNMM +bn points: statistics moved to op state, params hold only bn=True
    bn = [o for o in w.operating_points if o["params"].get("bn")]
    assert len(bn) >= 1 and all(o["params"]["bn"] is True for o in bn)  # points with their own BN statistics
    assert all(not o["params"]["mechanism"].endswith("+bn") for o in w.operating_points)
    assert len(json.dumps(w.to_dict())) < 200_000
    assert get_weights("resnet20.cpu_cifar10").recipe == "cpu" and get_weights("resnet8.cpu30_cifar10").recipe == "cpu30"
    c = get_weights("cascade.r8_r14_r20_cifar10")
    assert c.is_cascade and c.members == ["resnet8.cpu30_cifar10", "resnet14.cpu30_cifar10", "resnet20.cpu30_cifar10"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.tag = "x"
    assert Weights.from_dict(w.to_dict()) == w
    with pytest.raises(ZooError, match="unknown fields"):
        Weights.from_dict(dict(w.to_dict(), colour="red"))
    with pytest.raises(ValueError, match="arch.tag"):
        w.replace(name="cnmm_r6_kd.cifar10")
    with pytest.raises(ValueError, match="value', 'split'"):
        w.replace(metrics={"top1": 87.7})


def test_every_metric_names_its_split():
    for w in list_weights():
        for m in w.metrics.values():
            assert m["split"] in ("val", "calib", "holdout", "test")
        assert w.default in (True, False)


def _check_loaded(name: str, m):
    w = get_weights(name)
    assert not m.training and m.weights == w
    cfg = m.pretrained_cfg
    assert cfg["name"] == name and cfg["mean"] == w.normalization["mean"] and cfg["input_size"] == w.input_size
    if not w.is_cascade:
        assert cfg["sha256"] == w.sha256
        assert module_macs(m, w.input_size) == w.macs
    if isinstance(m, DynamicModel):
        shipped = sorted(o.name for o in m.__dict__.get("_anycost_ops", []))
        assert shipped == sorted(o["name"] for o in w.operating_points)
    out = m(torch.randn(2, *w.input_size))
    out = getattr(out, "logits", out)
    assert out.shape == (2, w.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", FAST)
def test_load_entry(name, no_pickle):
    _check_loaded(name, anycost.load(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n not in FAST])
def test_load_every_entry(name, no_pickle):
    _check_loaded(name, anycost.load(name))


def test_cascade_members_are_verified_entries(no_pickle):
    m = anycost.load("cascade.r8_r20_cifar10")
    ref = anycost.load("resnet20.cpu30_cifar10")
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(m.nets[-1](x), ref(x))
    assert m.weights.members == ["resnet8.cpu30_cifar10", "resnet20.cpu30_cifar10"]


def test_op_state_loaded_from_file(no_pickle):
    m = anycost.load("cnmm_d8.cifar10")
    _, ops = store.read_weights(_repo_file("cnmm_d8.cifar10"))
    st = m.op_state()
    assert st and set(st) == set(ops)
    assert set(st) == {o.name for o in m.operating_points() if o.get("bn")}  # only shipped points keep state
    for name, d in ops.items():
        assert d.keys() == st[name].keys() and all(torch.equal(d[k], st[name][k]) for k in d)
    # a +bn point really runs with its own statistics: it differs from the same pruning without them
    from anycost.core import OperatingPoint

    bn = next(o for o in m.operating_points() if o.get("bn") and o["budget_fraction"] < 1)
    plain = OperatingPoint("plain", dict(bn.params, bn=False))
    x = torch.randn(4, 3, 32, 32)
    assert not torch.equal(m.infer(x, bn).logits, m.infer(x, plain).logits)


def test_loading_without_points():
    m = anycost.load("cnmm_d8.cifar10", operating_points=False)
    assert not m.__dict__.get("_anycost_ops") and not m.op_state()


# ---------------------------------------------------------------------------- names, aliases, create_model


def test_aliases_warn_and_load_the_new_entry(recwarn):
    for old, new in ALIASES.items():
        with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated; use '{new}'"):
            assert get_weights(old).name == new
    with pytest.warns(DeprecationWarning, match="cnmm_r6.kd_cifar10"):
        m = anycost.load("cnmm_r6_kd.cifar10", operating_points=False)
    assert m.weights.name == "cnmm_r6.kd_cifar10"


def test_new_names_do_not_warn():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in NAMES:
            get_weights(n)
        anycost.load("resnet8.cpu30_cifar10")


def test_unknown_name():
    with pytest.raises(KeyError, match="no zoo entry 'resnet20.imagenet'"):
        anycost.load("resnet20.imagenet")
    with pytest.raises(KeyError, match="did you mean"):
        get_weights("cnmm_r6.kd_cifar1")


def test_create_model_pretrained():
    m = anycost.create_model("resnet20", pretrained="cpu_cifar10")
    assert m.weights.name == "resnet20.cpu_cifar10" and not m.training
    assert anycost.create_model("resnet20", pretrained=True).weights.name == "resnet20.cpu30_cifar10"
    assert anycost.create_model("cnmm_r9", pretrained=True, operating_points=False).weights.name == "cnmm_r9.kd_cifar10"
    # matching kwargs are fine; conflicting ones are a clear error
    assert anycost.create_model("resnet8", pretrained="cpu30_cifar10", num_classes=10).weights.num_classes == 10
    with pytest.raises(ValueError, match=r"'resnet8.cpu30_cifar10' was trained with num_classes=10; cannot load it "
                                         r"with num_classes=100"):
        anycost.create_model("resnet8", pretrained="cpu30_cifar10", num_classes=100)
    with pytest.raises(ValueError, match="trained with target=0.5"):
        anycost.create_model("lnet_resnet20", pretrained="cifar10", target=0.3)
    with pytest.raises(KeyError, match="tags of resnet20: cpu30_cifar10, cpu_cifar10"):
        anycost.create_model("resnet20", pretrained="imagenet")
    with pytest.raises(KeyError, match=r"use create_model\('cnmm_r6', pretrained='kd_cifar10'\)"):
        anycost.create_model("cnmm_r6_kd", pretrained="cifar10")
    with pytest.raises(KeyError, match="no default"):
        anycost.create_model("cascade", pretrained=True)
    with pytest.warns(DeprecationWarning, match="resnet20.cpu30_cifar10"):  # the old create_model spelling
        assert anycost.create_model("resnet20", pretrained="cifar10").weights.name == "resnet20.cpu30_cifar10"
    untrained = anycost.create_model("resnet8", num_classes=100)
    assert not hasattr(untrained, "weights") and untrained.fc.out_features == 100


def test_registry_does_not_import_the_zoo():
    code = ("import sys, anycost.models as m; m.create_model('resnet8'); "
            "assert 'anycost.zoo' not in sys.modules, 'registry imported the zoo'\n"
            "try:\n m.create_model('resnet8', pretrained=True)\nexcept ValueError as e:\n"
            " assert 'anycost.create_model' in str(e)\nelse:\n raise SystemExit('no error')\n"
            "assert 'anycost.zoo' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert anycost.create_model is anycost.zoo.create_model and anycost.load is anycost.zoo.load


# ---------------------------------------------------------------------------- finding and downloading


def test_missing_without_download(isolated):
    with pytest.raises(ZooError, match="resnet8.cpu30_cifar10.safetensors.*not found"):
        anycost.load("resnet8.cpu30_cifar10", download=False)


def test_zoo_dir_and_env_folder_first(isolated, monkeypatch, no_pickle):
    src = Path(__file__).resolve().parents[2] / "zoo" / "resnet8.cpu30_cifar10.safetensors"
    d = isolated / "mine"
    d.mkdir()
    shutil.copy(src, d / src.name)
    assert anycost.load("resnet8.cpu30_cifar10", zoo_dir=d).pretrained_cfg["source"] == str(d / src.name)
    monkeypatch.setenv("ANYCOST_ZOO", str(d))
    assert anycost.load("resnet8.cpu30_cifar10").pretrained_cfg["source"] == str(d / src.name)
    # a corrupt local copy is an error naming the file, not a silent load (nor a fall-through)
    raw = bytearray((d / src.name).read_bytes())
    raw[-100] ^= 0xFF
    (d / src.name).write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=f"{d / src.name}: sha256 .* expects"):
        anycost.load("resnet8.cpu30_cifar10")
    (d / src.name).write_bytes(bytes(raw[:-10]))
    with pytest.raises(IntegrityError, match=f"{d / src.name}: {len(raw) - 10} bytes, but zoo entry "
                                             f"'resnet8.cpu30_cifar10' expects {len(raw)}"):
        anycost.load("resnet8.cpu30_cifar10")


def test_download_file_url_into_cache(isolated, monkeypatch, no_pickle):
    name = "resnet8.cpu30_cifar10"
    serve = isolated / "release"
    serve.mkdir()
    shutil.copy(_real(name), serve / f"{name}.safetensors")
    w = get_weights(name).replace(url=(serve / f"{name}.safetensors").as_uri())
    p = weights_path(w)  # the entry's own url
    cached = isolated / "home" / "weights" / f"{name}.safetensors"
    assert p == cached and store.file_sha256(p) == w.sha256
    # $ANYCOST_ZOO_URL + file, then served from the cache without the source
    (isolated / "home" / "weights" / f"{name}.safetensors").unlink()
    monkeypatch.setenv("ANYCOST_ZOO_URL", serve.as_uri())
    m = anycost.load(name)
    assert m.pretrained_cfg["source"] == str(cached)
    shutil.rmtree(serve)
    assert anycost.load(name).pretrained_cfg["source"] == str(cached)


def _real(name: str) -> Path:
    return Path(__file__).resolve().parents[2] / "zoo" / f"{name}.safetensors"


@pytest.fixture
def http_dir(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/zoo-v1"
    srv.shutdown()
    srv.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def test_download_over_http(isolated, http_dir, monkeypatch, no_pickle):
    root, base = http_dir
    (root / "zoo-v1").mkdir()
    for n in ("resnet8.cpu30_cifar10", "resnet20.cpu30_cifar10"):
        shutil.copy(_real(n), root / "zoo-v1" / f"{n}.safetensors")
    monkeypatch.setenv("ANYCOST_ZOO_URL", base)
    m = anycost.load("cascade.r8_r20_cifar10")  # both members fetched, verified and cached
    cache = isolated / "home" / "weights"
    assert sorted(p.name for p in cache.iterdir()) == ["resnet20.cpu30_cifar10.safetensors",
                                                       "resnet8.cpu30_cifar10.safetensors"]
    assert m.weights.name == "cascade.r8_r20_cifar10"


def test_corrupt_download_rejected_and_not_cached(isolated, http_dir, monkeypatch):
    root, base = http_dir
    (root / "zoo-v1").mkdir()
    name = "resnet8.cpu30_cifar10"
    raw = bytearray(_real(name).read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size, one bit flipped
    (root / "zoo-v1" / f"{name}.safetensors").write_bytes(bytes(raw))
    monkeypatch.setenv("ANYCOST_ZOO_URL", base)
    with pytest.raises(IntegrityError, match=f"download of {base}/{name}.safetensors: sha256"):
        anycost.load(name)
    cache = isolated / "home" / "weights"
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing kept, no .part left
    (root / "zoo-v1" / f"{name}.safetensors").write_bytes(bytes(raw[:1000]))  # truncated
    with pytest.raises(IntegrityError, match="1000 bytes"):
        anycost.load(name)
    assert not cache.exists() or list(cache.iterdir()) == []
    (root / "zoo-v1" / f"{name}.safetensors").unlink()  # 404
    with pytest.raises(ZooError, match="could not download 'resnet8.cpu30_cifar10'.*HTTP"):
        anycost.load(name)


def test_corrupt_cache_is_an_error(isolated):
    name = "resnet8.cpu30_cifar10"
    cache = isolated / "home" / "weights"
    cache.mkdir(parents=True)
    (cache / f"{name}.safetensors").write_bytes(b"x" * get_weights(name).size)
    with pytest.raises(IntegrityError, match=f"{cache / name}.safetensors: sha256"):
        anycost.load(name, download=False)


# ---------------------------------------------------------------------------- safetensors I/O


def test_safetensors_op_state_round_trip(tmp_path, no_pickle):
    state = {"a.weight": torch.randn(3, 4).half(), "a.num_batches_tracked": torch.tensor(7)}
    ops = {"edges+bn 12.5%": {"blocks.0.bn1.running_mean": torch.randn(5)}, "maxprob>=0.9": {"k": torch.arange(3.0)}}
    p = store.save_weights(tmp_path / "x.safetensors", state, ops)
    s2, o2 = store.read_weights(p)
    assert s2.keys() == state.keys() and all(torch.equal(s2[k], state[k]) for k in state)
    assert o2.keys() == ops.keys() and all(torch.equal(o2[n][k], ops[n][k]) for n in ops for k in ops[n])
    with pytest.raises(ValueError, match="without '/'"):
        store.save_weights(tmp_path / "y.safetensors", state, {"a/b": {"k": torch.zeros(1)}})
    with pytest.raises(ValueError, match="collides"):
        store.save_weights(tmp_path / "y.safetensors", {"op/x": torch.zeros(1)})
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(ZooError, match="unreadable safetensors"):
        store.read_weights(tmp_path / "bad.safetensors")


def test_publish_and_reload_model_with_op_state(tmp_path, no_pickle):
    """A CNMM's per-point statistics survive publish -> load, and its +bn points run the same."""
    src = anycost.load("cnmm_d8.cifar10")
    w = src.weights.replace(name="cnmm_d8.copy_cifar10", tag="copy_cifar10", aliases=[], default=False)
    w2 = publish_entry(w, src.state_dict(), src.op_state(), directory=tmp_path, url="file:///nowhere")
    assert (tmp_path / "cnmm_d8.copy_cifar10.safetensors").stat().st_size == w2.size
    assert read_index(tmp_path)["entries"]["cnmm_d8.copy_cifar10"]["arch"] == "cnmm_d8"
    m = anycost.load("cnmm_d8.copy_cifar10", zoo_dir=tmp_path)
    assert m.weights.sha256 == w2.sha256 and m.weights.url == "file:///nowhere"
    x = torch.randn(4, 3, 32, 32)
    bn = next(o for o in src.operating_points() if o.get("bn") and o["budget_fraction"] < 1)
    assert torch.equal(m.infer(x, bn.name).logits, src.infer(x, bn.name).logits)
    assert m.op_state().keys() == src.op_state().keys()
    # the record beside the file also loads the file directly
    assert load_model_file(tmp_path / "cnmm_d8.copy_cifar10.safetensors").weights.name == "cnmm_d8.copy_cifar10"
    # the package's entries stay visible next to the local folder's
    assert "resnet8.cpu30_cifar10" in [x.name for x in list_weights(zoo_dir=tmp_path)]


# ---------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from anycost.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(model="test_resnet", dataset="digits", epochs=1, progress=False, out_dir=str(out),
                      channels_last=False))
    return out


def test_export_roundtrip(tiny_run, tmp_path):
    p = export_to_zoo(tiny_run, "test_resnet.tiny_digits", tmp_path)
    assert p == tmp_path / "test_resnet.tiny_digits.safetensors"
    w = get_weights("test_resnet.tiny_digits", zoo_dir=tmp_path)
    assert w.arch == "test_resnet" and w.size == p.stat().st_size and w.dataset == "digits"
    assert w.metrics["top1"]["split"] == "val" and w.epochs == 1
    assert w.train_augment == {"augment": True, "flip": True, "pad": None, "cutout": 0}
    m = load("test_resnet.tiny_digits", zoo_dir=tmp_path)
    ref = load_model_file(tiny_run)  # the run folder (last.pt)
    assert w.macs == module_macs(m, (1, 8, 8)) and not m.training and m.pretrained_cfg["num_classes"] == 10
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(m(x), ref(x), atol=0.05)  # float16 storage changes the logits only slightly
    assert torch.equal(resolve_model(str(p))(x), m(x))
    with pytest.raises(ValueError, match="arch.tag"):
        export_to_zoo(tiny_run, "tiny", tmp_path)
    with pytest.raises(ValueError, match="must start with 'test_resnet.'"):
        export_to_zoo(tiny_run, "resnet20.tiny_digits", tmp_path)


def test_mismatched_and_corrupt_checkpoints(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="trained with num_classes=10"):
        load_model_file(tiny_run / "last.pt", num_classes=100)
    ck = torch.load(tiny_run / "last.pt", weights_only=True)
    ck["meta"]["model_name"] = "resnet14"  # more blocks: keys missing from the file
    torch.save(ck, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match="does not match the model: .*missing keys"):
        load_model_file(tmp_path / "wrong.pt")
    torch.save({"format": "something-else"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an anycost training checkpoint"):
        load_model_file(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model_file(tmp_path / "garbage.pt")


def test_resolve_model_specs(tiny_run):
    assert resolve_model("resnet8.cpu30_cifar10").weights.name == "resnet8.cpu30_cifar10"
    with pytest.warns(DeprecationWarning):
        assert resolve_model("resnet8.cifar10").weights.name == "resnet8.cpu30_cifar10"
    assert resolve_model(str(tiny_run)).weights.arch == "test_resnet"
    with pytest.raises(KeyError, match="neither a file, a run folder nor a zoo entry"):
        resolve_model("no/such/thing")


def test_save_model_and_build_cascade(tmp_path):
    from anycost.zoo import build_cascade, save_model

    m = anycost.load("ee_resnet20.heads_cifar10")
    m.set_operating_points(m.operating_points()[:3])  # stands in for a re-calibration
    p = save_model(m, "ee_resnet20.mine_cifar10", tmp_path)
    back = load("ee_resnet20.mine_cifar10", zoo_dir=tmp_path)
    assert p.is_file() and [o.name for o in back.operating_points()] == [o.name for o in m.operating_points()]
    assert back.weights.provenance["derived_from"] == "ee_resnet20.heads_cifar10"
    with pytest.raises(ValueError, match="must start with 'ee_resnet20.'"):
        save_model(m, "resnet20.mine_cifar10", tmp_path)
    c = build_cascade(["resnet8.cpu30_cifar10", "resnet20.cpu30_cifar10"])
    save_model(c, "cascade.mine_cifar10", tmp_path)
    c2 = load("cascade.mine_cifar10", zoo_dir=tmp_path)
    assert c2.weights.members == ["resnet8.cpu30_cifar10", "resnet20.cpu30_cifar10"]


def test_cli_eval_reads_a_zoo_dir_entry_and_verifies_its_hash(tmp_path, capsys, no_pickle, cifar_dir):
    """`anycost eval NAME --zoo-dir DIR` finds an entry that only DIR has, verifies it by
    sha256 and evaluates it; once the file is changed it is refused."""
    import json as _json

    from anycost.cli import main

    src = anycost.load("resnet8.cpu30_cifar10")
    w = src.weights.replace(name="resnet8.local_cifar10", tag="local_cifar10", aliases=[], default=False)
    w2 = publish_entry(w, src.state_dict(), src.op_state(), directory=tmp_path / "zoo", url=None)
    args = ["eval", "resnet8.local_cifar10", "--data-dir", str(cifar_dir), "--split", "test", "--no-record", "--json"]
    assert main(args) == 2 and "resnet8.local_cifar10" in capsys.readouterr().err  # not in the default zoo
    assert main(args + ["--zoo-dir", str(tmp_path / "zoo")]) == 0
    out = _json.loads(capsys.readouterr().out)
    assert out["checkpoint_sha256"] == w2.sha256 and out["n"] == 30
    f = tmp_path / "zoo" / "resnet8.local_cifar10.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\x00" * 8)
    assert main(args + ["--zoo-dir", str(tmp_path / "zoo")]) == 2
    assert "sha256" in capsys.readouterr().err


def test_cascade_members_must_share_inputs_up_to_rounding():
    """resnet8.cpu_cifar10's normalisation differs from resnet20.cpu_cifar10's in the 14th
    digit (two loader versions): the same inputs. A real difference is refused."""
    from anycost.zoo import ZooError, _same_input, build_cascade

    a, b = get_weights("resnet8.cpu_cifar10"), get_weights("resnet20.cpu_cifar10")
    assert a.normalization != b.normalization and _same_input(a, b)
    assert build_cascade(["resnet8.cpu_cifar10", "resnet20.cpu_cifar10"]).weights.members
    shifted = b.replace(normalization={"mean": [v + 1e-3 for v in b.normalization["mean"]], "std": b.normalization["std"]})
    assert not _same_input(a, shifted) and not _same_input(a, b.replace(num_classes=100))
    with pytest.raises(ZooError, match="disagree"):
        from anycost.zoo import _build_cascade

        _build_cascade(get_weights("cascade.r8_r20_cifar10"), [a, shifted], [{}, {}])
