"""The HTTP side of ``anycost serve``: request decoding, limits, and the FastAPI app.

:class:`Service` holds one model's engine and answers ``POST /predict``, ``GET /health`` and
``GET /metrics`` as plain starlette requests, so that the FastAPI app (:func:`create_app`)
and the Ray Serve replicas (:mod:`anycost.serve.ray_serve`) share every line of it.
:func:`build_service` loads nothing: it takes a model, measures its latency table and wires
the controller, so that Python users can serve a model they already hold.
"""


import asyncio
import contextlib
import email.parser
import email.policy
import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from anycost.core import DynamicModel
from anycost.serve.controller import Controller, LatencyTable
from anycost.serve.engine import Engine, Overloaded, measure_latency, serving_points

__all__ = ["ServeConfig", "Service", "HTTPError", "build_service", "create_app", "decode_images"]

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
IMAGE_ERROR_STATUS = {"unreadable": 400, "format": 415, "size": 422}
NPY_TYPES = ("application/x-npy", "application/octet-stream")
INLINE_DECODE_BYTES = 64 << 10  # smaller bodies decode on the event loop: a thread hop costs more


@dataclass(frozen=True)
class ServeConfig:
    """What ``anycost serve`` takes besides the model. Times in milliseconds, sizes in images
    (``max_body_bytes`` in bytes)."""

    slo_ms: float | None = None  # p95 latency target; None: always the most accurate point
    op: str | None = None  # pin one point (a static baseline)
    budget: float | None = None  # cap on mean MACs per input over the last budget_window inputs
    budget_window: int | None = 10_000  # None: the mean since start-up
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_images: int | None = None  # per request; default max_batch
    max_body_bytes: int = 8 << 20
    max_points: int = 8  # points the controller chooses among (the thinned frontier)
    headroom: float = 0.7
    device: str = "cpu"

    def __post_init__(self):
        def bad(what, v):
            raise ValueError(f"{what} must be {v}")

        for name in ("max_batch", "max_queue", "max_body_bytes", "max_points"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                bad(name, f"a positive integer, got {v!r}")
        if self.max_queue < self.max_batch:
            bad("max_queue", f">= max_batch ({self.max_batch}), got {self.max_queue}")
        if self.max_images is not None and not 1 <= self.max_images <= self.max_batch:
            bad("max_images", f"between 1 and max_batch ({self.max_batch}), got {self.max_images}")
        if not (self.max_wait_ms >= 0 and math.isfinite(self.max_wait_ms)):
            bad("max_wait_ms", f"a finite number >= 0, got {self.max_wait_ms!r}")
        bw = self.budget_window
        if bw is not None and (isinstance(bw, bool) or not isinstance(bw, int) or bw < 1):
            bad("budget_window", f"a positive integer or None, got {bw!r}")
        for name in ("slo_ms", "budget"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                bad(name, f"a positive finite number, got {v!r}")
        if not (isinstance(self.headroom, (int, float)) and 0 < self.headroom <= 1):
            bad("headroom", f"in (0, 1], got {self.headroom!r}")
        if self.op is not None and (self.slo_ms is not None or self.budget is not None):
            raise ValueError("a pinned point (op) takes no latency target or budget: the point is fixed")


class HTTPError(Exception):
    """A request the server answers with a 4xx: ``status``, a one-line ``detail``, extra headers."""

    def __init__(self, status: int, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}


def _decode_one(data: bytes, input_size: tuple[int, int, int], what: str) -> np.ndarray:
    """One PNG / JPEG as uint8 (H, W, C), its size checked before any pixel is decoded."""
    from anycost.predict import ImageError, decode_image

    try:
        return decode_image(io.BytesIO(data), input_size, name=what, formats_note="send PNG or JPEG", size_note="")
    except ImageError as e:
        raise HTTPError(IMAGE_ERROR_STATUS[e.reason], str(e)) from None


def _decode_npy(data: bytes, input_size: tuple[int, int, int]) -> np.ndarray:
    c, h, w = input_size
    f = io.BytesIO(data)
    try:
        # the header first: numpy would allocate whatever shape it declares before reading
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except Exception:  # numpy raises ValueError, OSError or EOFError on a bad header
        raise HTTPError(400, "body is not a .npy array (numpy.save format, no pickles)") from None
    if dtype != np.uint8:
        raise HTTPError(422, f"the array must be uint8 pixels, got {dtype}")
    if math.prod(shape) > len(data):
        raise HTTPError(400, f"the .npy header declares shape {tuple(shape)}, more than the body holds")
    try:
        a = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception:
        raise HTTPError(400, "body is not a .npy array (numpy.save format, no pickles)") from None
    if c == 1 and a.ndim in (2, 3) and a.shape[-2:] == (h, w):
        a = a[..., None]  # greyscale without a channel axis
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[1:] != (h, w, c):
        raise HTTPError(422, f"array of shape {tuple(a.shape)}; the model takes ({h}, {w}, {c}) or "
                             f"(N, {h}, {w}, {c}) uint8 images")
    return a


def _multipart(data: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """The file parts of a multipart body (those with a file name or an image type); other
    form fields are ignored, an empty file is an error."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + data)
    if not msg.is_multipart():
        raise HTTPError(400, "malformed multipart body")
    parts = []
    for i, part in enumerate(msg.iter_parts()):
        name = part.get_filename()
        if name is None and part.get_content_maintype() != "image":
            continue
        payload = part.get_payload(decode=True)
        if not payload:
            raise HTTPError(400, f"{name or f'part {i + 1}'}: empty file")
        parts.append((name or f"part {i + 1}", payload))
    return parts


def decode_images(data: bytes, content_type: str, input_size: tuple[int, int, int], max_images: int) -> torch.Tensor:
    """A request body as a (k, C, H, W) float batch in 0..1 pixel units. ``HTTPError`` (4xx)
    for anything else: 415 for another type, 400 for bytes that do not decode, 422 for
    the wrong size, dtype or too many images."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if not data:
        raise HTTPError(400, "empty body: send a PNG / JPEG image, a uint8 .npy array or multipart images")
    if ctype in IMAGE_TYPES:
        arr = _decode_one(data, input_size, "image")[None]
    elif ctype in NPY_TYPES:
        arr = _decode_npy(data, input_size)
    elif ctype == "multipart/form-data":
        parts = _multipart(data, content_type)
        if not parts:
            raise HTTPError(400, "multipart body holds no image files")
        if len(parts) > max_images:
            raise HTTPError(422, f"{len(parts)} images in one request; at most {max_images}")
        arr = np.stack([_decode_one(b, input_size, name) for name, b in parts])
    else:
        raise HTTPError(415, f"content type {ctype or 'missing'!r}; send image/png, image/jpeg, "
                             "application/x-npy or multipart/form-data")
    if arr.shape[0] > max_images:
        raise HTTPError(422, f"{arr.shape[0]} images in one request; at most {max_images}")
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2))).float().div_(255.0)


