"""The CNMM grid (which feature maps and convolutions exist) and what a pruned network keeps.

Nodes are feature maps ``(l, s)`` at depth ``l = 0..L`` and scale ``s = 0..S-1``; node (l, s)
takes an edge from (l-1, s) (stride 1) and one from (l-1, s-1) (stride 2) where those exist.
Only nodes on some input -> output path exist, so every edge can matter."""

from __future__ import annotations

from dataclasses import dataclass, field

Node = tuple[int, int]  # (depth, scale)


@dataclass
class GridSpec:
    depth: int
    scales: int
    starts: tuple[int, ...] | None = None  # first depth of each scale; None: scale s from depth s

    def __post_init__(self):
        if self.starts is None:
            self.starts = tuple(range(self.scales))
            return
        self.starts = tuple(int(v) for v in self.starts)
        st = self.starts
        if len(st) != self.scales or st[0] != 0 or st[-1] > self.depth or any(b <= a for a, b in zip(st, st[1:])):
            raise ValueError(f"scale_starts is the first depth of each of the {self.scales} scales: 0, then "
                             f"strictly increasing, at most depth {self.depth}; got {st}")

    def nodes(self) -> list[Node]:
        """Topologically ordered nodes that lie on some input -> output path: node (l, s) is
        reached from the input when l >= starts[s] (starts increase strictly), and reaches the
        output (depth, scales-1) when stepping down one scale per depth, each step no earlier
        than that scale's start, gets there by the last depth."""
        starts = self.starts

        def reaches_output(l: int, s: int) -> bool:
            for t in range(s + 1, self.scales):
                l = max(l + 1, starts[t])
            return l <= self.depth

        return [(l, s) for l in range(self.depth + 1) for s in range(self.scales)
                if l >= starts[s] and reaches_output(l, s)]

    def edges(self) -> list[tuple[Node, Node]]:
        """(source, target) pairs, in topological order of their target."""
        nodes = set(self.nodes())
        es = []
        for (l, s) in self.nodes():
            for src in ((l - 1, s), (l - 1, s - 1)):
                if src in nodes:
                    es.append((src, (l, s)))
        return es


@dataclass
class PruneSpec:
    """What a pruned network keeps: edge indices and, per kept edge, its prunable channels
    (a plain edge's output channels; a residual edge's inner ones). ``unit_weights``: the
    kept edges run at weight 1, the value a training step gives the edges it sampled,
    instead of their mean-field weight ``p_e`` (mechanism ``greedy-unit``)."""

    edges: list[int]
    channels: dict[int, list[int]] = field(default_factory=dict)  # edge index -> kept channels
    unit_weights: bool = False

    def to_dict(self) -> dict:
        d = {"edges": self.edges, "channels": {str(k): v for k, v in self.channels.items()}}
        return dict(d, unit_weights=True) if self.unit_weights else d  # records written before stay identical

    @classmethod
    def from_dict(cls, d: dict) -> "PruneSpec":
        return cls(list(d["edges"]), {int(k): list(v) for k, v in d.get("channels", {}).items()},
                   bool(d.get("unit_weights", False)))
