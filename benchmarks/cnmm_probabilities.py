"""The learned keep probabilities of residual CNMMs, by kind of edge: which edges does the
mixture learn to keep? No data needed; reads models (zoo names, .pt files, run folders).

Edge kinds on a 3-scale grid (scale 0: 32x32, 1: 16x16, 2: 8x8): same-scale blocks at each
scale, and the stride-2 diagonals 0->1 and 1->2. In the default grid the first two diagonals
(stem -> 16x16 -> 8x8) are always on, and the optional 1->2 diagonals are the only way the
16x16 and 32x32 nodes past depth 1 reach the 8x8 output, so when their probability falls, so
does the weight of all later high-resolution work in the mixture output (with
``scale_starts`` the always-on diagonals come later, and the trunk carries more of it).

    python benchmarks/cnmm_probabilities.py cnmm_r6.cifar10 cnmm_r6_kd2.cifar10 \
        --record benchmarks/records/eval/cnmm-probabilities.json > benchmarks/cnmm_probabilities.md
"""
import argparse
from collections import defaultdict

from anycost.records import make_record, write_json_atomic
from anycost.zoo import resolve_model


def edge_kinds(model) -> dict[str, list[float]]:
    """kind ("s->s'") -> the optional edges' keep probabilities, in order of depth."""
    kinds = defaultdict(list)
    p = model.probabilities().tolist()
    for (a, b), pe, mandatory in zip(model.edge_list, p, model.mandatory.tolist()):
        if not mandatory:
            kinds[f"{model.node_list[a][1]}->{model.node_list[b][1]}"].append(round(pe, 3))
    return dict(sorted(kinds.items(), key=lambda kv: (kv[0][-1], kv[0][0])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", help="residual CNMMs: zoo names, .pt files or run folders; "
                    "LABEL=MODEL names a row")
    ap.add_argument("--record", help="write the probabilities here (JSON)")
    a = ap.parse_args()
    rows = []
    for spec in a.models:
        label, _, src = spec.rpartition("=")
        model = resolve_model(src)

        rows.append({"model": label or src, "source": src, "keep_max": model.keep_max,
                     "cost_weight": model.cost_weight, "kinds": edge_kinds(model)})
    kinds = list(rows[0]["kinds"])
    print("Learned keep probabilities of the optional edges, by kind (scale 0: 32x32, 1: 16x16, "
          "2: 8x8), mean over depths [min-max]\n")
    print("| model | cost weight | " + " | ".join(f"{k}" for k in kinds) + " |\n|---|---:|" + "---:|" * len(kinds))
    for r in rows:
        cells = []
        for k in kinds:
            v = r["kinds"].get(k, [])
            cells.append(f"{sum(v) / len(v):.2f} [{min(v):.2f}-{max(v):.2f}]" if v else "-")
        print(f"| {r['model']} | {r['cost_weight']:g} | " + " | ".join(cells) + " |")
    if a.record:
        write_json_atomic(a.record, make_record("eval", vars(a), {"rows": rows}))


if __name__ == "__main__":
    main()
