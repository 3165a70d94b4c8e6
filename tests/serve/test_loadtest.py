"""anycost loadtest against a fake server (uvicorn in a thread, the digits holdout split):
every request is accounted for, served accuracy and the operating-point mix equal what the
server answered, arrivals are seeded and open loop, timeouts are errors, arguments and
non-loopback URLs are refused, and the record, plot and CLI outputs are written."""

import asyncio
import io
import json
import math
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

from anycost import cli
from anycost.cli import main
from anycost.data import load_dataset
from anycost.records import dumps, loads, read_record
from anycost.serve.loadtest import check_url, plot_loadtest, poisson_schedule, run_loadtest

uvicorn = pytest.importorskip("uvicorn")
starlette = pytest.importorskip("starlette")


class Fake:
    """The /health and /predict contract, with known answers: correct unless the label is a
    multiple of 3, operating point 'small' below label 5 else 'big'; 503 for every
    ``reject_every``-th request, 500 for the request numbers in ``fail``; every decision logged."""

    def __init__(self):
        holdout = load_dataset("digits").get("holdout")
        self.labels = {im.numpy().tobytes(): int(lab) for im, lab in zip(holdout.images, holdout.labels)}
        self.reset()

    def reset(self, reject_every=0, fail=(), delay=0.0, close_every=0):
        self.reject_every, self.fail, self.delay, self.close_every = reject_every, set(fail), delay, close_every
        self.n = self.inflight = self.max_inflight = 0
        self.log = {"200": 0, "503": 0, "500": 0, "correct": 0, "ops": {}, "macs": 0.0}

    def health(self):
        return {"status": "ok", "model": "fake", "family": "test", "input_size": [1, 8, 8],
                "classes": [str(i) for i in range(10)], "dataset": "digits",
                "split": {"val_size": 360, "split_seed": 0},
                "operating_points": [{"name": "small", "macs": 1e6, "accuracy": None},
                                     {"name": "big", "macs": 3e6, "accuracy": None}],
                "slo_ms": 50.0, "pinned": None, "budget": None}

    async def predict(self, body: bytes, ctype: str):
        self.n += 1
        n = self.n
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.reject_every and n % self.reject_every == 0:
                self.log["503"] += 1
                return 503, {"detail": "queue full"}, {"Retry-After": "1"}
            if n in self.fail:
                self.log["500"] += 1
                return 500, {"detail": "boom"}, {}
            if ctype == "image/png":
                pixels = np.asarray(Image.open(io.BytesIO(body)))
            else:
                pixels = np.load(io.BytesIO(body))[0, :, :, 0]
            label = self.labels.get(pixels.tobytes())
            if label is None:
                return 400, {"detail": "not a holdout image"}, {}
            right = label % 3 != 0
            op, macs = ("small", 1e6) if label < 5 else ("big", 3e6)
            self.log["200"] += 1
            self.log["correct"] += right
            self.log["ops"][op] = self.log["ops"].get(op, 0) + 1
            self.log["macs"] += macs
            k = label if right else (label + 1) % 10
            pred = {"class": str(k), "class_index": k, "probability": 0.9, "operating_point": op, "macs": macs}
            close = {"Connection": "close"} if self.close_every and n % self.close_every == 0 else {}
            return 200, {"predictions": [pred], "operating_point": op, "queue_ms": 1.0, "service_ms": 2.0}, close
        finally:
            self.inflight -= 1


