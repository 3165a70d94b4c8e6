"""The serving engine: a bounded queue, dynamic batching and one inference thread.

Requests (one or more images each) wait in a queue bounded in images; one worker thread
gathers them into a batch of up to ``max_batch`` images, waiting at most ``max_wait_s``
after the oldest arrived, asks the :class:`~anycost.serve.controller.Controller` for the
point, and runs the model's real routed ``infer`` on the batch. A request never spans two
batches, so its images share one point. The thread, not the event loop, runs the model:
torch releases the GIL, so the HTTP side keeps accepting (and rejecting) while a batch runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from anycost.core import DynamicModel, OperatingPoint, pareto_subset
from anycost.predict import prediction_rows
from anycost.serve.controller import Controller, LatencyTable
from anycost.serve.metrics import Metrics

__all__ = ["Engine", "Overloaded", "measure_latency", "serving_points"]


class Overloaded(Exception):
    """The queue is full (or the server is stopping): answer 503, retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class _Request:
    x: torch.Tensor  # (k, C, H, W) float, 0..1 pixel scale
    arrived: float
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


def serving_points(model: DynamicModel, most: int = 8) -> list[OperatingPoint]:
    """The shipped points the controller chooses among: the calibrated frontier, thinned to
    ``most`` (each point costs a start-up measurement, and neighbours add little)."""
    pts = [p for p in model.operating_points() if p.calibrated]
    if not pts:
        raise ValueError(f"{type(model).__name__} has no calibrated operating points to serve: "
                         "calibrate it first (anycost calibrate)")
    return pareto_subset(pts, most=most, least=1)


