"""Open-loop load generator for ``anycost serve`` (what ``anycost loadtest`` runs).

Requests arrive as a Poisson process at each offered rate in turn, each sent at its scheduled
time whether or not earlier ones have returned (a closed loop would slow down with the server
and hide its queueing). Every request carries a labelled image from the model's own
validation split, encoded before the run, so each run measures latency, throughput,
rejections, served accuracy and the operating-point mix together. Latency runs from the
moment a request is due to its full response: time spent waiting for a connection counts.
Only loopback servers are loaded: this is a benchmark, not a tool to flood other hosts.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import math
import os
import sys
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

__all__ = ["run_loadtest", "plot_loadtest", "poisson_schedule", "check_url", "FORMATS"]

FORMATS = {"png": "image/png", "npy": "application/x-npy"}
SPLITS = ("val", "calib", "holdout", "test", "train")


# --------------------------------------------------------------------------- arguments


def check_url(url: str) -> tuple[str, int, str, str]:
    """(host, port, path prefix, Host header) of an ``http://`` URL on a loopback address;
    anything else is a ValueError."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"the server URL must be like http://127.0.0.1:8000, got {url!r}")
    u = urlsplit(url.strip())
    if u.scheme != "http":
        raise ValueError(f"{url}: only plain http:// URLs are load-tested (the server listens on loopback)")
    host = u.hostname
    try:
        port = u.port or 80
    except ValueError:
        raise ValueError(f"{url}: the port is not a number in 1..65535") from None
    loopback = host == "localhost"
    if not loopback and host:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if not loopback:
        raise ValueError(f"{url}: the load generator only targets loopback addresses (127.0.0.0/8, ::1, "
                         f"localhost), got host {host!r}")
    if u.query or u.fragment:
        raise ValueError(f"{url}: give the server's base URL, without a query or fragment")
    return host, port, u.path.rstrip("/"), u.netloc.rpartition("@")[2]


def _positive(v, name: str, integer: bool = False) -> None:
    ok = (isinstance(v, Integral) if integer else isinstance(v, Real)) and not isinstance(v, bool)
    if not ok or not math.isfinite(v) or v <= 0:
        kind = "a whole number >= 1" if integer else "a finite number > 0"
        raise ValueError(f"{name} must be {kind}, got {v!r}")


def _check_args(rates, requests, duration, split, seed, fmt, timeout, connections, capacity, slo_ms) -> list[float]:
    if isinstance(rates, (str, bytes)) or not hasattr(rates, "__iter__"):
        raise ValueError(f"rates must be a list of request rates (req/s), got {rates!r}")
    rates = list(rates)
    if not rates:
        raise ValueError("rates is empty: give at least one offered rate in req/s")
    for r in rates:
        _positive(r, "rate (req/s)")
    _positive(requests, "requests", integer=True)
    _positive(duration, "duration (s)")
    _positive(timeout, "timeout (s)")
    _positive(connections, "connections", integer=True)
    if capacity is not None:
        _positive(capacity, "capacity (req/s)")
    if slo_ms is not None:
        _positive(slo_ms, "slo_ms")
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r} (choose from {', '.join(FORMATS)})")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (choose from {', '.join(SPLITS)})")
    if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a whole number >= 0, got {seed!r}")
    return [float(r) for r in rates]