@contextmanager
def serving(fake: Fake):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def health(request):
        return JSONResponse(fake.health())

    async def predict(request):
        status, body, headers = await fake.predict(await request.body(), request.headers.get("content-type", ""))
        return JSONResponse(body, status, headers=headers)

    app = Starlette(routes=[Route("/health", health), Route("/predict", predict, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    # a short keep-alive: idle connections are closed under the client, which must cope
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off", access_log=False,
                                           timeout_keep_alive=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def fake():
    f = Fake()
    with serving(f) as url:
        f.url = url
        yield f


@pytest.fixture(scope="module")
def record(fake):
    """Two runs: every 5th request rejected, request 7 fails, every 4th answer closes its connection."""
    fake.reset(reject_every=5, fail={7}, close_every=4)
    rec = run_loadtest(fake.url, rates=[300, 150], requests=40, duration=10, seed=3, capacity=200.0, progress=False)
    rec["fake_log"] = json.loads(json.dumps(fake.log))
    return rec


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_every_request_is_accounted_for_and_answers_are_checked(record):
    runs, log = record["results"]["runs"], record["fake_log"]
    assert [u["rate"] for u in runs] == [300.0, 150.0]
    for u in runs:
        assert u["sent"] == 40 and u["lost"] == 0
        assert u["ok"] + u["rejected"] + u["errors"] == u["sent"]
        assert u["rejected_without_retry_after"] == 0
        lat = u["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert u["offered_load"] == pytest.approx(u["rate"] / 200.0)
        assert u["server_queue_ms_mean"] == 1.0 and u["server_service_ms_mean"] == 2.0
    # the server's request counter runs on across both runs: 80 requests, every 5th rejected, #7 failed
    assert sum(u["rejected"] for u in runs) == log["503"] == 16
    assert [u["error_kinds"] for u in runs] == [{"http_500": 1}, {}]
    assert sum(u["ok"] for u in runs) == log["200"] == 80 - 16 - 1


def test_served_accuracy_and_mix_equal_what_the_server_answered(record):
    runs, log = record["results"]["runs"], record["fake_log"]
    ok = sum(u["ok"] for u in runs)
    assert sum(u["correct"] for u in runs) == log["correct"]
    for u in runs:
        assert u["accuracy"] == pytest.approx(100.0 * u["correct"] / u["ok"])
        lo, hi = u["accuracy_ci95"]
        assert lo < u["accuracy"] < hi and u["n"] == u["ok"]
        assert list(u["operating_points"]) == [k for k in ("small", "big") if k in u["operating_points"]]
        assert sum(u["operating_points"].values()) == pytest.approx(1.0)
    for op, count in log["ops"].items():
        assert sum(u["operating_points"].get(op, 0) * u["ok"] for u in runs) == pytest.approx(count)
    assert sum(u["macs_mean"] * u["ok"] for u in runs) == pytest.approx(log["macs"])
    assert 0 < log["correct"] < ok  # the fake answers some wrongly


def test_npy_bodies_and_a_url_with_localhost(fake):
    fake.reset()
    url = fake.url.replace("127.0.0.1", "localhost")
    (u,) = run_loadtest(url, rates=[200], requests=15, duration=5, fmt="npy", progress=False)["results"]["runs"]
    assert u["ok"] == 15 == fake.log["200"] and u["correct"] == fake.log["correct"]


def test_arrivals_are_seeded_poisson_and_do_not_wait_for_answers(fake):
    a = poisson_schedule(50.0, 1000, 0.4, np.random.default_rng([0, 0]))
    assert np.array_equal(a, poisson_schedule(50.0, 1000, 0.4, np.random.default_rng([0, 0])))
    assert not np.array_equal(a, poisson_schedule(50.0, 1000, 0.4, np.random.default_rng([1, 0])))
    gaps = np.diff(poisson_schedule(100.0, 20000, 1e9, np.random.default_rng(0)))
    assert np.mean(gaps) == pytest.approx(0.01, rel=0.05) and np.std(gaps) == pytest.approx(0.01, rel=0.05)
    assert len(poisson_schedule(1000.0, 7, 10.0, np.random.default_rng(0))) == 7  # requests ends the run first

    fake.reset(delay=0.3)
    (u,) = run_loadtest(fake.url, rates=[50], requests=1000, duration=0.4, seed=0, progress=False)["results"]["runs"]
    # every scheduled arrival was sent, though each answer took 0.3 s: a closed loop would send 2
    assert u["sent"] == len(a) >= 10 and u["ok"] == u["sent"]
    assert fake.max_inflight >= 5
    assert u["latency_ms"]["p50"] >= 300


def test_a_timeout_is_an_error_not_a_lost_request(fake):
    fake.reset(delay=1.0)
    rec = run_loadtest(fake.url, rates=[20], requests=3, duration=5, timeout=0.2, progress=False)
    (u,) = rec["results"]["runs"]
    assert u["sent"] == 3 and u["errors"] == 3 and u["error_kinds"] == {"timeout": 3} and u["lost"] == 0
    assert u["ok"] == 0 and u["accuracy"] is None and u["latency_ms"]["p95"] is None
    assert u["latency_ms_answered"]["n"] == 0
    assert loads(dumps(rec))["results"]["runs"][0]["errors"] == 3


def test_no_server_is_a_clear_error():
    with pytest.raises(ValueError, match="no anycost server answers"):
        run_loadtest(f"http://127.0.0.1:{_closed_port()}", rates=[10], requests=1, duration=1, progress=False)


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com:8000", "http://0.0.0.0:8000",
                                 "http://192.168.1.2", "https://127.0.0.1:8000", "ftp://127.0.0.1", "", "127.0.0.1:8000"])
def test_only_loopback_http_urls_are_accepted(url):
    with pytest.raises(ValueError):
        check_url(url)
    with pytest.raises(ValueError):
        run_loadtest(url, rates=[10], requests=1, duration=1, progress=False)


def test_loopback_urls():
    assert check_url("http://127.0.0.1:8000") == ("127.0.0.1", 8000, "", "127.0.0.1:8000")
    assert check_url("http://127.1.2.3:9/api/")[:3] == ("127.1.2.3", 9, "/api")
    assert check_url("http://[::1]:8000")[:2] == ("::1", 8000)
    assert check_url("http://localhost")[:2] == ("localhost", 80)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(rates=[]), "rates is empty"), (dict(rates=[0]), "0"), (dict(rates=[-5.0]), "-5.0"),
    (dict(rates=[math.nan]), "nan"), (dict(rates="10"), "'10'"), (dict(requests=0), "requests"),
    (dict(requests=1.5), "1.5"), (dict(requests=True), "True"), (dict(duration=0), "duration"),
    (dict(duration=math.inf), "inf"), (dict(fmt="jpg"), "'jpg'"), (dict(split="nope"), "'nope'"),
    (dict(timeout=-1), "timeout"), (dict(connections=0), "connections"), (dict(capacity=-2.0), "capacity"),
    (dict(slo_ms=0), "slo_ms"), (dict(seed=-1), "seed"),
])
def test_bad_arguments_are_refused_before_any_request(kwargs, needle):
    args = dict(rates=[10], requests=5, duration=1)
    args.update(kwargs)
    with pytest.raises(ValueError) as e:
        run_loadtest(f"http://127.0.0.1:{_closed_port()}", progress=False, **args)
    assert needle in str(e.value) and "no anycost server" not in str(e.value)


