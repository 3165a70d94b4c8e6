"""anycost serve: an HTTP server that holds a p95 latency target by moving the operating point."""

from __future__ import annotations

import sys

from ._common import EPILOG, UserError, add_zoo_dir, check_device, load_model, set_threads

HELP = "serve a model over HTTP, moving the operating point with the load"


def add(sub) -> None:
    s = sub.add_parser(
        "serve", help=HELP, epilog=EPILOG,
        description="Serve a zoo model, checkpoint or run folder with FastAPI on uvicorn: POST /predict (PNG / JPEG, "
                    "a uint8 .npy array or multipart images), GET /health, GET /metrics (Prometheus). Requests are "
                    "batched (--max-batch, --max-wait-ms). With --slo-ms, each batch runs at the most accurate "
                    "point predicted to answer everything queued within the target, from a latency table measured "
                    "at start-up and kept current. Past --max-queue images the server answers 503 with "
                    "Retry-After. Ctrl-C / SIGTERM answers every accepted request (within --grace-s) before exit.")
    s.add_argument("model", help="zoo name, checkpoint .pt / .safetensors or run folder")
    add_zoo_dir(s)
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (0: any free one, printed at start)")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--slo-ms", type=float, metavar="MS", help="p95 latency target; the controller trades accuracy "
                                                              "for it (default: always the most accurate point)")
    g.add_argument("--op", metavar="NAME", help="pin one operating point (a static baseline)")
    s.add_argument("--budget", type=float, metavar="MACS",
                   help="cap on the mean MACs per input over the last --budget-window inputs served")
    s.add_argument("--budget-window", type=int, default=10_000, metavar="N",
                   help="inputs the --budget mean is taken over (default 10000; 0: since start-up)")
    s.add_argument("--max-batch", type=int, default=64, help="images per batch at most (default 64)")
    s.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the oldest request may wait for a batch to fill (default 5)")
    s.add_argument("--max-queue", type=int, default=1024, help="images waiting at most; more get 503 (default 1024)")
    s.add_argument("--max-images", type=int, help="images per request at most (default --max-batch)")
    s.add_argument("--max-body-mb", type=float, default=8.0, help="request body limit; larger gets 413 (default 8)")
    s.add_argument("--headroom", type=float, default=0.7,
                   help="fraction of --slo-ms the controller's predicted finish time may use (default 0.7)")
    s.add_argument("--max-points", type=int, default=8, help="frontier points the controller chooses among (default 8)")
    s.add_argument("--data-dir", help="dataset folder: start-up latencies are measured on its calibration images "
                                      "(default: noise, corrected online)")
    s.add_argument("--grace-s", type=float, default=30.0,
                   help="at shutdown, how long to wait for accepted requests (default 30)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    s.add_argument("--ray", action="store_true", help="run as a Ray Serve deployment (needs the `serve` extra)")
    s.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas, each with its own controller "
                                                           "(with --ray; default 1)")
    s.set_defaults(func=run)


def run(a) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("anycost serve needs FastAPI and uvicorn: pip install 'anycost[serve]'") from None
    from anycost.serve.app import ServeConfig

    check_device(a.device)
    set_threads(a.threads)
    if not 0 <= a.port <= 65535:
        raise UserError(f"--port must be 0..65535, got {a.port}")
    if a.replicas < 1:
        raise UserError(f"--replicas must be >= 1, got {a.replicas}")
    if a.replicas > 1 and not a.ray:
        raise UserError("--replicas needs --ray (one uvicorn process serves one replica)")
    if not (a.max_body_mb > 0):
        raise UserError(f"--max-body-mb must be positive, got {a.max_body_mb}")
    if not (a.grace_s >= 0):
        raise UserError(f"--grace-s must be >= 0, got {a.grace_s}")
    if a.op is not None and a.budget is not None:
        raise UserError("--op pins one point: it takes no --budget")
    if a.budget_window < 0:
        raise UserError(f"--budget-window must be >= 0 (0: since start-up), got {a.budget_window}")
    config = ServeConfig(slo_ms=a.slo_ms, op=a.op, budget=a.budget, budget_window=a.budget_window or None,
                         max_batch=a.max_batch, max_wait_ms=a.max_wait_ms, max_queue=a.max_queue,
                         max_images=a.max_images, max_body_bytes=int(a.max_body_mb * 2**20),
                         max_points=a.max_points, headroom=a.headroom, device=a.device)
    if a.ray:
        from anycost.serve.ray_serve import serve_with_ray

        return serve_with_ray(a.model, config, replicas=a.replicas, host=a.host, port=a.port, zoo_dir=a.zoo_dir,
                              data_dir=a.data_dir, threads=a.threads, grace_s=a.grace_s)
    from anycost.serve.server import latency_sample, serve_forever

    model, cfg = load_model(a.model, a.device, a.zoo_dir)
    sample = latency_sample(cfg, a.data_dir, config.max_batch)
    if sample is None:
        print("anycost serve: no images for the start-up latency table (give --data-dir): measuring on noise, "
              "corrected online", file=sys.stderr)
    return serve_forever(model, config, name=a.model, host=a.host, port=a.port, sample=sample, grace_s=a.grace_s)
