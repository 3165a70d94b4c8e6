"""The same service as a Ray Serve deployment with N replicas (the ``serve`` extra).

Each replica loads the model, measures its own latency table and runs its own engine and
controller: replicas may sit on machines of different speeds, and each one's queue is what
its controller must keep within the target. Ray's proxy spreads requests over replicas,
sends each at most ``max_queue`` requests at a time and holds at most ``max_queue`` more
waiting per replica; past that Ray answers 503 itself (as does a replica whose own queue of
images is full). ``GET /metrics`` is the metrics of whichever replica answers it.
"""

from __future__ import annotations

import os
import signal
import threading

from anycost.serve.app import ServeConfig

__all__ = ["deployment", "serve_with_ray"]


class _Replica:
    """One replica: what ``anycost serve`` does in one process, minus uvicorn."""

    def __init__(self, spec: str, config: ServeConfig, zoo_dir: str | None, data_dir: str | None,
                 threads: int | None):
        import torch

        from anycost.serve.app import build_service
        from anycost.serve.server import latency_sample
        from anycost.zoo import resolve_model

        if threads:
            torch.set_num_threads(threads)
        model = resolve_model(spec, zoo_dir=zoo_dir)
        sample = latency_sample(dict(model.pretrained_cfg), data_dir, config.max_batch)
        self.service = build_service(model, config, sample=sample, name=spec)
        self.service.engine.start()

    async def __call__(self, request):
        return await self.service.handle(request)

    def __del__(self):
        # Ray Serve calls this once the replica has stopped taking requests and answered
        # those it had; the engine then finishes anything still queued
        service = getattr(self, "service", None)
        if service is not None:
            service.engine.stop()


def deployment(spec: str, config: ServeConfig = ServeConfig(), *, replicas: int = 1, zoo_dir: str | None = None,
               data_dir: str | None = None, threads: int | None = None, num_cpus: float = 0.0, grace_s: float = 30.0):
    """A bound Ray Serve application serving ``spec`` with ``replicas`` replicas."""
    from ray import serve

    dep = serve.deployment(_Replica, name="anycost", num_replicas=replicas, max_ongoing_requests=config.max_queue,
                           max_queued_requests=config.max_queue, ray_actor_options={"num_cpus": num_cpus},
                           graceful_shutdown_timeout_s=grace_s)
    return dep.bind(spec, config, zoo_dir, data_dir, threads)


def serve_with_ray(spec: str, config: ServeConfig = ServeConfig(), *, replicas: int = 1, host: str = "127.0.0.1",
                   port: int = 8000, zoo_dir: str | None = None, data_dir: str | None = None,
                   threads: int | None = None, grace_s: float = 30.0, stop: threading.Event | None = None) -> int:
    """Start a local Ray instance (or join ``RAY_ADDRESS``), run the deployment on
    ``host:port`` and block until SIGINT / SIGTERM (or ``stop`` is set), then shut Serve down,
    which lets each replica answer what it accepted."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ValueError("--ray needs Ray Serve: pip install 'anycost[serve]'") from None
    if port == 0:  # Ray's proxy binds the port itself: pick a free one and say which
        from anycost.serve.server import bind

        with bind(host, 0) as sock:
            port = sock.getsockname()[1]
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    # Ray Serve kills an HTTP proxy that is not ready within 5 s, which a busy small machine
    # misses (the proxy is a fresh Python process importing Ray); a local cluster started
    # here inherits this process's environment, and a value the user set is kept
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(deployment(spec, config, replicas=replicas, zoo_dir=zoo_dir, data_dir=data_dir, threads=threads,
                             grace_s=grace_s),
                  name="anycost", route_prefix="/")
        print(f"anycost serve: {spec} on http://{host}:{port} with Ray Serve, {replicas} replica"
              f"{'s' if replicas > 1 else ''}", flush=True)
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
