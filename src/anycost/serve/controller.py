"""The budget controller: which operating point serves the next batch.

The server measures, at start-up, how long a batch of n inputs takes at each point
(:class:`LatencyTable`), and keeps that table current with what it observes. Before each
batch the :class:`Controller` predicts, for every point, when the last request now waiting
would be answered if this batch and the queue behind it were all served at that point:

    finish(point) = waited + L(point, n) + ceil(queued / max_batch) * L(point, max_batch)

where ``waited`` is how long the oldest request of the batch has already waited. It picks the
most accurate point with ``finish <= headroom * slo`` (headroom < 1 because the target is a
p95, not a mean, and arrivals keep coming while the batch runs) that can also keep up with
the recent arrival rate: at full batches it must be busy at most ``max_util`` of the time,
or the queue it leaves behind grows until a later batch has to fall far. When none fits,
the cheapest point in MACs serves: the best effort, whatever the table says.

The prediction cannot see everything (time spent reading and decoding a request before it
is queued, other work on the machine), so the answer times are fed back: a batch whose
oldest request took longer than the target shrinks the usable fraction of the target by
``backoff``, and each batch within it grows the fraction back by ``recover`` (additive
increase, multiplicative decrease, as in TCP).

A MAC budget, if given, targets the mean of the MACs really served over the last
``budget_window`` inputs (whole batches): a point is allowed only while that mean with this
batch stays within it. A window, not the mean since start-up, so that a quiet night at cheap
points does not bank credit for an hour at the dearest one. Everything takes its time from
arguments, so that tests drive it with a fake clock and fake latencies.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from anycost.core import OperatingPoint

__all__ = ["LatencyTable", "Controller", "Decision"]


@dataclass
class LatencyTable:
    """Seconds to serve a batch of n inputs at each point.

    ``seconds[name][i]`` was measured at batch size ``sizes[i]``; sizes in between are
    interpolated linearly and sizes beyond the largest extrapolated from the last two (batch
    time is close to affine in n on a CPU). ``observe`` keeps one correction factor, an
    exponential moving average of observed / predicted over every batch, so that a machine
    that slows down moves every prediction within a few batches. The factor is shared, not
    per point: a per-point factor inflated by a few unlucky batches would keep its point
    unchosen, and so never corrected, and the start-up ordering of the points is the more
    reliable part of the table.
    """

    sizes: Sequence[int]
    seconds: dict[str, Sequence[float]]
    alpha: float = 0.1  # weight of the newest observation in the correction factor
    factor: float = 1.0

    def __post_init__(self):
        self.sizes = tuple(int(s) for s in self.sizes)
        if not self.sizes or list(self.sizes) != sorted(set(self.sizes)) or self.sizes[0] < 1:
            raise ValueError(f"sizes must be increasing positive batch sizes, got {self.sizes}")
        for name, secs in self.seconds.items():
            if len(secs) != len(self.sizes) or not all(math.isfinite(s) and s > 0 for s in secs):
                raise ValueError(f"point {name!r}: need {len(self.sizes)} positive finite times, got {list(secs)}")
        # a bigger batch never takes less time: where start-up noise says it does, the rest of
        # the row is raised to the largest time before it
        self.seconds = {k: [max(v[: i + 1]) for i in range(len(v))] for k, v in self.seconds.items()}
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")

    def base(self, name: str, n: int) -> float:
        """The start-up measurement at batch size ``n`` (interpolated)."""
        s, t = self.sizes, self.seconds[name]
        if len(s) == 1:
            return t[0] * n / s[0]
        if n <= s[0]:
            return t[0]
        for i in range(1, len(s)):
            if n <= s[i] or i == len(s) - 1:
                a, b = i - 1, i
                return max(t[a] + (t[b] - t[a]) * (n - s[a]) / (s[b] - s[a]), t[0])
        raise AssertionError("unreachable")

    def predict(self, name: str, n: int) -> float:
        return self.factor * self.base(name, n)

    def observe(self, name: str, n: int, seconds: float) -> None:
        if name not in self.seconds or n < 1 or not (seconds > 0 and math.isfinite(seconds)):
            return
        self.factor = (1 - self.alpha) * self.factor + self.alpha * seconds / self.base(name, n)

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "seconds": {k: list(v) for k, v in self.seconds.items()},
                "factor": self.factor}


@dataclass(frozen=True)
class Decision:
    point: OperatingPoint
    predicted_s: float  # predicted finish time of the last queued request at this point
    fits: bool  # whether any point met the target (False: the cheapest point, as the best effort)


class Controller:
    """Chooses the point for each batch (see the module docstring for the rule).

    ``points``: the shipped points to choose from (calibrated: each has MACs and accuracy);
    ``slo_s``: the p95 latency target in seconds (None: always the most accurate point);
    ``pinned``: always this point (a static baseline); ``budget``: target for the mean MACs
    per input over the last ``budget_window`` inputs served (None: since start-up);
    ``headroom``: the fraction of the target the prediction may use at most;
    ``backoff`` / ``recover`` / ``floor``: how answer times move that fraction (see above);
    ``max_util``: the busiest a point may be kept at the recent arrival rate.
    """

    def __init__(self, points: Sequence[OperatingPoint], table: LatencyTable, *, max_batch: int,
                 slo_s: float | None = None, pinned: str | None = None, budget: float | None = None,
                 budget_window: int | None = 10_000, headroom: float = 0.7, backoff: float = 0.8,
                 recover: float = 0.02, floor: float = 0.1, max_util: float = 0.8):
        pts = [p for p in points if p.calibrated]
        if not pts:
            raise ValueError("the controller needs calibrated operating points (with MACs and accuracy)")
        missing = [p.name for p in pts if p.name not in table.seconds]
        if missing:
            raise ValueError(f"the latency table has no times for {missing}")
        if slo_s is not None and not (slo_s > 0 and math.isfinite(slo_s)):
            raise ValueError(f"the latency target must be a positive number of seconds, got {slo_s!r}")
        if budget is not None and not (budget > 0 and math.isfinite(budget)):
            raise ValueError(f"the MAC budget must be a positive number, got {budget!r}")
        if budget is not None and budget < min(p.macs for p in pts):
            cheapest = min(pts, key=lambda p: p.macs)
            raise ValueError(f"budget {budget / 1e6:.4g} M MACs is below the cheapest point "
                             f"({cheapest.name}: {cheapest.macs / 1e6:.4g} M)")
        if budget_window is not None and (isinstance(budget_window, bool) or not isinstance(budget_window, int)
                                          or budget_window < 1):
            raise ValueError(f"the budget window must be a positive number of inputs, got {budget_window!r}")
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        if not (0 < backoff < 1 and 0 <= recover <= 1 and 0 < floor <= 1):
            raise ValueError(f"need 0 < backoff < 1, 0 <= recover <= 1, 0 < floor <= 1; got {backoff}, {recover}, {floor}")
        if not 0 < max_util <= 1:
            raise ValueError(f"max_util must be in (0, 1], got {max_util}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        # most accurate first; among equals the cheaper
        self.points = sorted(pts, key=lambda p: (-p.accuracy, p.macs))
        self.table, self.max_batch = table, int(max_batch)
        self.slo_s, self.budget, self.headroom = slo_s, budget, headroom
        self.backoff, self.recover, self.floor, self.max_util = backoff, recover, floor, max_util
        self.scale = 1.0  # the fraction of headroom * slo the prediction may use now
        self.pinned = None
        if pinned is not None:
            by_name = {p.name: p for p in pts}
            if pinned not in by_name:
                raise KeyError(f"no operating point named {pinned!r} (have: {', '.join(sorted(by_name))})")
            self.pinned = by_name[pinned]
        self.images = 0  # served so far
        self.macs = 0.0
        self.budget_window = budget_window
        # (inputs, MACs) of the batches in the budget's window; kept only when there is a window
        # to trim, so a mean since start-up holds no per-batch history
        self._window: deque[tuple[int, float]] = deque()
        self._window_images, self._window_macs = 0, 0.0

    def finish_time(self, p: OperatingPoint, n: int, waited_s: float, queued: int) -> float:
        """Predicted time until the last request now waiting is answered, all at point ``p``."""
        rest = math.ceil(queued / self.max_batch) * self.table.predict(p.name, min(queued, self.max_batch)) \
            if queued > 0 else 0.0
        return waited_s + self.table.predict(p.name, n) + rest

    def _affordable(self, p: OperatingPoint, n: int) -> bool:
        """Whether serving n inputs at p keeps the mean over the window (of the MACs really
        spent) within the budget."""
        if self.budget is None:
            return True
        images, macs = self._window_images + n, self._window_macs + p.macs * n
        for old_n, old_macs in self._window:  # the window as it will be once this batch is in
            if images - old_n < self.budget_window:
                break
            images, macs = images - old_n, macs - old_macs
        return macs / images <= self.budget

    @property
    def window_mean_macs(self) -> float | None:
        """The mean MACs per input over the budget's window (None before the first batch)."""
        return self._window_macs / self._window_images if self._window_images else None

    def utilisation(self, p: OperatingPoint, arrival_rate: float) -> float:
        """The fraction of the time point ``p`` would be busy serving ``arrival_rate`` inputs
        per second in full batches."""
        return arrival_rate * self.table.predict(p.name, self.max_batch) / self.max_batch

    def choose(self, n: int, waited_s: float = 0.0, queued: int = 0, arrival_rate: float = 0.0) -> Decision:
        """The point for a batch of ``n`` whose oldest request has waited ``waited_s`` seconds,
        with ``queued`` more inputs waiting behind it and inputs arriving at ``arrival_rate``
        per second of late."""
        if self.pinned is not None:
            return Decision(self.pinned, self.finish_time(self.pinned, n, waited_s, queued), True)
        # the cheapest point when nothing fits the budget: early exits may have spent more than
        # their calibrated mean, and the mean can only come back down from there
        cands = [p for p in self.points if self._affordable(p, n)] or [min(self.points, key=lambda p: p.macs)]
        if self.slo_s is None:
            return Decision(cands[0], self.finish_time(cands[0], n, waited_s, queued), True)
        target = self.headroom * self.scale * self.slo_s
        for p in cands:  # most accurate first
            t = self.finish_time(p, n, waited_s, queued)
            if t <= target and self.utilisation(p, arrival_rate) <= self.max_util:
                return Decision(p, t, True)
        cheapest = min(cands, key=lambda p: (p.macs, -p.accuracy))
        return Decision(cheapest, self.finish_time(cheapest, n, waited_s, queued), False)

    def served(self, point: OperatingPoint, n: int, seconds: float, macs: float, latency_s: float | None = None
               ) -> None:
        """Account a finished batch: its inference time updates the latency table, its MACs
        (the sum over its inputs, as really spent) the windowed mean the budget caps, and
        ``latency_s`` (arrival to answer of its oldest request) the usable fraction of the target."""
        self.table.observe(point.name, n, seconds)
        self.images += n
        self.macs += macs
        self._window_images += n
        self._window_macs += macs
        if self.budget_window is not None:
            self._window.append((n, macs))
            # drop the oldest batches while the rest still cover the window
            while self._window_images - self._window[0][0] >= self.budget_window:
                old_n, old_macs = self._window.popleft()
                self._window_images -= old_n
                self._window_macs -= old_macs
        if latency_s is not None and self.slo_s is not None:
            if latency_s > self.slo_s:
                self.scale = max(self.floor, self.scale * self.backoff)
            else:
                self.scale = min(1.0, self.scale + self.recover)
