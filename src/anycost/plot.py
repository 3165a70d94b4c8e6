"""Plots drawn from records only (never from models): accuracy against MACs on a log axis,
static networks as markers, and wall-clock speed-up against MAC reduction."""

from __future__ import annotations

import os
from pathlib import Path

from anycost.curves import matches
from anycost.eval import TradeoffCurve
from anycost.records import RecordError, read_record
from anycost.traincost import PMAC


def curves_from_record(rec: dict) -> list[TradeoffCurve]:
    res = rec.get("results") or {}
    if "curve" in res:
        return [TradeoffCurve.from_dict(res["curve"])]
    if "curves" in res:
        return [TradeoffCurve.from_dict(c) for c in res["curves"]]
    return []


def load_curves(paths) -> list[TradeoffCurve]:
    curves = []
    for p in paths:
        found = curves_from_record(read_record(p))
        if not found:
            raise RecordError(f"{p}: record has no accuracy-vs-MACs curve (kind '{read_record(p).get('kind')}')")
        curves.extend(found)
    return curves


def drop_curves(curves: list[TradeoffCurve], patterns: list[str]) -> list[TradeoffCurve]:
    """The curves whose method name matches none of the shell patterns (a crowded plot
    keeps its readable subset; the records keep everything)."""
    kept = [c for c in curves if not any(matches(c.method, p) for p in patterns)]
    if curves and not kept:
        raise ValueError(f"--exclude {patterns} leaves no curve to plot")
    return kept


def group_static(curves: list[TradeoffCurve], groups: dict[str, str]) -> list[TradeoffCurve]:
    """Static networks whose method name matches a group's shell pattern join that group's
    marker series (e.g. distilled ResNets apart from the plain ones); the first matching
    group wins, and a pattern that matches no static network is an error (a typo would
    otherwise silently merge the series)."""
    from dataclasses import replace

    for label, pattern in groups.items():
        if not any(c.static and matches(c.method, pattern) for c in curves):
            raise ValueError(f"static group '{label}': no static network matches '{pattern}'")
    out = []
    for c in curves:
        label = next((g for g, pat in groups.items() if c.static and matches(c.method, pat)), None)
        out.append(replace(c, family=label) if label else c)
    return out


