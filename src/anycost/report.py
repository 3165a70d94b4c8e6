"""Markdown tables from records (the same data the plots draw)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from anycost.curves import matches, wilson_interval
from anycost.eval import TradeoffCurve
from anycost.records import write_text_atomic
from anycost.traincost import PMAC


def _ci(accuracy: float, n: int) -> str:
    """``88.44 [87.1, 89.6]``: top-1 with its 95 % Wilson interval (just the value when ``n``
    is unknown, as in records older than per-point counts)."""
    if not n:
        return f"{accuracy:.2f}"
    lo, hi = wilson_interval(accuracy, n)
    return f"{accuracy:.2f} [{lo:.1f}, {hi:.1f}]"


def _verdict(acc: float, n: int, other: float, n_other: int) -> str:
    """" (tie)" when the two 95 % intervals overlap, else " (above)" or " (below)"; nothing
    when either image count is unknown."""
    if not (n and n_other):
        return ""
    lo, hi = wilson_interval(acc, n)
    flo, fhi = wilson_interval(other, n_other)
    return " (tie)" if lo <= fhi and flo <= hi else (" (above)" if acc > other else " (below)")


def _gap_cell(p, front: TradeoffCurve) -> str:
    """``front at p's mean MACs | gap (verdict)``, or "below its range" when ``front``'s
    cheapest point costs more than ``p``."""
    a = front.accuracy_at(p.macs_mean)
    if a is None:
        return "below its range | -"
    n_front = max((q.n for q in front.points), default=0)
    return f"{a:.2f} | {p.accuracy - a:+.2f}{_verdict(p.accuracy, p.n, a, n_front)}"


def _equal_compute_cell(p, front: TradeoffCurve) -> str:
    """As :func:`_gap_cell`, but a point cheaper than every qualifying static network is
    compared with the cheapest of them, so the row still states a gap, whatever its sign:
    more accurate there is a win at fewer MACs, less accurate is not evidence of a loss."""
    if front.accuracy_at(p.macs_mean) is not None:
        return _gap_cell(p, front)
    q = min(front.points, key=lambda q: q.macs_mean)
    return (f"below its range; cheapest {q.accuracy:.2f} at {q.macs_mean / 1e6:.1f} M | "
            f"{p.accuracy - q.accuracy:+.2f}{_verdict(p.accuracy, p.n, q.accuracy, q.n)} with {q.macs_mean / p.macs_mean:.2f}x fewer MACs")


def curves_table(curves: list[TradeoffCurve], frontier_only: bool = False) -> str:
    """One row per operating point (``frontier_only``: only each curve's Pareto points)."""
    lines = ["| method | operating point | top-1 (%) [95 % CI] | top-5 (%) | mean MACs (M) | p95 MACs (M) | chosen on | measured on |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    for c in curves:
        pts = c.frontier().points if frontier_only else c.points
        for p in sorted(pts, key=lambda p: p.macs_mean):
            t5 = f"{p.top5:.2f}" if p.top5 is not None else ""
            p95 = f"{p.macs_p95 / 1e6:.3f}" if p.macs_p95 is not None else ""
            lines.append(f"| {c.method} | {p.operating_point.name} | {_ci(p.accuracy, p.n)} | {t5} | {p.macs_mean / 1e6:.3f} | {p95} "
                         f"| {c.calibrated_on or '-'} | {c.measured_on or '?'} |")
    return "\n".join(lines)


def summary_table(curves: list[TradeoffCurve], reference: str | None = None, losses=(0.5, 1.0)) -> str:
    """The short answer per dynamic curve: its cheapest point within each accuracy loss of
    a reference, and the MAC reduction there. The reference is each curve's own most
    expensive point (its full cost) or, given ``reference``, the most expensive point of
    the curve with that method name (e.g. the static backbone). Points are picked on the
    numbers the curve was measured on; single-point curves (static models, the oracle)
    have nothing to pick and are left out."""
    ref_curve = None if reference is None else _named(curves, reference)
    who = f"`{reference}`" if reference else "its own full cost"
    head = " | ".join(f"<= {d:g} pt: top-1 (%) [95 % CI] | MACs (M) | reduction" for d in losses)
    lines = [f"Cheapest point within each accuracy loss of {who} (measured on each curve's measurement split; "
             "95 % Wilson intervals)", "",
             f"| method | reference top-1 (%) [95 % CI] | reference MACs (M) | {head} |",
             "|---|---:|---:|" + "---:|---:|---:|" * len(losses)]
    for c in curves:
        if c is ref_curve or len(c.points) < 2:
            continue
        ref = max((ref_curve or c).points, key=lambda p: p.macs_mean)
        cells = []
        for d in losses:
            ok = [p for p in c.points if p.accuracy >= ref.accuracy - d - 1e-9]
            if ok:
                b = min(ok, key=lambda p: p.macs_mean)
                cells.append(f"{_ci(b.accuracy, b.n)} | {b.macs_mean / 1e6:.2f} | {ref.macs_mean / b.macs_mean:.2f}x")
            else:
                cells.append("none | - | -")
        lines.append(f"| {c.method} | {_ci(ref.accuracy, ref.n)} | {ref.macs_mean / 1e6:.2f} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _named(curves: list[TradeoffCurve], name: str) -> TradeoffCurve:
    match = [c for c in curves if c.method == name]
    if not match:
        raise ValueError(f"no curve named '{name}' in the records; have: {', '.join(c.method for c in curves)}")
    return match[0]


def _subjects_and_frontiers(curves: list[TradeoffCurve], subject: str,
                            groups: dict[str, str]) -> tuple[list[TradeoffCurve], dict[str, TradeoffCurve]]:
    """The curves matching ``subject``, and each group's other curves merged into one frontier."""
    subj = [c for c in curves if matches(c.method, subject)]
    if not subj:
        raise ValueError(f"no curve matches '{subject}'; have: {', '.join(c.method for c in curves)}")
    fronts = {}
    for label, pattern in groups.items():
        members = [c for c in curves if matches(c.method, pattern) and c not in subj]
        if not members:
            raise ValueError(f"group '{label}': no curve other than the subject's matches '{pattern}'")
        fronts[label] = TradeoffCurve.merge(label, members)
    return subj, fronts


def gap_table(curves: list[TradeoffCurve], subject: str, groups: dict[str, str]) -> str:
    """Is one family above others at equal MACs? For every point of the curves whose method
    matches the glob ``subject``, the accuracy of each group's frontier at the same mean MACs
    (all curves matching the group's glob merged into one frontier, interpolated linearly
    in MACs) and the gap in points. A group whose cheapest point costs more than the
    subject's point has no accuracy there ("below its range"): it is not reached, not beaten.
    Each gap says "tie" when the two 95 % intervals overlap."""
    subj, fronts = _subjects_and_frontiers(curves, subject, groups)
    head = " | ".join(f"{lab} at equal MACs (%) | gap (pt)" for lab in fronts)
    lines = [f"| method | operating point | top-1 (%) [95 % CI] | mean MACs (M) | {head} |",
             "|---|---|---:|---:|" + "---:|---:|" * len(fronts)]
    for c in subj:
        for p in sorted(c.points, key=lambda p: p.macs_mean):
            cells = [_gap_cell(p, f) for f in fronts.values()]
            lines.append(f"| {c.method} | {p.operating_point.name} | {_ci(p.accuracy, p.n)} | {p.macs_mean / 1e6:.2f} | "
                         f"{' | '.join(cells)} |")
    return "\n".join(lines)


def headline_table(curves: list[TradeoffCurve], subject: str, groups: dict[str, str], reference: str,
                   max_loss: float = 0.5, compute: dict | None = None, equal_compute: str | None = None) -> str:
    """One row per curve matching the glob ``subject``: its cheapest point within
    ``max_loss`` points of the ``reference`` curve's most accurate point (else its most
    accurate point, marked "best"), with a 95 % Wilson interval, and each group's frontier
    at the same mean MACs. "tie" when the two intervals overlap: on 2,500 images a
    difference under about a point is not evidence.

    ``compute`` ({method: :class:`~anycost.traincost.TrainingCompute`}) adds each row's
    training compute; with ``equal_compute`` (a glob of static curves) also the frontier of
    only those static networks that had at least the row's training compute and the same
    teachers, and which networks those are: the comparison that no training budget favours.
    A point cheaper than all of those is compared with the cheapest of them."""
    ref_best = max(_named(curves, reference).points, key=lambda p: p.accuracy)
    subj, fronts = _subjects_and_frontiers(curves, subject, groups)
    if equal_compute is not None and compute is None:
        raise ValueError("an equal-compute comparison needs the training compute of every curve (train records)")
    pool = [c for c in curves if equal_compute and matches(c.method, equal_compute) and c not in subj]
    if equal_compute and not pool:
        raise ValueError(f"equal-compute: no curve other than the subject's matches '{equal_compute}'")

    head = " | ".join(f"{lab} at equal MACs (%) | gap (pt)" for lab in fronts)
    cols = ["method", "operating point", "top-1 (%) [95 % CI]", "mean MACs (M)", f"vs `{reference}`", "measured on"]
    align = ["---", "---", "---", "---:", "---:", "---"]
    if compute is not None:
        cols.append("training (PMACs)")
        align.append("---:")
    if equal_compute:
        cols += ["static networks of >= training compute, same teacher",
                 "their frontier at equal MACs (%)", "gap (pt)"]
        align += ["---", "---:", "---:"]
    lines = [f"Each curve's cheapest point within {max_loss:g} pt of `{reference}` ({ref_best.accuracy:.2f} %, "
             f"{ref_best.macs_mean / 1e6:.1f} M MACs); top-1 with its 95 % interval; \"tie\" where the intervals overlap."
             + (" Training compute in peta-MACs (1e15), every stage that made the model, teacher passes included."
                if compute is not None else ""), "",
             f"| {' | '.join(cols)} | {head} |", f"|{'|'.join(align)}|" + "---:|---:|" * len(fronts)]
    for c in subj:
        ok = [p for p in c.points if p.accuracy >= ref_best.accuracy - max_loss - 1e-9]
        p = min(ok, key=lambda p: p.macs_mean) if ok else max(c.points, key=lambda p: p.accuracy)
        name = p.operating_point.name + ("" if ok else " (best)")
        cells = [c.method, name, _ci(p.accuracy, p.n), f"{p.macs_mean / 1e6:.1f}",
                 f"{ref_best.macs_mean / p.macs_mean:.2f}x fewer", c.measured_on or "?"]
        tc = compute.get(c.method) if compute is not None else None
        if compute is not None:
            cells.append(tc.describe() if tc is not None else "no record")
        if equal_compute:
            peers = [] if tc is None else [s for s in pool if s.method in compute and compute[s.method].complete
                                           and compute[s.method].macs >= tc.macs
                                           and compute[s.method].teachers == tc.teachers]
            if tc is None:
                cells += ["no record of its training", "-", "-"]
            elif not peers:
                cells += ["none yet", "-", "-"]
            else:
                names = ", ".join(f"{s.method} ({compute[s.method].macs / PMAC:.2f})" for s in peers)
                cells += [names, *_equal_compute_cell(p, TradeoffCurve.merge("equal compute", peers)).split(" | ")]
        lines.append(f"| {' | '.join(cells)} | {' | '.join(_gap_cell(p, f) for f in fronts.values())} |")
    return "\n".join(lines)


def training_compute_of(curves: list[TradeoffCurve], records) -> dict:
    """{method: TrainingCompute} for every curve whose training the
    :class:`~anycost.traincost.RecordSet` ``records`` can trace (others are left out)."""
    from anycost.traincost import training_compute

    out = {}
    for c in curves:
        try:
            out[c.method] = training_compute(c.method, records)
        except KeyError:
            pass
    return out


def bench_table(method: str, b: dict) -> str:
    """Wall-clock per point. Records made with interleaved rounds also give each speed-up's
    range over rounds and the spread of the timings (a spread over 20 % is flagged)."""
    rounds = "speedup_batch1_range" in b["points"][0]
    m = b.get("machine") or {}
    where = f"{m.get('cpu', b['device'])}, {b['threads']} threads, torch {m['torch']}" if m else f"{b['device']}, {b['threads']} threads"
    n_rounds = (b.get("config") or {}).get("rounds")
    head = f"Wall-clock, {method} ({where}" + (f"; medians over {n_rounds} interleaved rounds" if rounds and n_rounds else "") + ")"
    if b.get("reference"):
        head += f"; speed-ups against `{b['reference']}`, timed in the same rounds"
    lines = [head, "",
             "| operating point | MACs (M) | MAC reduction | batch-1 p50 (ms) | p95 (ms) | speed-up b1 | "
             f"throughput b{b['points'][0]['batch_size']} (img/s) | speed-up batched | realised / MAC (b1, batched) |"
             + (" spread (b1, batched) |" if rounds else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---|" + ("---|" if rounds else "")]
    for r in b["points"]:
        s1, sb = f"{r['speedup_batch1']:.2f}x", f"{r['speedup_batched']:.2f}x"
        if rounds:
            lo, hi = r["speedup_batch1_range"]
            s1 += f" [{lo:.2f}, {hi:.2f}]"
            lo, hi = r["speedup_batched_range"]
            sb += f" [{lo:.2f}, {hi:.2f}]"
        flag = lambda v: f"{v:.0%}" + (" (unsteady)" if v > 0.20 else "")
        name = f"**{r['operating_point']['name']}**" if r.get("reference") else r["operating_point"]["name"]
        lines.append(f"| {name} | {r['macs_mean_batched'] / 1e6:.3f} | {r['mac_reduction']:.2f}x "
                     f"| {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | {s1} "
                     f"| {r['throughput_img_s']:.0f} | {sb} "
                     f"| {r['realised_fraction_batch1']:.2f}, {r['realised_fraction_batched']:.2f} |"
                     + (f" {flag(r['latency_spread'])}, {flag(r['throughput_spread'])} |" if rounds else ""))
    return "\n".join(lines)


def train_table(records: list[dict]) -> str:
    """Training runs: final validation accuracy, time, throughput and training compute (this
    run only, in peta-MACs; "est." where the record predates the count and it is rebuilt
    from the config), from train records."""
    from anycost.traincost import stage_macs

    lines = ["| model | teacher | epochs | val top-1 (%) | val top-5 (%) | train time (min) | s / epoch (median) | "
             "img/s (median) | training (PMACs) | hardware |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in records:
        h = r["results"]["history"]
        fin = r["results"]["final"] or {}
        secs = sorted(x["epoch_seconds"] for x in h)
        ips = sorted(x["images_per_s"] for x in h)
        hw = r["hardware"]
        # a GPU run (hardware_info writes "gpu" only for CUDA devices) is timed on its GPU
        where = hw.get("gpu") or f"{hw['cpu']}, {hw['torch_threads']} thread{'s' if hw['torch_threads'] != 1 else ''}"
        try:
            macs, est = stage_macs(r)
            spent = f"{macs / PMAC:.3f}{' est.' if est else ''}"
        except (KeyError, ValueError):  # an older record of a model this version no longer builds
            spent = "-"
        lines.append(f"| {r['config']['model']} | {r['config'].get('teacher') or '-'} | {len(h)} | {fin.get('val_acc', float('nan')):.2f} | "
                     f"{fin.get('val_top5', float('nan')):.2f} | {r['results']['train_seconds'] / 60:.1f} | "
                     f"{secs[len(secs) // 2]:.0f} | {ips[len(ips) // 2]:.0f} | {spent} | {where} |")
    return "\n".join(lines)


def loadtest_table(records: list[dict]) -> str:
    """Serving under load, one row per server and offered load: throughput, p95 / p99
    latency against the target, served accuracy with its 95 % Wilson interval, mean MACs,
    refusals (503), errors and lost requests, and the operating points used."""
    lines = ["| server | offered load | offered (req/s) | served (req/s) | p95 (ms) | p99 (ms) | within target | "
             "served top-1 (%) [95 % CI] | mean MACs (M) | 503 | errors | lost | operating points |",
             "|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for r in records:
        cfg = r.get("config") or {}
        slo = cfg.get("slo_ms")
        for u in sorted(r["results"]["runs"], key=lambda u: u["rate"]):
            load = f"{u['offered_load']:.1f} C" if u.get("offered_load") is not None else "-"
            p95, p99 = (u["latency_ms"] or {}).get("p95"), (u["latency_ms"] or {}).get("p99")
            ok = "-" if slo is None or p95 is None else ("yes" if p95 <= slo else "no")
            acc = "-" if u.get("accuracy") is None else \
                f"{u['accuracy']:.2f} [{u['accuracy_ci95'][0]:.2f}, {u['accuracy_ci95'][1]:.2f}]"
            mix = ", ".join(f"{k} {v:.0%}" for k, v in sorted(u["operating_points"].items(), key=lambda kv: -kv[1])
                            if v >= 0.005)
            num = lambda v, f: "-" if v is None else format(v, f)
            lines.append(f"| {cfg.get('label', '-')} | {load} | {u['rate']:.0f} | {u['throughput']:.0f} | "
                         f"{num(p95, '.0f')} | {num(p99, '.0f')} | {ok} | {acc} | "
                         f"{num(u.get('macs_mean') and u['macs_mean'] / 1e6, '.1f')} | {u['rejected']} | "
                         f"{u['errors']} | {u['lost']} | {mix or '-'} |")
    targets = sorted({(r.get("config") or {}).get("slo_ms") for r in records} - {None})
    if targets:
        lines += ["", "Target: p95 within " + ", ".join(f"{t:.0f} ms" for t in targets) + "; C: the capacity "
                  "of the server pinned to the most accurate point."]
    return "\n".join(lines)


def section_markers(section: str) -> tuple[str, str]:
    return f"<!-- anycost:{section}:begin -->", f"<!-- anycost:{section}:end -->"


def replace_section(path: str | os.PathLike, section: str, body: str) -> None:
    """Rewrite the block between ``<!-- anycost:SECTION:begin -->`` and ``...:end -->`` of a
    Markdown file (e.g. the README's results) with ``body``, atomically. The markers must
    exist once each, in order: a results page is never appended to by surprise."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", section):
        raise ValueError(f"section name '{section}': use letters, digits, '.', '_' or '-'")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file to write the '{section}' section into")
    text = path.read_text()
    begin, end = section_markers(section)
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path}: needs exactly one '{begin}' followed by one '{end}'")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    write_text_atomic(path, f"{head}{begin}\n{body.strip()}\n{end}{tail}")
