"""The HTTP API in process (FastAPI TestClient): answers, the metrics, every bad input, the
413 and 503 paths, and the engine's batching and draining."""

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

import anycost  # noqa: E402
from anycost.serve.app import ServeConfig, build_service, create_app, decode_images  # noqa: E402
from anycost.serve.controller import LatencyTable  # noqa: E402
from anycost.serve.engine import Overloaded, serving_points  # noqa: E402

NAME = "ee_resnet20.heads_cifar10"


@pytest.fixture(scope="module")
def model():
    return anycost.load(NAME)


def service(model, **cfg):
    config = ServeConfig(**{"max_batch": 8, "max_points": 3, **cfg})
    pts = serving_points(model, config.max_points) if config.op is None else [model.find_op(config.op)]
    fake = LatencyTable([1, 8], {p.name: [0.001, 0.002 + p.macs * 1e-10] for p in pts})
    return build_service(model, config, name=NAME, table=fake)


def png(seed=0, size=(32, 32), fmt="PNG", mode="RGB"):
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).convert(mode).save(b, fmt)
    return a, b.getvalue()


def npy(a):
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def by_hand(model, a, op):
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    x = torch.from_numpy(a).permute(2, 0, 1).float().div(255).unsqueeze(0)
    out = model.infer((x - mean) / std, op)
    return int(out.logits.argmax(1)), float(out.macs[0])


