"""``anycost serve`` as a process: argument errors, a real loopback load run, graceful
shutdown with requests in flight, and the Ray Serve deployment with two replicas."""

import http.client
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from anycost.cli import main  # noqa: E402

NAME = "ee_resnet20.heads_cifar10"
SMALL = ["--max-batch", "8", "--max-points", "2", "--threads", "1"]


@pytest.mark.parametrize("args,words", [
    (["--replicas", "2"], "needs --ray"),
    (["--port", "70000"], "--port"),
    (["--op", "exit0", "--budget", "1e6"], "no --budget"),
    (["--budget", "1e6", "--budget-window", "-1"], "--budget-window must be >= 0"),
    (["--max-batch", "0"], "max_batch"),
    (["--max-queue", "4"], "max_queue"),
    (["--max-body-mb", "0"], "--max-body-mb"),
    (["--slo-ms", "-5"], "slo_ms"),
    (["--device", "cuda:7"], "cuda"),
])
def test_serve_argument_mistakes_are_one_line_errors(args, words, capsys):
    assert main(["serve", NAME, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_serve_refuses_an_unknown_point_with_one_line(capsys):
    assert main(["serve", NAME, "--op", "nope", "--port", "0"]) == 2
    assert "no operating point named 'nope'" in capsys.readouterr().err


class Server:
    """``anycost serve`` in a subprocess, on a free port it reports."""

    def __init__(self, *args):
        self.p = subprocess.Popen([sys.executable, "-m", "anycost.cli", "serve", NAME, "--port", "0", *SMALL, *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.p.kill()
            raise AssertionError(f"no address in {line!r}: {self.p.stderr.read()}")
        self.port = int(m.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def post(self, body, results):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request("POST", "/predict", body, {"Content-Type": "application/x-npy"})
        r = c.getresponse()
        results.append((r.status, r.read()))

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        out, err = self.p.communicate(timeout=60)
        return self.p.returncode, err


def _npy(seed):
    import io

    b = io.BytesIO()
    np.save(b, np.random.default_rng(seed).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8))
    return b.getvalue()


@pytest.mark.slow
def test_sigterm_answers_every_accepted_request_before_exit():
    # requests wait for a batch that never fills (ten minutes, longer than the 30 s grace):
    # they are in flight at SIGTERM, and only the shutdown's flush gets them answered
    s = Server("--max-wait-ms", "600000")
    try:
        results = []
        threads = [threading.Thread(target=s.post, args=(_npy(i), results)) for i in range(5)]
        for t in threads:
            t.start()
        time.sleep(0.5)
    finally:
        rc, err = s.stop()
    for t in threads:
        t.join(60)
    assert [st for st, _ in results] == [200] * 5
    assert "stopped after answering 5 requests" in err
    assert rc in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down


@pytest.mark.slow
def test_a_short_real_loopback_load_run(cifar_test_only, tmp_path):
    from anycost.serve.loadtest import plot_loadtest, run_loadtest

    s = Server("--slo-ms", "500")
    try:
        rec = run_loadtest(s.url, rates=[40.0], requests=30, duration=5.0, data_dir=str(cifar_test_only),
                           split="test", progress=False)
    finally:
        s.stop()
    (run,) = rec["results"]["runs"]
    assert run["sent"] == 30 and run["ok"] == 30 and run["errors"] == 0 and run["lost"] == 0
    served = {p["name"] for p in rec["results"]["server"]["operating_points"]}
    assert set(run["operating_points"]) <= served and abs(sum(run["operating_points"].values()) - 1) < 1e-9
    assert 0 <= run["accuracy"] <= 100 and run["latency_ms"]["p95"] > 0
    assert plot_loadtest([rec], tmp_path / "load.png").stat().st_size > 1000


@pytest.mark.slow
def test_ray_serve_with_two_replicas(cifar_test_only):
    pytest.importorskip("ray.serve")
    from anycost.serve.loadtest import run_loadtest

    p = subprocess.Popen([sys.executable, "-m", "anycost.cli", "serve", NAME, "--port", "0", *SMALL, "--ray",
                          "--replicas", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        m = None
        deadline = time.monotonic() + 300
        while m is None and time.monotonic() < deadline and p.poll() is None:
            m = re.search(r"anycost serve: .* on http://127\.0\.0\.1:(\d+) with Ray Serve, 2 replicas",
                          p.stdout.readline())
        assert m, p.stderr.read() if p.poll() is not None else "no address"
        url = f"http://127.0.0.1:{m.group(1)}"
        rec = run_loadtest(url, rates=[20.0], requests=20, duration=5.0, data_dir=str(cifar_test_only), split="test",
                           progress=False, timeout=60)
        (run,) = rec["results"]["runs"]
        assert run["ok"] == 20 and run["lost"] == 0 and run["errors"] == 0
        c = http.client.HTTPConnection("127.0.0.1", int(m.group(1)), timeout=30)
        c.request("GET", "/metrics")
        assert "anycost_requests_total" in c.getresponse().read().decode()
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
    assert p.returncode == 0
