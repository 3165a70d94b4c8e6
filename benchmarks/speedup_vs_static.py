"""Wall-clock speed-up of each point of a dynamic model against a static network, from two
`anycost bench` records made on the same machine (issue #36: is the MAC cut realised?).

    python benchmarks/speedup_vs_static.py DYNAMIC_BENCH.json STATIC_BENCH.json

Prints a Markdown table: MAC cut against the static network, throughput speed-up at the
bench's batch size, batch-1 p50 speed-up, and the batched speed-up as a fraction of the MAC cut.
"""

import json
import sys


def main(dyn_path: str, static_path: str) -> None:
    dyn = json.load(open(dyn_path))["results"]["bench"]
    ref = json.load(open(static_path))["results"]["bench"]["points"][0]
    b = dyn["points"][0]["batch_size"]
    print(f"| operating point | MACs (M) | MAC cut vs static | speed-up b{b} | speed-up b1 (p50) | realised (b{b}) |")
    print("|---|---:|---:|---:|---:|---:|")
    for p in sorted(dyn["points"], key=lambda p: p["macs_mean_batched"]):
        cut = ref["macs_mean_batched"] / p["macs_mean_batched"]
        sb = p["throughput_img_s"] / ref["throughput_img_s"]
        s1 = ref["latency_ms_p50"] / p["latency_ms_p50"]
        print(f"| {p['operating_point']['name']} | {p['macs_mean_batched'] / 1e6:.1f} | {cut:.2f}x | {sb:.2f}x | "
              f"{s1:.2f}x | {sb / cut:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