def poisson_schedule(rate: float, requests: int, duration: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times (s from the run's start) of a Poisson process at ``rate``: exponential
    gaps, stopped after ``requests`` arrivals or at ``duration``, whichever comes first."""
    t = np.cumsum(rng.exponential(1.0 / rate, size=requests))
    return t[t < duration]


# --------------------------------------------------------------------------- HTTP client
#
# Why not httpx: the load generator shares the machine's few cores with the server it
# measures, and httpx spends many times this client's CPU per request, so at the rates that
# matter it falls behind its own schedule and the client, not the server, sets the latency.
# This one does only what the benchmark needs: HTTP/1.1 with keep-alive over a bounded
# connection pool, Content-Length or chunked bodies, and ``Connection: close``.


class BadResponse(Exception):
    """A response that is not well-formed HTTP, or a 200 whose JSON breaks the contract."""


async def _read_response(reader: asyncio.StreamReader, status_line: bytes) -> tuple[int, dict, bytes, bool]:
    """(status, lower-cased headers, body, whether the connection can be reused)."""
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise BadResponse(f"bad status line {status_line[:60]!r}")
    status = int(parts[1])
    headers = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        k, colon, v = line.decode("latin-1").partition(":")
        if not colon:
            raise BadResponse(f"bad header line {line[:60]!r}")
        headers[k.strip().lower()] = v.strip()
    keep = parts[0] == b"HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"x", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(chunks)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif status in (204, 304) or status < 200:
        body = b""
    else:  # the body runs to the end of the connection
        body, keep = await reader.read(), False
    return status, headers, body, keep


class _Pool:
    """Keep-alive connections to one server, at most ``size`` open: a request takes an idle
    connection, else opens one while under the bound, else waits for one to come back."""

    def __init__(self, host: str, port: int, size: int):
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)  # one per request holding a connection
        self.waits = 0  # requests that found every connection busy

    def _take(self):
        while self.idle:
            reader, writer = self.idle.pop()
            if not reader.at_eof() and not writer.is_closing():
                return reader, writer
            writer.close()  # the server closed it while idle
        return None

    async def request(self, data: bytes) -> tuple[int, dict, bytes, float]:
        """Send one whole request; (status, headers, body, loop time it was written)."""
        loop = asyncio.get_running_loop()
        self.waits += self.slots.locked()
        async with self.slots:
            for attempt in (0, 1):
                conn = self._take()
                reused = conn is not None
                if conn is None:
                    conn = await asyncio.open_connection(self.host, self.port)
                reader, writer = conn
                keep = answered = False
                try:
                    writer.write(data)
                    sent = loop.time()
                    line = await reader.readline()
                    if not line:
                        raise ConnectionResetError("the server closed the connection without answering")
                    answered = True
                    status, headers, body, keep = await _read_response(reader, line)
                    return status, headers, body, sent
                except (ConnectionError, asyncio.IncompleteReadError):
                    # a kept-alive connection the server closed (idle timeout) just as it was
                    # reused: nothing was answered, so one retry on a fresh connection
                    if reused and not answered and attempt == 0:
                        continue
                    raise
                finally:
                    if keep:
                        self.idle.append(conn)
                    else:
                        writer.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def _request_bytes(method: str, path: str, host_header: str, body: bytes = b"", ctype: str | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if body or method == "POST":
        head += f"Content-Length: {len(body)}\r\n"
    return (head + "\r\n").encode("latin-1") + body


def _health(url: str, timeout: float) -> dict:
    host, port, prefix, host_header = check_url(url)

    async def get():
        pool = _Pool(host, port, 1)
        try:
            return await asyncio.wait_for(pool.request(_request_bytes("GET", f"{prefix}/health", host_header)), timeout)
        finally:
            pool.close()

    try:
        status, _, body, _ = asyncio.run(get())
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, BadResponse) as e:
        raise ValueError(f"no anycost server answers at {url} ({type(e).__name__}: {e}); start one with "
                         f"`anycost serve MODEL`") from None
    try:
        info = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if status != 200 or not isinstance(info, dict) or "input_size" not in info:
        raise ValueError(f"{url}/health answered {status} without the server's description; is this an "
                         f"`anycost serve` server?")
    return info


# --------------------------------------------------------------------------- images


def _split_images(info: dict, data_dir, split: str):
    """The labelled images of ``split`` of the server model's dataset, re-carved as in training."""
    from anycost.data import load_split

    dataset = info.get("dataset")
    if not dataset:
        raise ValueError("the server does not name its model's dataset (/health 'dataset' is null), so there are "
                         "no labelled images to send")
    sp = info.get("split") or {}
    ds = load_split(dataset, data_dir, split, sp.get("val_size"), sp.get("split_seed") or 0)
    want = tuple(info["input_size"])
    if tuple(ds.images.shape[1:]) != want:
        raise ValueError(f"{dataset} {split} images are {tuple(ds.images.shape[1:])} but the server's model takes {want}")
    classes = [str(c) for c in info.get("classes") or []]
    if classes and classes != [str(c) for c in ds.classes]:
        raise ValueError(f"the server's classes ({', '.join(classes[:4])}, ...) are not {dataset}'s "
                         f"({', '.join(map(str, ds.classes[:4]))}, ...): labels would not match predictions")
    if len(ds) == 0:
        raise ValueError(f"{dataset} {split} split holds no images")
    return ds, dataset


def _encode(img: np.ndarray, fmt: str) -> bytes:
    """One uint8 (C, H, W) image as a PNG or a (1, H, W, C) .npy."""
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, hwc[None], allow_pickle=False)
    else:
        from PIL import Image

        if hwc.shape[2] not in (1, 3, 4):
            raise ValueError(f"{hwc.shape[2]}-channel images cannot be PNGs; use the npy format")
        Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- one run


@dataclass
class _Outcome:
    kind: str  # "ok", "rejected", or an error kind: "http_500", "timeout", "connection", "bad_response"
    latency: float  # s from due to full response (or to the failure)
    lag: float | None = None  # s from due to the request being written
    answered: bool = False  # an HTTP response came back
    correct: bool = False
    op: str | None = None
    macs: float = 0.0
    queue_ms: float = 0.0
    service_ms: float = 0.0
    retry_after: bool = False


def _check_prediction(body: bytes) -> tuple[int, str, float, float, float]:
    """(class_index, operating_point, macs, queue_ms, service_ms) of a 200 answer to one image."""
    try:
        d = json.loads(body)
        (p,) = d["predictions"]
        idx, op, macs = p["class_index"], p["operating_point"], float(p["macs"])
        q, s = float(d["queue_ms"]), float(d["service_ms"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise BadResponse(f"malformed /predict answer ({type(e).__name__}: {e})") from None
    if not isinstance(idx, int) or isinstance(idx, bool) or not isinstance(op, str) or not math.isfinite(macs):
        raise BadResponse("malformed /predict answer (class_index, operating_point or macs)")
    return idx, op, macs, q, s


async def _one(pool: _Pool, data: bytes, label: int, due: float, timeout: float) -> _Outcome:
    loop = asyncio.get_running_loop()
    try:
        status, headers, body, sent = await asyncio.wait_for(pool.request(data), max(0.0, due + timeout - loop.time()))
    except asyncio.TimeoutError:
        return _Outcome("timeout", loop.time() - due)
    except BadResponse:
        return _Outcome("bad_response", loop.time() - due)
    except (OSError, asyncio.IncompleteReadError, ValueError):  # refused, reset, truncated, a bad length
        return _Outcome("connection", loop.time() - due)
    except Exception as e:  # anything else is counted under its name, not lost with the whole run
        return _Outcome(f"client_{type(e).__name__}", loop.time() - due)
    done = loop.time()
    if status == 503:
        return _Outcome("rejected", done - due, sent - due, True, retry_after="retry-after" in headers)
    if status != 200:
        return _Outcome(f"http_{status}", done - due, sent - due, True)
    try:
        idx, op, macs, q, s = _check_prediction(body)
    except BadResponse:
        return _Outcome("bad_response", done - due, sent - due, True)
    return _Outcome("ok", done - due, sent - due, True, idx == label, op, macs, q, s)


async def _run(pool: _Pool, requests: list[bytes], labels: list[int], times: np.ndarray, timeout: float,
               bar) -> tuple[list[_Outcome], float, float]:
    """Send request i at ``times[i]`` s after the start (open loop); (outcomes in arrival
    order, loop time of the first due send, loop time of the last completion)."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.01  # a moment to enter the loop before the first arrival
    done_at = [start]

    def finished(_):
        done_at[0] = loop.time()
        bar.update(1)

    tasks = []
    for i, t in enumerate(times):
        due = start + float(t)
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        k = i % len(requests)
        task = loop.create_task(_one(pool, requests[k], labels[k], due, timeout))
        task.add_done_callback(finished)
        tasks.append(task)
    outcomes = list(await asyncio.gather(*tasks))
    first = start + float(times[0]) if len(times) else start
    return outcomes, first, max(done_at[0], first)


def _ms(xs, q: float) -> float | None:
    return float(np.percentile(np.asarray(xs) * 1000.0, q)) if len(xs) else None


def _summary(rate: float, capacity: float | None, times: np.ndarray, outs: list[_Outcome], wall: float,
             op_order: list[str], waits: int) -> dict:
    from anycost.curves import wilson_interval

    ok = [o for o in outs if o.kind == "ok"]
    rejected = [o for o in outs if o.kind == "rejected"]
    errors: dict[str, int] = {}
    for o in outs:
        if o.kind not in ("ok", "rejected"):
            errors[o.kind] = errors.get(o.kind, 0) + 1
    n_err = sum(errors.values())
    lat = [o.latency for o in ok]
    answered = [o.latency for o in outs if o.answered]
    lags = [o.lag for o in outs if o.lag is not None]
    correct = sum(o.correct for o in ok)
    acc = 100.0 * correct / len(ok) if ok else None
    ops: dict[str, int] = {}
    for o in ok:
        ops[o.op] = ops.get(o.op, 0) + 1
    names = [n for n in op_order if n in ops] + sorted(n for n in ops if n not in op_order)
    span = float(times[-1]) if len(times) else 0.0
    return {
        "rate": rate,
        "offered_load": rate / capacity if capacity else None,
        "scheduled_s": span,
        "wall_s": wall,
        "throughput": len(ok) / wall if wall > 0 else 0.0,
        "sent": len(outs),
        "ok": len(ok),
        "rejected": len(rejected),
        "rejected_without_retry_after": sum(not o.retry_after for o in rejected),
        "errors": n_err,
        "error_kinds": dict(sorted(errors.items())),
        "lost": len(times) - len(ok) - len(rejected) - n_err,
        "latency_ms": {"p50": _ms(lat, 50), "p95": _ms(lat, 95), "p99": _ms(lat, 99), "max": _ms(lat, 100),
                       "mean": float(np.mean(lat) * 1000.0) if lat else None},
        "latency_ms_answered": {"p95": _ms(answered, 95), "n": len(answered)},
        "send_lag_ms": {"p50": _ms(lags, 50), "p99": _ms(lags, 99), "max": _ms(lags, 100)},
        "connection_waits": waits,
        "accuracy": acc,
        "accuracy_ci95": list(wilson_interval(acc, len(ok))) if ok else None,
        "n": len(ok),
        "correct": correct,
        "operating_points": {n: ops[n] / len(ok) for n in names},
        "macs_mean": float(np.mean([o.macs for o in ok])) if ok else None,
        "server_queue_ms_mean": float(np.mean([o.queue_ms for o in ok])) if ok else None,
        "server_service_ms_mean": float(np.mean([o.service_ms for o in ok])) if ok else None,
    }


# --------------------------------------------------------------------------- the load test


def run_loadtest(url: str, *, rates: list[float], requests: int = 1000, duration: float = 30.0,
                 data_dir: str | os.PathLike | None = None, split: str = "holdout", seed: int = 0, fmt: str = "png",
                 timeout: float = 30.0, connections: int = 256, capacity: float | None = None,
                 slo_ms: float | None = None, label: str | None = None, progress: bool = True) -> dict:
    """Load the server at ``url`` with one open-loop Poisson run per rate, in order, and
    return a ``loadtest`` record (the caller writes it).

    A run schedules ``requests`` arrivals or ``duration`` seconds of them, whichever ends
    first, then waits for every request in flight; a request that times out (``timeout`` s
    after it was due) or fails to connect is an error, never dropped. ``capacity`` (req/s)
    adds the offered load as a multiple of it; ``slo_ms`` defaults to the server's own."""
    import torch

    from anycost.records import make_record

    rates = _check_args(rates, requests, duration, split, seed, fmt, timeout, connections, capacity, slo_ms)
    host, port, prefix, host_header = check_url(url)
    info = _health(url, timeout)
    ds, dataset = _split_images(info, data_dir, split)

    # one seeded image order shared by every run, so runs at different rates see the same images
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(ds))[: min(requests, len(ds))])
    images, labels = ds.images[order].numpy(), ds.labels[order].tolist()
    bodies = [_request_bytes("POST", f"{prefix}/predict", host_header, _encode(im, fmt), FORMATS[fmt])
              for im in images]
    schedules = [poisson_schedule(r, requests, duration, np.random.default_rng([seed, i])) for i, r in enumerate(rates)]
    op_order = [p.get("name") for p in info.get("operating_points") or []]

    async def all_runs():
        from tqdm.auto import tqdm

        pool = _Pool(host, port, connections)
        try:
            runs = []
            for rate, times in zip(rates, schedules):
                with tqdm(total=len(times), desc=f"{rate:g} req/s", unit="req", leave=False, file=sys.stderr,
                          dynamic_ncols=True, disable=not progress) as bar:
                    pool.waits = 0
                    outs, first, last = await _run(pool, bodies, labels, times, timeout, bar)
                runs.append(_summary(rate, capacity, times, outs, last - first, op_order, pool.waits))
            return runs
        finally:
            pool.close()

    runs = asyncio.run(all_runs())
    slo = slo_ms if slo_ms is not None else info.get("slo_ms")
    default_label = info.get("model") or "server"
    if info.get("pinned"):
        default_label += f" pinned {info['pinned']}"
    elif info.get("budget"):
        default_label += f" budget {info['budget']:g}"
    config = {"url": url, "rates": rates, "requests": requests, "duration": duration, "dataset": dataset,
              "data_dir": str(data_dir) if data_dir is not None else None, "split": split, "n_images": len(bodies),
              "format": fmt, "timeout": timeout, "connections": connections, "capacity": capacity,
              "slo_ms": slo, "label": label or default_label, "arrivals": "poisson, open loop"}
    return make_record("loadtest", config, {"server": info, "runs": runs}, seed=seed)


# --------------------------------------------------------------------------- plot


def plot_loadtest(records: list, out: str | os.PathLike, title: str | None = None) -> Path:
    """p95 latency and served accuracy (with 95 % Wilson intervals) against offered load, one
    line per record; the x axis is in multiples of capacity when every record states one,
    else in req/s. Records with an SLO draw it as a dashed line on the latency panel."""
    from anycost.plot import _mpl, _save
    from anycost.records import read_record

    recs = [r if isinstance(r, dict) else read_record(r) for r in records]
    if not recs:
        raise ValueError("no load-test records to plot")
    for r in recs:
        if r.get("kind") != "loadtest":
            raise ValueError(f"not a load-test record (kind '{r.get('kind')}')")
    relative = all((r.get("config") or {}).get("capacity") for r in recs)
    plt = _mpl()
    fig, (lat_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = plt.get_cmap("tab10").colors
    slos = {}
    for i, r in enumerate(recs):
        cfg, runs = r.get("config") or {}, sorted(r["results"]["runs"], key=lambda u: u["rate"])
        col, name = colors[i % 10], cfg.get("label") or f"record {i + 1}"
        x = [u["offered_load"] if relative else u["rate"] for u in runs]
        p95 = [u["latency_ms"]["p95"] for u in runs]
        lat_ax.plot(x, [math.nan if v is None else v for v in p95], marker="o", markersize=4, color=col, label=name)
        pts = [(xi, u["accuracy"], u["accuracy_ci95"]) for xi, u in zip(x, runs) if u.get("accuracy") is not None]
        if pts:
            acc_ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                            yerr=[[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]],
                            marker="o", markersize=4, capsize=3, color=col, label=name)
        if cfg.get("slo_ms"):
            slos.setdefault(float(cfg["slo_ms"]), col)
    for v, col in slos.items():  # one shared SLO in grey; several in their records' colours
        lat_ax.axhline(v, linestyle="--", linewidth=1, color=col if len(slos) > 1 else "0.3", label=f"SLO {v:g} ms")
    xlabel = "offered load (x capacity)" if relative else "offered load (req/s)"
    lat_ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter

    lat_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 50, not 5 x 10^1
    lat_ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "235" else ""))
    lat_ax.set_ylabel("p95 latency (ms, log scale)")
    acc_ax.set_ylabel("served top-1 accuracy (%, 95 % Wilson interval)")
    for ax in (lat_ax, acc_ax):
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    lat_ax.legend(fontsize=7, frameon=False)
    fig.suptitle(title or "latency and served accuracy against offered load (open-loop Poisson arrivals)", fontsize=11)
    return _save(plt, fig, out)
