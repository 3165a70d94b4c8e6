"""Writing to the zoo: names are checked, shipped entries are read-only, taken names need
overwrite, and the default target is the user zoo ($ANYCOST_HOME/zoo), which is searched
after a given folder and before the package."""

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import anycost
from anycost.zoo import (ZooNameError, check_name, check_writable, export_cascade, export_to_zoo, get_weights,
                         list_weights, load, publish_entry, read_index, save_model, shipped_names, update_entry,
                         user_dir, weights_path)
from anycost.zoo import store

SHIPPED = "resnet8.cpu30_cifar10"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from anycost.train import TrainConfig, train

    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(model="resnet8", model_kwargs={"widths": [4, 8, 16]}, dataset="digits", epochs=1,
                      progress=False, out_dir=str(out), channels_last=False))
    return out


def _copy(name: str, src: str = SHIPPED):
    """A shipped model's weights under a new name (an entry of the user's own)."""
    m = load(src)
    arch, tag = name.split(".", 1)
    return m, m.weights.replace(name=name, tag=tag, aliases=[], default=False)


# ---------------------------------------------------------------------------- names

GOOD = ["resnet20.mine_cifar10", "cascade.r8_r20_v1.2", "test_ee_resnet.w16_digits", "a.b", "x-y.z-0_9"]
BAD = ["../../x", "resnet8.../../x", "resnet8.a/b", "resnet8.a\\b", "/abs.x", "resnet8", "Resnet8.mine",
       "resnet8.Mine", "resnet8.mine cifar", "resnet8.", ".resnet8", "resnet8.-x", "-r.x", "resnet8..x", "",
       "resnet8.mine\n", "r." + "x" * 100, "résnet.x"]


@pytest.mark.parametrize("name", GOOD)
def test_valid_names(name):
    arch, tag = check_name(name)
    assert f"{arch}.{tag}" == name and "." not in arch


@pytest.mark.parametrize("name", BAD)
def test_invalid_names_are_refused(name):
    with pytest.raises(ZooNameError, match="invalid zoo name .*arch.tag"):
        check_name(name)


def test_every_shipped_name_is_valid():
    for n in shipped_names():
        check_name(n)


_ALLOWED = string.ascii_lowercase + string.digits + "_-."


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=120))
def test_check_name_accepts_exactly_the_documented_form(name):
    arch, dot, tag = name.partition(".")
    ok = (0 < len(name) <= 100 and all(c in _ALLOWED for c in name) and dot and arch and tag
          and all(c not in "." for c in arch) and arch[0] not in "-." and tag[0] not in "-.")
    if ok:
        assert check_name(name) == (arch, tag)
    else:
        with pytest.raises(ZooNameError):
            check_name(name)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=_ALLOWED, min_size=1, max_size=30), st.sampled_from("/\\"),
       st.text(alphabet=_ALLOWED, max_size=30))
def test_a_path_separator_is_never_a_name(a, sep, b):
    with pytest.raises(ZooNameError, match="path separator"):
        check_name(a + sep + b)


# ---------------------------------------------------------------------------- where writes go


def test_default_target_is_the_user_zoo_and_it_loads_by_name(tmp_path):
    m, w = _copy("resnet8.mine_cifar10")
    w2 = publish_entry(w, m.state_dict(), m.op_state())
    assert user_dir() == tmp_path / "home" / "zoo"
    assert (user_dir() / "resnet8.mine_cifar10.safetensors").is_file()
    assert read_index(user_dir())["entries"]["resnet8.mine_cifar10"]["arch"] == "resnet8"
    assert w2.url is None  # a user entry is not on the release server
    back = anycost.load("resnet8.mine_cifar10")
    assert back.weights.sha256 == w2.sha256 and back.pretrained_cfg["source"] == str(user_dir() / w2.file)
    assert "resnet8.mine_cifar10" in [x.name for x in list_weights()]
    assert "resnet8.mine_cifar10" not in read_index()["entries"]  # the package's index is untouched


def test_lookup_order_given_folder_then_user_zoo_then_package(tmp_path):
    m, w = _copy("resnet8.mine_cifar10")
    publish_entry(w, m.state_dict(), m.op_state(), url="https://user.example/")
    mine = tmp_path / "mine"
    publish_entry(w, m.state_dict(), m.op_state(), directory=mine, url="https://folder.example/")
    assert get_weights("resnet8.mine_cifar10").url == "https://user.example/"
    assert get_weights("resnet8.mine_cifar10", zoo_dir=mine).url == "https://folder.example/"
    assert weights_path(get_weights("resnet8.mine_cifar10", mine), mine).parent == mine
    assert [d for d in store._record_dirs(mine)] == [mine, user_dir(), store.package_dir()]
    assert get_weights(SHIPPED).url == store.RELEASE_URL + f"{SHIPPED}.safetensors"


def test_run_export_defaults_to_the_user_zoo(run):
    p = export_to_zoo(run, "resnet8.tiny_digits")
    assert p == user_dir() / "resnet8.tiny_digits.safetensors" and p.is_file()
    assert load("resnet8.tiny_digits").weights.dataset == "digits"


# ---------------------------------------------------------------------------- refusals