class Service:
    """One model served: the engine plus what ``/health`` reports."""

    def __init__(self, engine: Engine, info: dict, config: ServeConfig):
        self.engine, self.info, self.config = engine, info, config
        self.input_size = tuple(info["input_size"])
        self.max_images = config.max_images or config.max_batch

    async def _body(self, request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise HTTPError(400, "bad Content-Length") from None
            if size > limit:
                raise HTTPError(413, f"body of {size} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds bodies sent without a length
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"body over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def predict(self, request) -> tuple[int, dict, dict]:
        """(status, JSON body, headers) for ``POST /predict``."""
        arrived = self.engine.clock()  # reading and decoding count against the target too
        ctype = request.headers.get("content-type", "")
        try:
            data = await self._body(request)
            if len(data) <= INLINE_DECODE_BYTES:
                x = decode_images(data, ctype, self.input_size, self.max_images)
            else:  # a big body would stall the event loop: accepting, refusing, /health
                x = await asyncio.to_thread(decode_images, data, ctype, self.input_size, self.max_images)
        except HTTPError as e:
            return e.status, {"detail": e.detail}, e.headers
        except Exception as e:  # a bug, not the client's fault: 500, counted
            self.engine.metrics.inc("errors_total", kind=type(e).__name__)
            return 500, {"detail": f"internal error while decoding ({type(e).__name__})"}, {}
        try:
            return 200, await self.engine.submit(x, arrived), {}
        except Overloaded as e:
            return 503, {"detail": str(e)}, {"Retry-After": str(int(math.ceil(e.retry_after)))}
        except Exception as e:  # the batch failed (the engine counted it)
            return 500, {"detail": f"inference failed ({type(e).__name__}: {e})"}, {}

    def health(self) -> tuple[int, dict]:
        ok = self.engine.running
        return (200 if ok else 503), {**self.info, "status": "ok" if ok else "stopping",
                                      "queue_depth": self.engine.queued_images}

    def metrics_text(self) -> str:
        return self.engine.metrics.render()

    async def handle(self, request):
        """Answer a starlette request by path (what a Ray Serve replica calls)."""
        from starlette.responses import JSONResponse, PlainTextResponse

        path, method = request.url.path.rstrip("/") or "/", request.method
        routes = {"/predict": "POST", "/health": "GET", "/metrics": "GET"}
        if path not in routes:
            return JSONResponse({"detail": f"no route {path}; try POST /predict, GET /health, GET /metrics"}, 404)
        if method != routes[path]:
            return JSONResponse({"detail": f"{path} takes {routes[path]}"}, 405)
        if path == "/metrics":
            return PlainTextResponse(self.metrics_text(), media_type="text/plain; version=0.0.4")
        if path == "/health":
            status, body = self.health()
            return JSONResponse(body, status)
        status, body, headers = await self.predict(request)
        self.engine.metrics.inc("requests_total", status=str(status))
        return JSONResponse(body, status, headers=headers)


def _normaliser(model: DynamicModel, device: str):
    from anycost.predict import model_normalisation

    size, mean, std = model_normalisation(model)
    mean, std = mean.to(device), std.to(device)
    return size, lambda x: (x - mean) / std


def build_service(model: DynamicModel, config: ServeConfig = ServeConfig(), *, sample: torch.Tensor | None = None,
                  name: str | None = None, table: LatencyTable | None = None) -> Service:
    """Measure ``model``'s latency table on ``sample`` (uint8 (N, C, H, W) images; None:
    uniform noise, which early exits route differently from real images: the table then
    corrects itself online) and wire engine, controller and service. Not started. A given
    ``table`` (times for every serving point) is used instead of measuring."""
    if not isinstance(model, DynamicModel):
        raise ValueError(f"{type(model).__name__} is not an anycost model with operating points")
    model = model.to(config.device).eval()
    size, norm = _normaliser(model, config.device)
    points = serving_points(model, config.max_points)
    if config.op is not None:
        points = [model.find_op(config.op)]
        if not points[0].calibrated:
            raise ValueError(f"point {config.op!r} is not calibrated (no MACs / accuracy to serve it by)")
    if sample is None:
        sample = torch.randint(0, 256, (config.max_batch, *size), generator=torch.Generator().manual_seed(0),
                               dtype=torch.uint8)
    if tuple(sample.shape[1:]) != tuple(size):
        raise ValueError(f"latency sample images are {tuple(sample.shape[1:])}, the model takes {tuple(size)}")
    x = norm(sample[: max(config.max_batch, 1)].float().div(255.0).to(config.device))
    sizes = sorted({1, min(4, config.max_batch), min(16, config.max_batch), config.max_batch})
    if table is None:
        table = measure_latency(model, points, x, sizes)
    controller = Controller(points, table, max_batch=config.max_batch,
                            slo_s=None if config.slo_ms is None else config.slo_ms / 1000.0,
                            pinned=config.op, budget=config.budget, budget_window=config.budget_window,
                            headroom=config.headroom)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    classes = list(getattr(getattr(model, "weights", None), "classes", None) or cfg.get("classes") or [])
    engine = Engine(model, controller, norm, max_batch=config.max_batch, max_wait_s=config.max_wait_ms / 1000.0,
                    max_queue=config.max_queue, device=config.device, classes=classes)
    sp = cfg.get("split") or None
    info = {"model": name or cfg.get("name") or type(model).__name__, "family": getattr(model, "family", "dynamic"),
            "input_size": list(size), "classes": classes, "dataset": cfg.get("dataset"),
            "split": {"val_size": sp.get("val_size"), "split_seed": sp.get("split_seed") or 0} if sp else None,
            "operating_points": [{"name": p.name, "macs": p.macs, "accuracy": p.accuracy} for p in controller.points],
            "slo_ms": config.slo_ms, "pinned": config.op, "budget": config.budget,
            "budget_window": config.budget_window,
            "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms, "max_queue": config.max_queue,
            "latency_table": table.to_dict()}
    return Service(engine, info, config)


# no `from __future__ import annotations` here: FastAPI reads the route annotations at run time
def create_app(service: Service, on_stop=None):
    """The FastAPI app: routes call the service; the lifespan starts the engine and, at
    shutdown (after the server has stopped accepting and answered what it accepted), stops
    it, finishing anything still queued; then calls ``on_stop(service)`` if given."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.engine.stop)
            if on_stop is not None:
                on_stop(service)

    app = FastAPI(title="anycost", summary="An anycost model served at a latency target", lifespan=lifespan)

    @app.post("/predict", summary="Classify one image or several (PNG / JPEG / uint8 .npy / multipart)")
    async def predict(request: Request):
        status, body, headers = await service.predict(request)
        service.engine.metrics.inc("requests_total", status=str(status))
        return JSONResponse(body, status, headers=headers)

    @app.get("/health", summary="The model, its points, the controller's settings and whether it serves")
    async def health():
        status, body = service.health()
        return JSONResponse(body, status)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics():
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    app.state.service = service
    return app
