"""Wall-clock benchmark: batch-1 latency (p50, p95) and batched throughput per operating
point, next to the MAC reduction, so the realised speed-up can be compared with the
promised one.

Method: a fixed thread count, ``torch.inference_mode``, warm-up runs before timing, real
inputs (dynamic models route on content, so noise would lie about their cost), and the
hardware in the record. The "full" setting is the operating point with the most MACs;
for a static model the speed-up is 1.0 by construction.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch import Tensor

from anycost.models.static import as_dynamic
from anycost.eval import OperatingPoint


@dataclass
class BenchConfig:
    batch_size: int = 256
    latency_runs: int = 100  # batch-1 calls timed per operating point
    throughput_batches: int = 5  # full batches timed per operating point and round
    rounds: int = 3  # batched timing rounds, round-robin over the points; the median counts
    warmup: int = 10
    threads: int | None = None


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def bench_model(model: nn.Module, images: Tensor, ops: list[OperatingPoint] | None = None,
                cfg: BenchConfig | None = None) -> dict:
    """``images``: normalised float inputs (N, C, H, W) on the model's device, N >= batch_size
    preferred (cycled otherwise). Returns per-point latency, throughput, MACs and speed-ups."""
    cfg = cfg or BenchConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model.eval()
    dyn = as_dynamic(model, tuple(images.shape[1:]))
    ops = ops or dyn.operating_points()
    dev = images.device
    n = images.shape[0]
    rows = []
    for op in ops:
        # batch 1: cycle through real images so routing sees real content
        for i in range(cfg.warmup):
            dyn.infer(images[i % n: i % n + 1], op)
        lat, macs1 = [], []
        for i in range(cfg.latency_runs):
            x = images[i % n: i % n + 1]
            _sync(dev)
            t0 = time.perf_counter()
            out = dyn.infer(x, op)
            _sync(dev)
            lat.append(time.perf_counter() - t0)
            macs1.append(float(out.macs.sum()))
        lat_sorted = sorted(lat)
        rows.append({
            "operating_point": op.to_dict(),
            "latency_ms_p50": 1e3 * statistics.median(lat),
            "latency_ms_p95": 1e3 * lat_sorted[min(len(lat) - 1, int(0.95 * len(lat)))],
            "macs_mean_batch1": sum(macs1) / len(macs1),
        })
    # batched throughput, in rounds that visit every point in turn: a slow spell of a shared
    # machine then hits all points alike instead of one, and the median round counts
    bs = min(cfg.batch_size, n)
    batches = [images[(j * bs) % n:(j * bs) % n + bs] for j in range(cfg.throughput_batches)]
    batches = [b if b.shape[0] == bs else images[:bs] for b in batches]
    times = [[] for _ in ops]
    for _ in range(max(1, cfg.rounds)):
        for k, op in enumerate(ops):
            for _ in range(max(1, cfg.warmup // 5)):
                dyn.infer(batches[0], op)
            _sync(dev)
            t0 = time.perf_counter()
            macs_b = 0.0
            for b in batches:
                macs_b += float(dyn.infer(b, op).macs.sum())
            _sync(dev)
            times[k].append(time.perf_counter() - t0)
            rows[k]["macs_mean_batched"] = macs_b / (bs * len(batches))
    for r, t in zip(rows, times):
        r.update(throughput_img_s=bs * len(batches) / statistics.median(t), batch_size=bs,
                 throughput_img_s_rounds=[bs * len(batches) / x for x in t])
    full = max(rows, key=lambda r: r["macs_mean_batched"])
    for r in rows:
        r["mac_reduction"] = full["macs_mean_batched"] / r["macs_mean_batched"]
        r["speedup_batch1"] = full["latency_ms_p50"] / r["latency_ms_p50"]
        r["speedup_batched"] = r["throughput_img_s"] / full["throughput_img_s"]
        # 1.0 means the wall clock delivers every MAC saved; < 1 means overheads eat part of it
        r["realised_fraction_batch1"] = r["speedup_batch1"] / r["mac_reduction"]
        r["realised_fraction_batched"] = r["speedup_batched"] / r["mac_reduction"]
    return {"threads": torch.get_num_threads(), "device": str(dev), "config": cfg.__dict__, "points": rows,
            "full_point": full["operating_point"]}