def test_record_is_strict_json_and_plots(record, tmp_path):
    rec = loads(dumps(record))
    assert rec["kind"] == "loadtest" and rec["seed"] == 3
    assert rec["config"]["slo_ms"] == 50.0 and rec["config"]["capacity"] == 200.0 and rec["config"]["label"] == "fake"
    assert rec["results"]["server"]["model"] == "fake"
    other = json.loads(json.dumps(rec))
    other["config"]["label"] = "other"
    assert plot_loadtest([rec, other], tmp_path / "rel.png", title="t").stat().st_size > 1000
    other["config"]["capacity"] = None  # no capacity on one record: the x axis falls back to req/s
    assert plot_loadtest([rec, other], tmp_path / "abs.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="not a load-test record"):
        plot_loadtest([dict(rec, kind="eval")], tmp_path / "x.png")


def _cli(argv, monkeypatch):
    return main(argv)


def test_cli_writes_the_record_and_refuses_an_existing_out(fake, tmp_path, monkeypatch, capsys):
    fake.reset()
    out, png = tmp_path / "lt.json", tmp_path / "lt.png"
    argv = ["loadtest", fake.url, "--rate", "200", "100", "--requests", "10", "--capacity", "150", "--label", "x",
            "--out", str(out), "--plot", str(png), "--no-progress"]
    assert _cli(argv, monkeypatch) == 0
    text = capsys.readouterr().out
    assert "p95 ms" in text and "record:" in text and png.stat().st_size > 1000
    rec = read_record(out)
    assert rec["kind"] == "loadtest" and [u["ok"] for u in rec["results"]["runs"]] == [10, 10]
    before = out.read_bytes()
    assert _cli(argv, monkeypatch) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anycost: error: --out") and "--overwrite" in err and len(err.splitlines()) == 1
    assert out.read_bytes() == before
    assert _cli([*argv, "--overwrite", "--compare", str(out)], monkeypatch) == 0


def test_cli_argument_errors_are_one_line(fake, tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        _cli(["loadtest", fake.url, "--requests", "5"], monkeypatch)  # --rate is required
    assert e.value.code == 2
    capsys.readouterr()
    assert _cli(["loadtest", "http://10.1.2.3:8000", "--rate", "5"], monkeypatch) == 2
    assert "loopback" in capsys.readouterr().err
    assert _cli(["loadtest", fake.url, "--rate", "5", "-1", "--no-progress"], monkeypatch) == 2
    assert "-1" in capsys.readouterr().err


def test_waiting_for_a_connection_counts_as_latency(fake):
    fake.reset(delay=0.1)
    t = poisson_schedule(100.0, 5, 10.0, np.random.default_rng([0, 0]))
    (u,) = run_loadtest(fake.url, rates=[100], requests=5, duration=10, connections=1, progress=False)["results"]["runs"]
    assert u["ok"] == 5 and fake.max_inflight == 1 and u["connection_waits"] >= 1
    # one connection serialises the answers: the 5th is due at t[4] but done no sooner than 0.5 s after t[0]
    assert u["latency_ms"]["max"] >= 1000 * (0.5 - (t[4] - t[0]))
    assert u["send_lag_ms"]["max"] >= 1000 * (0.4 - (t[4] - t[0]))
