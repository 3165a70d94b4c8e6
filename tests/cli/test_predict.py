"""anycost predict: class, probability, operating point and MACs per image file, with the
model's own normalisation; bad inputs are one-line errors before anything is classified."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import anycost
from anycost.cli import main
from anycost.predict import ImageError, image_files, predict, read_image

STATIC = "resnet8.cpu30_cifar10"
EXITS = "ee_resnet20.heads_cifar10"


def _png(path, size=(32, 32), seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture
def pics(tmp_path):
    d = tmp_path / "pics"
    d.mkdir()
    for i, n in enumerate(["c.png", "a.png", "b.jpg"]):
        _png(d / n, seed=i)
    (d / "notes.txt").write_text("not an image, and not picked from a folder")
    return d


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYCOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANYCOST_ZOO", raising=False)


def _by_hand(model, path, op):
    """The same prediction without predict(): PIL -> 0..1 -> model mean/std -> infer."""
    cfg = model.pretrained_cfg
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    out = model.infer((x - mean) / std, op)
    prob = out.logits.softmax(1)[0]
    return int(prob.argmax()), float(prob.max()), float(out.macs[0])


def test_predict_matches_a_hand_normalised_inference(pics):
    model = anycost.load(EXITS)
    rows = predict(model, [pics])
    assert [r["image"] for r in rows] == [str(pics / n) for n in ("a.png", "b.jpg", "c.png")]  # sorted, .txt skipped
    best = max(model.operating_points(), key=lambda o: o.accuracy)
    for r in rows:
        k, p, macs = _by_hand(model, r["image"], best)
        assert r["operating_point"] == best.name
        assert r["class_index"] == k and r["class"] == model.weights.classes[k]
        assert r["probability"] == pytest.approx(p, abs=1e-5) and 0 < r["probability"] <= 1
        assert r["macs"] == pytest.approx(macs)
    # without normalisation the logits would differ: the model's mean/std really are applied
    raw = model.infer(read_image(rows[0]["image"], (3, 32, 32)).unsqueeze(0), best)
    assert not torch.allclose(raw.logits.softmax(1).max(), torch.tensor(rows[0]["probability"]), atol=1e-4)


def test_op_and_budget_choose_the_point(pics):
    model = anycost.load(EXITS)
    ops = sorted(model.operating_points(), key=lambda o: o.macs)
    cheap = ops[0]
    rows = predict(EXITS, [pics / "a.png"], op=cheap.name)
    assert rows[0]["operating_point"] == cheap.name
    budget = (ops[0].macs + ops[-1].macs) / 2
    want = model.at_budget(budget, mix=False)
    rows = predict(EXITS, [pics], budget=budget)
    assert {r["operating_point"] for r in rows} == {want.name} and want.macs <= budget
    with pytest.raises(KeyError):
        predict(EXITS, [pics], op="no-such-point")
    with pytest.raises(ValueError, match="not both"):
        predict(EXITS, [pics], op=cheap.name, budget=budget)


def test_cli_table_and_json(pics, capsys):
    assert main(["predict", STATIC, str(pics / "a.png"), str(pics / "c.png"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == [str(pics / "a.png"), str(pics / "c.png")]
    assert set(rows[0]) == {"image", "class", "class_index", "probability", "operating_point", "macs"}
    assert rows[0]["operating_point"] == "full" and rows[0]["macs"] == anycost.get_weights(STATIC).macs
    assert main(["predict", STATIC, str(pics)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["image", "class"] and len(out) == 4 and "full" in out[1]


def test_resize_and_greyscale(tmp_path):
    big = _png(tmp_path / "big.png", size=(64, 48))
    grey = _png(tmp_path / "grey.png", mode="L")
    with pytest.raises(ImageError, match=r"big.png: 64x48 pixels, but the model takes 32x32 .*--resize"):
        predict(STATIC, [big])
    (r,) = predict(STATIC, [big], resize=True)
    assert r["image"] == str(big)
    assert read_image(big, (3, 32, 32), resize=True).shape == (3, 32, 32)
    g = read_image(grey, (3, 32, 32))
    assert g.shape == (3, 32, 32) and torch.equal(g[0], g[1])  # greyscale to RGB: equal channels
    assert read_image(grey, (1, 32, 32)).shape == (1, 32, 32)


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("anycost: error:"), err
    return err


def test_bad_inputs_are_one_line_errors_before_any_output(tmp_path, pics, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    fake = tmp_path / "fake.png"
    fake.write_text("this is text")
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (32, 32)).save(gif)
    small = _png(tmp_path / "small.png", size=(16, 16))
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes((pics / "a.png").read_bytes()[:60])
    cases = [(tmp_path / "missing.png", "no such image file or folder"), (empty, "holds no PNG or JPEG images"),
             (fake, "not a readable PNG or JPEG image"), (gif, "a GIF image; predict reads PNG and JPEG"),
             (small, "16x16 pixels, but the model takes 32x32"), (trunc, "not a readable PNG or JPEG")]
    for path, msg in cases:
        assert main(["predict", STATIC, str(pics / "a.png"), str(path)]) == 2
        err = _err(capsys)
        assert str(path) in err and msg in err, err
        assert capsys.readouterr().out == ""  # the good image was not reported either
    assert main(["predict", STATIC, str(pics), "--op", "nope"]) == 2
    assert "nope" in _err(capsys)
    assert main(["predict", STATIC, str(pics), "--budget", "-5"]) == 2
    _err(capsys)
    assert main(["predict", "no_such.model", str(pics)]) == 2
    assert "no_such.model" in _err(capsys)


def test_image_files_keeps_the_given_order(pics):
    files = image_files([pics / "c.png", pics])
    assert [f.name for f in files] == ["c.png", "a.png", "b.jpg", "c.png"]
