"""Running the app: uvicorn on a socket this process binds (so ``--port 0`` can say which
port it got), and the images the start-up latency table is measured on."""

from __future__ import annotations

import socket
import sys

import torch

from anycost.core import DynamicModel
from anycost.serve.app import ServeConfig, build_service, create_app

__all__ = ["latency_sample", "serve_forever", "bind"]


def latency_sample(cfg: dict, data_dir: str | None, n: int) -> torch.Tensor | None:
    """Up to ``n`` calibration images (uint8 (n, C, H, W)) of the model's own dataset and
    split, or None where they cannot be read here (CIFAR without ``data_dir``)."""
    from anycost.data import load_split

    dataset = cfg.get("dataset")
    if not dataset or (dataset != "digits" and not data_dir):
        return None
    sp = cfg.get("split") or {}
    return load_split(dataset, data_dir, "calib", sp.get("val_size"), sp.get("split_seed") or 0).images[:n]


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve_forever(model: DynamicModel, config: ServeConfig = ServeConfig(), *, name: str | None = None,
                  host: str = "127.0.0.1", port: int = 8000, sample: torch.Tensor | None = None,
                  grace_s: float = 30.0, log_level: str = "warning") -> int:
    """Measure, bind and serve until SIGINT / SIGTERM. Then uvicorn stops accepting, the
    worker stops waiting for batches to fill, and every accepted request is answered within
    ``grace_s`` (past it, uvicorn cancels what is left)."""
    import uvicorn

    sock = bind(host, port)  # before the slow measurement: a taken port fails at once
    try:
        service = build_service(model, config, sample=sample, name=name)
    except BaseException:
        sock.close()
        raise

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # shutdown begins: stop waiting for batches to fill
            service.engine.flush()
            super().handle_exit(sig, frame)

    # open connections are bounded too (each may hold a body being read): past the bound,
    # uvicorn answers 503 before reading anything
    limit = 2 * config.max_queue + config.max_batch
    server = Server(uvicorn.Config(create_app(service, on_stop=_goodbye), log_level=log_level,
                                   timeout_graceful_shutdown=grace_s, lifespan="on", limit_concurrency=limit))
    sock.listen(2048)  # connections made from now on wait in the backlog until uvicorn takes them
    port = sock.getsockname()[1]
    pts = ", ".join(p["name"] for p in service.info["operating_points"])
    mode = (f"pinned to {config.op}" if config.op else
            f"p95 target {config.slo_ms:g} ms" if config.slo_ms else "most accurate point")
    print(f"anycost serve: {service.info['model']} on http://{host}:{port} ({mode}; points: {pts})", flush=True)
    server.run(sockets=[sock])  # uvicorn re-raises SIGINT / SIGTERM after its graceful shutdown
    return 0


def _goodbye(service) -> None:
    m = service.engine.metrics
    print(f"anycost serve: stopped after answering {int(m.value('request_latency_seconds'))} requests "
          f"({int(m.value('rejected_total', reason='queue_full'))} refused: queue full)", file=sys.stderr, flush=True)