def _listing(d):
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()} if d.is_dir() else {}


def test_shipped_entries_and_aliases_are_never_written(run, tmp_path):
    m, w = _copy(SHIPPED)
    for target in (None, tmp_path / "z"):
        for name in (SHIPPED, "resnet8.cifar10"):  # an entry and an old name (alias) of it
            for overwrite in (False, True):
                with pytest.raises(ZooNameError, match="shipped entr.*read-only"):
                    export_to_zoo(run, name, target, overwrite=overwrite)
                with pytest.raises(ZooNameError, match="shipped"):
                    save_model(m, name, target, overwrite=overwrite)
    with pytest.raises(ZooNameError, match="shipped"):
        publish_entry(w, m.state_dict(), overwrite=True)
    with pytest.raises(ZooNameError, match="shipped"):
        export_cascade("cascade.r8_r20_cifar10", [SHIPPED, "resnet20.cpu30_cifar10"], [], overwrite=True)
    with pytest.raises(ZooNameError, match="shipped entry: shipped entries are read-only"):
        update_entry(SHIPPED, m)
    # nor shadowed by an alias of a user entry
    _, mine = _copy("resnet8.mine_cifar10")
    with pytest.raises(ZooNameError, match="alias 'resnet8.cifar10'.*shipped"):
        publish_entry(mine.replace(aliases=["resnet8.cifar10"]), m.state_dict())
    assert not _listing(user_dir()) and not (tmp_path / "z").exists()  # nothing written anywhere


def test_a_taken_name_needs_overwrite_and_is_left_intact(run):
    m, w = _copy("resnet8.mine_cifar10")
    w1 = publish_entry(w, m.state_dict(), m.op_state())
    before = _listing(user_dir())
    with pytest.raises(ZooNameError, match="already exists in .*--overwrite"):
        export_to_zoo(run, "resnet8.mine_cifar10")
    with pytest.raises(ZooNameError, match="already exists"):
        save_model(m, "resnet8.mine_cifar10")
    assert _listing(user_dir()) == before and get_weights("resnet8.mine_cifar10").sha256 == w1.sha256
    export_to_zoo(run, "resnet8.mine_cifar10", overwrite=True)
    assert get_weights("resnet8.mine_cifar10").dataset == "digits"  # replaced, as asked


def test_a_stray_weights_file_counts_as_taken(tmp_path):
    m, w = _copy("resnet8.mine_cifar10")
    d = tmp_path / "z"
    d.mkdir()
    (d / "resnet8.mine_cifar10.safetensors").write_bytes(b"someone's file")
    with pytest.raises(ZooNameError, match="already exists"):
        publish_entry(w, m.state_dict(), directory=d)
    assert (d / "resnet8.mine_cifar10.safetensors").read_bytes() == b"someone's file"


def test_update_entry_rewrites_a_user_entry_where_it_is(tmp_path):
    m, w = _copy("ee_resnet20.mine_cifar10", "ee_resnet20.heads_cifar10")
    publish_entry(w, m.state_dict(), m.op_state())
    m2 = load("ee_resnet20.mine_cifar10")
    m2.set_operating_points(m2.operating_points()[:2])
    w2 = update_entry("ee_resnet20.mine_cifar10", m2)
    assert [o["name"] for o in get_weights("ee_resnet20.mine_cifar10").operating_points] == \
        [o.name for o in m2.operating_points()] == [o["name"] for o in w2.operating_points]
    assert (user_dir() / "ee_resnet20.mine_cifar10.json").is_file()


def test_cascade_exports_check_their_name(tmp_path):
    with pytest.raises(ValueError, match="cascade.TAG"):
        export_cascade("resnet8.two_cifar10", [SHIPPED, "resnet20.cpu30_cifar10"], [])
    with pytest.raises(ZooNameError, match="invalid"):
        export_cascade("cascade/../../x", [SHIPPED, "resnet20.cpu30_cifar10"], [])
    p = export_cascade("cascade.two_cifar10", [SHIPPED, "resnet20.cpu30_cifar10"], [])
    assert p == user_dir() / "cascade.two_cifar10.json"
    assert load("cascade.two_cifar10").weights.members == [SHIPPED, "resnet20.cpu30_cifar10"]
    with pytest.raises(ZooNameError, match="already exists"):
        export_cascade("cascade.two_cifar10", [SHIPPED, "resnet20.cpu30_cifar10"], [])


def test_check_writable_names_its_folder(tmp_path):
    assert check_writable("resnet8.new_cifar10", tmp_path) == tmp_path
    with pytest.raises(ZooNameError, match="choose another tag, e.g. 'resnet8.mine_cpu30_cifar10'"):
        check_writable(SHIPPED, tmp_path, overwrite=True)


def test_write_record_refuses_a_path_as_name(tmp_path):
    _, w = _copy("resnet8.mine_cifar10")
    bad = w.replace(name="resnet8.a/../../b", tag="a/../../b")
    with pytest.raises(ZooNameError, match="path separator"):
        store.write_record(bad, tmp_path / "z")
    assert not (tmp_path / "z").exists() and not (tmp_path / "b.json").exists()