def _mpl():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, out) -> Path:
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def plot_curves(curves: list[TradeoffCurve], out: str | os.PathLike, title: str | None = None,
                y_span: float = 25.0, compute: dict | None = None) -> Path:
    """Each curve's Pareto frontier as a line (its other points as faint dots); static
    networks as markers joined per family, with their 95 % Wilson intervals as bars. The y
    axis shows the top ``y_span`` points of accuracy; lower points are listed in the corner,
    not squashed into the plot. ``compute`` ({method: TrainingCompute}) adds each model's
    training compute to its label, so the plot shows which networks had the training budget
    of which."""
    from anycost.curves import wilson_interval

    def label(c: TradeoffCurve, sep: str = " ") -> str:
        tc = (compute or {}).get(c.method)
        return c.method if tc is None else f"{c.method}{sep}({tc.macs / PMAC:.2f} PMACs train)"

    plt = _mpl()
    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = plt.get_cmap("tab20").colors
    static = {}
    for c in curves:
        if c.static:
            static.setdefault(c.family or "static", []).append(c)
    markers = iter("osD^vP*X")
    notes = []  # the static networks' name labels, placed apart once the axes are final
    for fam, cs in static.items():
        pts = sorted(((c.points[0].macs_mean, c.points[0].accuracy, label(c, "\n"), c.points[0].n) for c in cs))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=":", marker=next(markers, "o"), color="0.2",
                label=fam, markersize=7, zorder=5)
        bars = [(x, y, wilson_interval(y, n)) for x, y, _, n in pts if n]
        if bars:
            ax.errorbar([b[0] for b in bars], [b[1] for b in bars], fmt="none", ecolor="0.5", elinewidth=0.8,
                        capsize=2, yerr=[[b[1] - b[2][0] for b in bars], [b[2][1] - b[1] for b in bars]], zorder=4)
        for x, y, name, _ in pts:
            notes.append(ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, -10), fontsize=6,
                                     color="0.3", va="top"))
    dynamic = [c for c in curves if not c.static]
    top = max((p.accuracy for c in curves for p in c.points), default=100.0)
    floor = top - y_span
    hidden = 0
    for i, c in enumerate(dynamic):
        col = colors[(2 * i) % 20 if len(dynamic) <= 10 else i % 20]
        fr = sorted(zip(c.frontier().macs, c.frontier().accuracies))
        if len(c.points) == 1:  # a single dynamic point (e.g. the oracle) as a star
            ax.plot(fr[0][0], fr[0][1], marker="*", markersize=13, linestyle="none", color=col, label=label(c), zorder=6)
        else:
            ax.plot([p[0] for p in fr], [p[1] for p in fr], marker=".", linewidth=1.6, color=col, label=label(c))
            ax.scatter(c.macs, c.accuracies, s=6, color=col, alpha=0.35)
        hidden += sum(a < floor for a in c.accuracies)
    ax.set_xscale("log")
    # ticks in millions of MACs; minor ticks unlabelled (labelled they collide on a short axis)
    from matplotlib.ticker import FuncFormatter, NullFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g} M"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    # the x range spans the points that are drawn: a hidden 10 %-accuracy point at 0.4 M MACs
    # would otherwise squeeze every visible curve into a corner
    shown = [x for c in curves for x, a in zip(c.macs, c.accuracies) if a >= floor] or [x for c in curves for x in c.macs]
    lo, hi = min(shown) / 1.5, 1.5 * max(shown)
    ax.set_xlim(lo, hi)
    ax.set_xticks([t for t in (1e6, 2e6, 5e6, 1e7, 2e7, 3e7, 5e7, 1e8, 2e8, 5e8, 1e9) if lo <= t <= hi])
    ax.set_ylim(floor, top + 0.05 * y_span)
    if hidden:
        ax.text(0.01, 0.01, f"{hidden} points below {floor:.0f}% not shown", transform=ax.transAxes, fontsize=7, color="0.4")
    ax.set_xlabel("MACs per image (mean, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    measured = sorted({c.measured_on for c in curves if c.measured_on})
    # over the whole figure: centred on the axes, a long title runs off the left edge once the legend is wide
    fig.suptitle(title or f"accuracy vs MACs (measured on: {', '.join(measured) or '?'})", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()  # the final layout first: label boxes are measured in pixels
    _separate(fig, notes)
    return _save(plt, fig, out)


# where a static network's label may go, in points from its marker, tried in this order
_LABEL_SPOTS = [((4, -10), "top"), ((4, 10), "bottom"), ((4, -28), "top"), ((4, 28), "bottom"), ((-70, -10), "top")]


def _separate(fig, notes) -> None:
    """Move each label that would cover an earlier one to the first free spot of
    ``_LABEL_SPOTS`` (static networks of two families often sit at the same MACs)."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for note in notes:
        for xy, va in _LABEL_SPOTS:
            note.set_position(xy)
            note.set_va(va)
            box = note.get_window_extent(renderer)
            if not any(box.overlaps(b) for b in placed):
                break
        placed.append(note.get_window_extent(renderer))


def plot_speedups(bench_results: dict[str, dict], out: str | os.PathLike, title: str | None = None) -> Path:
    """``bench_results``: method -> bench dict (from ``anycost bench --json``). Plots realised
    speed-up at batch 1 and batched against the MAC reduction; the diagonal is 'every MAC saved
    becomes time saved'."""
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    top = 1.0
    for method, b in bench_results.items():
        pts = sorted(b["points"], key=lambda r: r["mac_reduction"])  # a line left to right, not in bench order
        red = [r["mac_reduction"] for r in pts]
        for ax, key in zip(axes, ("speedup_batch1", "speedup_batched")):
            ax.plot(red, [r[key] for r in pts], marker="o", markersize=3, linewidth=1, label=method)
        top = max(top, max(red), *(r["speedup_batch1"] for r in pts), *(r["speedup_batched"] for r in pts))
    for ax, t in zip(axes, ("batch 1 (p50 latency)", "batched throughput")):
        ax.plot([1, top], [1, top], "k--", linewidth=0.8, label="speed-up = MAC reduction")
        ax.set_xscale("log")  # reductions from 1x to 20x: on a linear axis the useful 1-4x range is a smudge
        ax.set_yscale("log")
        ax.set_xlabel("MAC reduction vs full-cost setting (x, log)")
        ax.set_title(t)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("wall-clock speed-up (x, log)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    if title:
        fig.suptitle(title)
    return _save(plt, fig, out)