@torch.no_grad()
def measure_latency(model: DynamicModel, points: list[OperatingPoint], sample: torch.Tensor,
                    sizes: list[int], repeats: int = 3, clock: Callable[[], float] = time.perf_counter
                    ) -> LatencyTable:
    """Median seconds per batch at each point and batch size, on rows of ``sample``
    (normalised (N, C, H, W), cycled to the batch size). One untimed warm-up run each."""
    seconds: dict[str, list[float]] = {}
    for p in points:
        row = []
        for n in sizes:
            idx = torch.arange(n) % sample.shape[0]
            x = sample[idx]
            model.infer(x, p)
            times = []
            for _ in range(repeats):
                t0 = clock()
                model.infer(x, p)
                times.append(clock() - t0)
            row.append(max(sorted(times)[len(times) // 2], 1e-6))
        seconds[p.name] = row
    return LatencyTable(sizes, seconds)


def _metrics() -> Metrics:
    m = Metrics()
    m.histogram("request_latency_seconds", "Time from a request's arrival at the server to its answer")
    m.histogram("queue_wait_seconds", "Time a request waited before its batch started")
    m.histogram("batch_seconds", "Inference time of one batch, by operating point")
    m.histogram("batch_size", "Images per batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
    m.gauge("queue_depth", "Images waiting in the queue")
    m.counter("requests_total", "Requests answered, by HTTP status")
    m.counter("images_total", "Images served, by operating point")
    m.counter("macs_total", "MACs spent on served images (as really spent per input)")
    m.gauge("window_mean_macs", "Mean MACs per image over the budget's window of recent images")
    m.counter("errors_total", "Requests that failed, by kind")
    m.counter("rejected_total", "Requests refused with 503 because the queue was full or the server stopping")
    m.counter("slo_misses_predicted_total", "Batches for which no point was predicted to meet the target")
    return m


class Engine:
    """Queue, batcher and worker thread around one model and its controller.

    ``normalise`` maps a 0..1 batch to the model's input (its mean and std). ``submit`` is
    the asynchronous entry point; ``submit_sync`` the blocking one (tests, Ray replicas).
    """

    def __init__(self, model: DynamicModel, controller: Controller, normalise: Callable[[torch.Tensor], torch.Tensor],
                 *, max_batch: int = 64, max_wait_s: float = 0.005, max_queue: int = 1024, device: str = "cpu",
                 classes: list[str] | None = None, clock: Callable[[], float] = time.monotonic):
        if max_batch < 1 or max_queue < max_batch or max_wait_s < 0:
            raise ValueError(f"need max_batch >= 1, max_queue >= max_batch and max_wait >= 0; got max_batch="
                             f"{max_batch}, max_queue={max_queue}, max_wait={max_wait_s}s")
        self.model, self.controller, self.normalise = model.eval(), controller, normalise
        self.max_batch, self.max_wait_s, self.max_queue = int(max_batch), float(max_wait_s), int(max_queue)
        self.device, self.classes, self.clock = device, list(classes or []), clock
        self.metrics = _metrics()
        self._queue: deque[_Request] = deque()
        self._queued_images = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._flushing = False  # shutting down: run what is queued without waiting for batches to fill
        self._thread: threading.Thread | None = None
        self._arrivals: deque[tuple[float, int]] = deque()  # (time, images) over the last rate_window_s
        self.rate_window_s = 1.0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="anycost-serve-worker", daemon=True)
            self._thread.start()
        return self

    def flush(self) -> None:
        """Stop waiting for batches to fill (the server is shutting down: answer what is
        queued as soon as the worker can)."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish every accepted one, then end the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    @property
    def queued_images(self) -> int:
        return self._queued_images

    # ------------------------------------------------------------------ requests

    def retry_after(self) -> float:
        """Seconds until the queue has drained, at the fastest point (what 503 advises)."""
        fastest = min(self.controller.table.predict(p.name, self.max_batch) for p in self.controller.points)
        return max(1.0, math.ceil(fastest * math.ceil(self._queued_images / self.max_batch)))

    def enqueue(self, x: torch.Tensor, arrived: float | None = None) -> concurrent.futures.Future:
        """Queue a (k, C, H, W) 0..1 batch (k <= max_batch); its future resolves to one dict
        per image, or raises. :class:`Overloaded` if the queue cannot take it. ``arrived``
        (engine clock): when the request reached the server, if earlier than now (the HTTP
        side passes the time before it read and decoded the body)."""
        k = x.shape[0]
        if not 1 <= k <= self.max_batch:
            raise ValueError(f"a request may hold 1 to {self.max_batch} images, got {k}")
        with self._cond:
            if self._stopping:
                self.metrics.inc("rejected_total", reason="stopping")
                raise Overloaded("the server is shutting down", 1.0)
            if self._queued_images + k > self.max_queue:
                self.metrics.inc("rejected_total", reason="queue_full")
                raise Overloaded(f"queue full ({self._queued_images} images waiting, limit {self.max_queue})",
                                 self.retry_after())
            now = self.clock()
            req = _Request(x, now if arrived is None else min(arrived, now))
            self._queue.append(req)
            self._arrivals.append((now, k))
            self._queued_images += k
            self.metrics.set("queue_depth", self._queued_images)
            self._cond.notify_all()
        return req.future

    async def submit(self, x: torch.Tensor, arrived: float | None = None) -> dict:
        return await asyncio.wrap_future(self.enqueue(x, arrived))

    def submit_sync(self, x: torch.Tensor, timeout: float | None = None) -> dict:
        return self.enqueue(x).result(timeout)

    # ------------------------------------------------------------------ worker

    def _take_batch(self) -> tuple[list[_Request], int, float] | None:
        """Block until a batch is due; pop it. None when stopping with nothing left."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            # wait for a full batch, or until the oldest request has waited max_wait
            while self._queued_images < self.max_batch and not (self._stopping or self._flushing):
                left = self._queue[0].arrived + self.max_wait_s - self.clock()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, n = [], 0
            while self._queue and n + self._queue[0].x.shape[0] <= self.max_batch:
                r = self._queue.popleft()
                k = r.x.shape[0]
                self._queued_images -= k
                # a request whose caller gave up (client gone, handler cancelled) is dropped
                # here; from now on the future can no longer be cancelled
                if r.future.set_running_or_notify_cancel():
                    batch.append(r)
                    n += k
            self.metrics.set("queue_depth", self._queued_images)
            return batch, self._queued_images, self._arrival_rate()

    def _arrival_rate(self) -> float:
        """Images per second that arrived over the last ``rate_window_s`` (lock held)."""
        now = self.clock()
        while self._arrivals and self._arrivals[0][0] < now - self.rate_window_s:
            self._arrivals.popleft()
        return sum(k for _, k in self._arrivals) / self.rate_window_s

    def _run(self) -> None:
        while True:
            got = self._take_batch()
            if got is None:
                return
            batch, queued, rate = got
            if not batch:  # every request taken was cancelled
                continue
            try:
                self._serve(batch, queued, rate)
            except Exception as e:  # a failed batch fails its requests, never the worker
                self.metrics.inc("errors_total", len(batch), kind=type(e).__name__)
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)

    @torch.no_grad()
    def _serve(self, batch: list[_Request], queued: int, rate: float = 0.0) -> None:
        start = self.clock()
        n = sum(r.x.shape[0] for r in batch)
        oldest = min(r.arrived for r in batch)
        decision = self.controller.choose(n, start - oldest, queued, rate)
        if not decision.fits:
            self.metrics.inc("slo_misses_predicted_total")
        op = decision.point
        x = self.normalise(torch.cat([r.x for r in batch]).to(self.device))
        t0 = time.perf_counter()
        out = self.model.infer(x, op)
        rows = prediction_rows(out.logits, out.macs, op.name, self.classes)
        seconds = time.perf_counter() - t0
        macs = float(out.macs.double().sum())
        done = self.clock()
        self.controller.served(op, n, seconds, macs, latency_s=done - oldest)
        self.metrics.observe("batch_seconds", seconds, operating_point=op.name)
        self.metrics.observe("batch_size", n)
        self.metrics.inc("images_total", n, operating_point=op.name)
        self.metrics.inc("macs_total", macs)
        self.metrics.set("window_mean_macs", self.controller.window_mean_macs)
        i = 0
        for r in batch:
            k = r.x.shape[0]
            self.metrics.observe("queue_wait_seconds", start - r.arrived)
            self.metrics.observe("request_latency_seconds", done - r.arrived)
            r.future.set_result({"predictions": rows[i:i + k], "operating_point": op.name, "batch_size": n,
                                 "queue_ms": 1000 * (start - r.arrived), "service_ms": 1000 * (done - start)})
            i += k