def test_predict_answers_like_infer_with_class_point_and_macs(model):
    s = service(model)
    a, body = png(1)
    with TestClient(create_app(s)) as client:
        r = client.post("/predict", content=body, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        out = r.json()
        (pred,) = out["predictions"]
        k, macs = by_hand(model, a, model.find_op(pred["operating_point"]))
        assert pred["class_index"] == k and pred["class"] == model.pretrained_cfg["classes"][k]
        assert pred["macs"] == pytest.approx(macs) and 0 < pred["probability"] <= 1
        # no latency target: the most accurate serving point
        assert pred["operating_point"] == max(serving_points(model, 3), key=lambda p: p.accuracy).name
        assert out["queue_ms"] >= 0 and out["service_ms"] > 0


def test_several_images_as_npy_and_as_multipart_share_one_point(model):
    s = service(model)
    imgs = [png(i) for i in range(3)]
    with TestClient(create_app(s)) as client:
        r = client.post("/predict", content=npy(np.stack([a for a, _ in imgs])),
                        headers={"content-type": "application/x-npy"})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
        r2 = client.post("/predict", files=[("image", (f"{i}.png", b, "image/png")) for i, (_, b) in enumerate(imgs)])
        assert r2.status_code == 200
        assert [p["class_index"] for p in r2.json()["predictions"]] == [p["class_index"] for p in r.json()["predictions"]]
        assert len({p["operating_point"] for p in r2.json()["predictions"]}) == 1
        jpeg = client.post("/predict", content=png(0, fmt="JPEG")[1], headers={"content-type": "image/jpeg"})
        assert jpeg.status_code == 200


def test_health_and_prometheus_metrics(model):
    s = service(model, slo_ms=100.0)
    with TestClient(create_app(s)) as client:
        h = client.get("/health").json()
        assert h["status"] == "ok" and h["model"] == NAME and h["input_size"] == [3, 32, 32]
        assert h["slo_ms"] == 100.0 and len(h["operating_points"]) == 3 and h["dataset"] == "cifar10"
        for i in range(3):
            assert client.post("/predict", content=png(i)[1], headers={"content-type": "image/png"}).status_code == 200
        client.post("/predict", content=b"garbage", headers={"content-type": "image/png"})
        text = client.get("/metrics").text
    assert "# TYPE anycost_request_latency_seconds histogram" in text
    assert 'anycost_requests_total{status="200"} 3' in text and 'anycost_requests_total{status="400"} 1' in text
    assert "anycost_request_latency_seconds_count 3" in text and "anycost_queue_depth 0" in text
    served = [ln for ln in text.splitlines() if ln.startswith("anycost_images_total{")]
    assert sum(float(ln.split()[-1]) for ln in served) == 3
    macs = float(next(ln for ln in text.splitlines() if ln.startswith("anycost_macs_total")).split()[-1])
    window = float(next(ln for ln in text.splitlines() if ln.startswith("anycost_window_mean_macs")).split()[-1])
    assert macs > 0 and window == pytest.approx(macs / 3)  # three images, all inside the default window


@pytest.mark.parametrize("body,ctype,status,words", [
    (b"", "image/png", 400, "empty body"),
    (b"not an image", "image/png", 400, "not a readable"),
    (png(0, size=(16, 16))[1], "image/png", 422, "16x16"),
    (png(0, fmt="GIF")[1], "image/png", 415, "GIF"),
    (b"hello", "text/plain", 415, "text/plain"),
    (b"hello", "", 415, "missing"),
    (npy(np.zeros((32, 32, 3), np.float32)), "application/x-npy", 422, "uint8"),
    (npy(np.zeros((2, 32, 32, 1), np.uint8)), "application/x-npy", 422, "(2, 32, 32, 1)"),
    (npy(np.zeros((9, 32, 32, 3), np.uint8)), "application/x-npy", 422, "at most 8"),
    (b"\x93NUMPY broken", "application/x-npy", 400, ".npy"),
])
def test_bad_inputs_get_a_4xx_with_a_message(model, body, ctype, status, words):
    s = service(model)
    with TestClient(create_app(s)) as client:
        r = client.post("/predict", content=body, headers={"content-type": ctype})
    assert r.status_code == status and words in r.json()["detail"]


def test_body_over_the_limit_is_413_with_or_without_a_length(model):
    s = service(model, max_body_bytes=1000)
    big = png(0)[1] + b"\0" * 5000
    with TestClient(create_app(s)) as client:
        assert client.post("/predict", content=big, headers={"content-type": "image/png"}).status_code == 413

        def chunks():  # no Content-Length: the limit applies while reading
            for i in range(0, len(big), 500):
                yield big[i:i + 500]

        r = client.post("/predict", content=chunks(), headers={"content-type": "image/png"})
        assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_full_queue_answers_503_with_retry_after_and_accepted_requests_still_finish(model, monkeypatch):
    s = service(model, max_batch=2, max_queue=2, max_wait_ms=0.0)
    entered, gate = threading.Event(), threading.Event()
    real = s.engine.model.infer

    def held(*a, **k):  # the worker blocks in its first batch until the test lets it go
        entered.set()
        gate.wait(30)
        return real(*a, **k)

    monkeypatch.setattr(s.engine.model, "infer", held)  # the model is shared by the module's tests
    body = png(0)[1]
    with TestClient(create_app(s)) as client:
        answers = []

        def send():
            answers.append(client.post("/predict", content=body, headers={"content-type": "image/png"}).status_code)

        threads = [threading.Thread(target=send)]
        threads[0].start()
        assert entered.wait(10)  # the first request is in the (held) batch; the queue is empty
        for _ in range(2):  # two more fill the queue, one image each
            threads.append(threading.Thread(target=send))
            threads[-1].start()
            n = len(threads) - 1
            deadline = time.monotonic() + 10
            while s.engine.queued_images < n and time.monotonic() < deadline:
                time.sleep(0.01)
        assert s.engine.queued_images == 2
        r = client.post("/predict", content=body, headers={"content-type": "image/png"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1 and "queue full" in r.json()["detail"]
        gate.set()
        for t in threads:
            t.join(30)
    assert sorted(answers) == [200] * 3
    assert s.engine.metrics.value("rejected_total", reason="queue_full") == 1


def test_engine_batches_up_to_max_batch_never_splits_a_request_and_drains_on_stop(model):
    s = service(model, max_batch=4, max_wait_ms=200.0)
    e = s.engine
    x = torch.rand(3, 3, 32, 32)
    futs = [e.enqueue(x), e.enqueue(x[:1]), e.enqueue(x[:2])]  # 3 + 1 fill one batch; the 2 go in the next
    e.start()
    e.stop()  # refuses new work, finishes what it accepted
    res = [f.result(10) for f in futs]
    assert [r["batch_size"] for r in res] == [4, 4, 2]
    assert [len(r["predictions"]) for r in res] == [3, 1, 2]
    with pytest.raises(Overloaded, match="shutting down"):
        e.enqueue(x[:1])
    with pytest.raises(ValueError, match="1 to 4 images"):
        s.engine.enqueue(torch.rand(5, 3, 32, 32))


def test_a_failing_batch_fails_its_requests_but_not_the_worker(model, monkeypatch):
    s = service(model)
    real, calls = s.engine.model.infer, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(s.engine.model, "infer", flaky)  # the model is shared by the module's tests
    e = s.engine.start()
    with pytest.raises(RuntimeError, match="boom"):
        e.submit_sync(torch.rand(1, 3, 32, 32), 10)
    assert e.submit_sync(torch.rand(1, 3, 32, 32), 10)["predictions"]
    e.stop()
    assert e.metrics.value("errors_total", kind="RuntimeError") == 1


def test_the_ray_entry_point_routes_by_path(model):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    s = service(model)
    s.engine.start()
    app = Starlette(routes=[Mount("/", app=lambda scope, receive, send: _asgi(s, scope, receive, send))])
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.post("/predict", content=png(0)[1], headers={"content-type": "image/png"}).status_code == 200
        assert client.get("/predict").status_code == 405
        assert client.get("/nowhere").status_code == 404
        assert "anycost_requests_total" in client.get("/metrics").text
    s.engine.stop()


async def _asgi(s, scope, receive, send):
    from starlette.requests import Request

    response = await s.handle(Request(scope, receive))
    await response(scope, receive, send)


@pytest.mark.parametrize("kw", [{"max_batch": 0}, {"max_queue": 2, "max_batch": 4}, {"max_wait_ms": -1.0},
                                {"slo_ms": 0.0}, {"budget": float("nan")}, {"op": "exit0", "slo_ms": 10.0},
                                {"max_images": 9, "max_batch": 8}, {"budget_window": 0}, {"budget_window": 1.5}])
def test_config_refuses_nonsense(kw):
    with pytest.raises(ValueError):
        ServeConfig(**kw)


def test_decode_greyscale_npy_without_a_channel_axis():
    x = decode_images(npy(np.full((2, 8, 8), 255, np.uint8)), "application/x-npy", (1, 8, 8), 4)
    assert x.shape == (2, 1, 8, 8) and float(x.max()) == 1.0


def test_a_cancelled_request_is_dropped_and_fails_nothing_else(model):
    s = service(model, max_batch=4, max_wait_ms=0.0)
    e = s.engine
    x = torch.rand(1, 3, 32, 32)
    gone, kept = e.enqueue(x), e.enqueue(x)
    assert gone.cancel()  # the client went away while its request was queued
    e.start()
    assert kept.result(10)["batch_size"] == 1  # served alone: the cancelled one took no place
    e.stop()
    assert gone.cancelled() and e.metrics.value("errors_total", kind="InvalidStateError") == 0
    assert e.queued_images == 0


def test_flush_stops_waiting_for_a_batch_to_fill(model):
    s = service(model, max_batch=8, max_wait_ms=600_000.0)  # would wait ten minutes for a full batch
    e = s.engine.start()
    f = e.enqueue(torch.rand(1, 3, 32, 32))
    e.flush()
    assert f.result(60)["batch_size"] == 1
    e.stop()


def test_multipart_ignores_form_fields_and_refuses_empty_files(model):
    s = service(model)
    with TestClient(create_app(s)) as client:
        r = client.post("/predict", data={"note": "hello"}, files=[("image", ("a.png", png(0)[1], "image/png"))])
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
        r = client.post("/predict", data={"note": "hello"}, files=[("image", ("a.png", b"", "image/png"))])
        assert r.status_code == 400 and "empty file" in r.json()["detail"]
        r = client.post("/predict", data={"note": "hello"}, files=[("x", ("x.txt", b"", "text/plain"))])
        assert r.status_code == 400


def test_an_npy_header_declaring_a_huge_array_is_refused_before_allocating(model):
    import numpy.lib.format as npf

    b = io.BytesIO()
    npf.write_array_header_1_0(b, {"descr": "|u1", "fortran_order": False, "shape": (10**6, 32, 32, 3)})
    s = service(model)
    with TestClient(create_app(s)) as client:
        r = client.post("/predict", content=b.getvalue() + b"\0" * 100, headers={"content-type": "application/x-npy"})
    assert r.status_code == 400 and "more than the body holds" in r.json()["detail"]


def test_a_failing_model_answers_500_and_is_counted(model, monkeypatch):
    s = service(model)

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(s.engine.model, "infer", broken)  # the model is shared by the module's tests
    with TestClient(create_app(s)) as client:
        r = client.post("/predict", content=png(0)[1], headers={"content-type": "image/png"})
        text = client.get("/metrics").text
    assert r.status_code == 500 and "boom" in r.json()["detail"]
    assert 'anycost_requests_total{status="500"} 1' in text and 'anycost_errors_total{kind="RuntimeError"} 1' in text


def test_a_big_body_decodes_off_the_event_loop(model, monkeypatch):
    import anycost.serve.app as app_mod

    monkeypatch.setattr(app_mod, "INLINE_DECODE_BYTES", 10)  # every body counts as big
    s = service(model)
    with TestClient(create_app(s)) as client:
        r = client.post("/predict", content=png(3)[1], headers={"content-type": "image/png"})
    assert r.status_code == 200
