"""Wall-clock benchmark: batch-1 latency and batched throughput per operating point, next
to the MAC reduction, so the realised speed-up can be compared with the promised one.

Method, chosen so that two runs agree: a fixed thread count, ``torch.inference_mode``,
warm-up before timing, real inputs (dynamic models route on content, so noise would lie
about their cost), and timing in interleaved rounds that visit every point in turn, in
alternating order. A slow spell of a shared machine then hits every point alike; each
figure is the median over rounds, its spread is the relative range of the round medians,
and a speed-up is the ratio of medians, with the range of the per-round ratios. The
"full" setting is the point with the most MACs (a static model's speed-up is 1.0), unless a
``reference`` model (e.g. the static network a dynamic one claims to beat) is given: it is
timed in the same rounds as one more point, and every speed-up is against it. Comparing two
separate runs instead mixes in the machine's drift between them (docs/results.md shows
how far apart two runs on a shared VM can be).
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
from torch import Tensor

from anycost.eval import OperatingPoint
from anycost.models.static import as_dynamic
from anycost.records import hardware_info

UNSTEADY = 0.20  # a spread over this (relative range of round medians) is reported as unsteady


@dataclass
class BenchConfig:
    batch_size: int = 256
    latency_runs: int = 100  # batch-1 calls timed per operating point, spread over the rounds
    throughput_batches: int = 5  # full batches timed per operating point and round
    rounds: int = 5  # interleaved rounds over all points; medians over rounds count
    warmup: int = 10  # untimed batch-1 calls per point before the first round (batched: a fifth)
    threads: int | None = None  # None: the current torch thread count, fixed for the whole run

    def __post_init__(self):
        for k in ("batch_size", "latency_runs", "throughput_batches", "rounds"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"bench {k} must be a positive integer, got {getattr(self, k)!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"bench warmup must be an integer >= 0, got {self.warmup!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"bench threads must be a positive integer, got {self.threads!r}")


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(values: list[float]) -> float:
    """Relative range of repeated measurements: (max - min) / median (0 for one value)."""
    if len(values) < 2:
        return 0.0
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med > 0 else float("inf")


@torch.inference_mode()
def bench_model(model: nn.Module, images: Tensor, ops: list[OperatingPoint] | None = None,
                cfg: BenchConfig | None = None, reference: nn.Module | None = None,
                reference_name: str = "reference") -> dict:
    """``images``: normalised float inputs (N, C, H, W) on the model's device, N >= batch_size
    preferred (cycled otherwise). Returns per-point latency, throughput, MACs and speed-ups
    (medians over rounds, with spreads), the machine, and which figures were unsteady.
    ``reference``: a model taking the same inputs, timed at its most expensive point in the
    same rounds; speed-ups are then against it (its row has ``"reference": true``)."""
    cfg = cfg or BenchConfig()
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or before)  # fixed for the run, recorded below
    try:
        return _bench(model, images, ops, cfg, reference, reference_name)
    finally:
        torch.set_num_threads(before)


def _bench(model: nn.Module, images: Tensor, ops, cfg: BenchConfig, reference: nn.Module | None = None,
           reference_name: str = "reference") -> dict:
    model.eval()
    dyn = as_dynamic(model, tuple(images.shape[1:]))
    ops = list(ops or dyn.operating_points())
    timed = [(dyn, op) for op in ops]  # per row: the model and the point it runs
    if reference is not None:
        ref = as_dynamic(reference.eval(), tuple(images.shape[1:]))
        rop = max(ref.operating_points(), key=lambda o: o.macs if o.macs is not None else float("inf"))
        timed.append((ref, rop))
        ops.append(replace(rop, name=f"{reference_name} ({rop.name})"))  # the row's name in the results
    run = lambda k, x: timed[k][0].infer(x, timed[k][1])
    dev, n = images.device, images.shape[0]
    bs = min(cfg.batch_size, n)
    batches = [images[(j * bs) % n:(j * bs) % n + bs] for j in range(cfg.throughput_batches)]
    batches = [b if b.shape[0] == bs else images[:bs] for b in batches]
    per_round = max(1, cfg.latency_runs // cfg.rounds)

    for k in range(len(ops)):  # warm-up: allocator, kernels and caches see every point before timing starts
        for i in range(cfg.warmup):
            run(k, images[i % n: i % n + 1])
        for _ in range(max(1, cfg.warmup // 5)):
            run(k, batches[0])

    lat = [[] for _ in ops]  # every batch-1 call, seconds
    lat_rounds = [[] for _ in ops]  # median per round
    thr_rounds = [[] for _ in ops]  # images / s per round
    macs1 = [0.0 for _ in ops]
    macs_b = [0.0 for _ in ops]
    for r in range(cfg.rounds):
        order = list(range(len(ops))) if r % 2 == 0 else list(reversed(range(len(ops))))
        for k in order:
            calls = []
            for i in range(r * per_round, (r + 1) * per_round):  # the same images for every point
                x = images[i % n: i % n + 1]
                _sync(dev)
                t0 = time.perf_counter()
                out = run(k, x)
                _sync(dev)
                calls.append(time.perf_counter() - t0)
                macs1[k] += float(out.macs.sum())
            lat[k] += calls
            lat_rounds[k].append(statistics.median(calls))
            _sync(dev)
            t0 = time.perf_counter()
            m = 0.0
            for b in batches:
                m += float(run(k, b).macs.sum())
            _sync(dev)
            thr_rounds[k].append(bs * len(batches) / (time.perf_counter() - t0))
            macs_b[k] = m / (bs * len(batches))

    rows = []
    for k, op in enumerate(ops):
        s = sorted(lat[k])
        rows.append({
            "operating_point": op.to_dict(),
            "latency_ms_p50": 1e3 * statistics.median(lat_rounds[k]),
            "latency_ms_p95": 1e3 * s[min(len(s) - 1, int(0.95 * len(s)))],
            "latency_ms_rounds": [1e3 * t for t in lat_rounds[k]],
            "latency_spread": spread(lat_rounds[k]),
            "macs_mean_batch1": macs1[k] / len(lat[k]),
            "throughput_img_s": statistics.median(thr_rounds[k]),
            "throughput_img_s_rounds": thr_rounds[k],
            "throughput_spread": spread(thr_rounds[k]),
            "macs_mean_batched": macs_b[k],
            "batch_size": bs,
        })
    if reference is not None:
        f = len(rows) - 1
        rows[f]["reference"] = True
    else:
        f = max(range(len(rows)), key=lambda k: rows[k]["macs_mean_batched"])
    full = rows[f]
    unsteady = []
    for k, r in enumerate(rows):
        r["mac_reduction"] = full["macs_mean_batched"] / r["macs_mean_batched"]
        # ratios of medians; the per-round ratios give their range
        r["speedup_batch1"] = full["latency_ms_p50"] / r["latency_ms_p50"]
        r["speedup_batched"] = r["throughput_img_s"] / full["throughput_img_s"]
        b1 = [a / b for a, b in zip(lat_rounds[f], lat_rounds[k])]
        bb = [a / b for a, b in zip(thr_rounds[k], thr_rounds[f])]
        r["speedup_batch1_range"] = [min(b1), max(b1)]
        r["speedup_batched_range"] = [min(bb), max(bb)]
        # 1.0 means the wall clock delivers every MAC saved; < 1 means overheads eat part of it
        r["realised_fraction_batch1"] = r["speedup_batch1"] / r["mac_reduction"]
        r["realised_fraction_batched"] = r["speedup_batched"] / r["mac_reduction"]
        for what in ("latency_spread", "throughput_spread"):
            if r[what] > UNSTEADY:
                unsteady.append({"operating_point": op_name(r), "figure": what, "spread": r[what]})
    if unsteady:
        worst = max(unsteady, key=lambda u: u["spread"])
        warnings.warn(f"unsteady timings: {len(unsteady)} figure(s) spread over {UNSTEADY:.0%} across rounds (worst: "
                      f"{worst['figure']} of '{worst['operating_point']}', {worst['spread']:.0%}); the machine was "
                      "busy or throttling: rerun on a quiet machine or with more rounds", stacklevel=3)
    hw = hardware_info(dev)
    return {"threads": torch.get_num_threads(), "device": str(dev), "config": asdict(cfg), "points": rows,
            "full_point": full["operating_point"], "unsteady": unsteady,
            **({"reference": reference_name} if reference is not None else {}),
            "machine": {"cpu": hw["cpu"], "cpu_count": hw["cpu_count"], "threads": torch.get_num_threads(),
                        "torch": hw["torch"], **({"gpu": hw["gpu"]} if "gpu" in hw else {})}}


def op_name(row: dict) -> str:
    return row["operating_point"].get("name", "?")
