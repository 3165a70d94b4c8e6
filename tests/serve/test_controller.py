"""The budget controller, driven by fake latencies and a fake clock: deterministic.

A small discrete-event simulation (Poisson arrivals, a batching worker whose batch times come
from the table) checks the property the controller exists for: under overload the adaptive
server keeps the p95 latency within the target while a server pinned to the top point does not.
"""

import math

import numpy as np
import pytest

from anycost.core import OperatingPoint
from anycost.serve.controller import Controller, LatencyTable

# three points: cost 1x, 0.5x and 0.25x; accuracy falls as cost falls
TOP = OperatingPoint("top", {}, 100e6, 90.0, "calib")
MID = OperatingPoint("mid", {}, 50e6, 88.0, "calib")
LOW = OperatingPoint("low", {}, 25e6, 80.0, "calib")
POINTS = [LOW, TOP, MID]
SIZES = [1, 8, 32]


def per_image(op):  # seconds: a fixed overhead plus time proportional to MACs
    return {"top": 1e-3, "mid": 0.5e-3, "low": 0.25e-3}[op]


def table(alpha=0.2):
    return LatencyTable(SIZES, {p.name: [0.002 + per_image(p.name) * n for n in SIZES] for p in POINTS}, alpha=alpha)


def test_table_interpolates_extrapolates_and_never_predicts_a_bigger_batch_faster():
    t = table()
    assert t.predict("top", 8) == pytest.approx(0.010)
    assert t.predict("top", 20) == pytest.approx(0.002 + 0.020)  # between 8 and 32
    assert t.predict("top", 64) == pytest.approx(0.002 + 0.064)  # beyond the last size, on the last segment
    noisy = LatencyTable([1, 4, 16], {"a": [0.010, 0.004, 0.020]})  # a start-up hiccup at batch 1
    assert [noisy.predict("a", n) for n in (1, 4, 16)] == [0.010, 0.010, 0.020]


def test_table_observations_move_every_prediction_by_a_moving_average():
    t = table(alpha=0.5)
    t.observe("top", 8, 0.020)  # twice as slow as measured
    assert t.predict("top", 8) == pytest.approx(0.010 * 1.5)
    for _ in range(20):
        t.observe("top", 8, 0.020)
    assert t.predict("top", 32) == pytest.approx(2 * 0.034, rel=1e-3)  # the factor applies to every size
    assert t.predict("low", 1) == pytest.approx(2 * 0.00225, rel=1e-3)  # and to every point
    t.observe("top", 8, float("nan"))  # ignored, like unknown points and empty batches
    t.observe("nope", 8, 1.0)
    t.observe("top", 0, 1.0)
    assert t.predict("top", 32) == pytest.approx(2 * 0.034, rel=1e-3)


@pytest.mark.parametrize("bad", [{"sizes": []}, {"sizes": [8, 1, 32]}, {"seconds": {"top": [1.0, 2.0]}},
                                 {"seconds": {"top": [1.0, -1.0, 2.0]}}, {"alpha": 0.0}])
def test_table_refuses_nonsense(bad):
    kw = {"sizes": SIZES, "seconds": {"top": [1.0, 2.0, 3.0]}, **bad}
    with pytest.raises(ValueError):
        LatencyTable(**kw)


def test_idle_server_gets_the_most_accurate_point_and_a_queue_makes_it_cheaper():
    c = Controller(POINTS, table(), max_batch=32, slo_s=0.100, headroom=1.0)
    assert c.choose(1, 0.0, 0).point is TOP
    # 32 now, 64 behind: top needs 0.034 * 3 = 0.102 s > 0.1; mid 0.018 * 3 = 0.054 s
    d = c.choose(32, 0.0, 64)
    assert d.point is MID and d.fits and d.predicted_s == pytest.approx(0.054)
    assert c.choose(32, 0.0, 32 * 8).point is LOW  # 9 batches: only low fits (0.01 * 9 = 0.09)
    d = c.choose(32, 0.05, 32 * 8)  # waited half the target already: nothing fits
    assert d.point is LOW and not d.fits


def test_a_point_that_cannot_keep_up_with_the_arrivals_is_not_chosen():
    c = Controller(POINTS, table(), max_batch=32, slo_s=1.0, max_util=0.8)
    assert c.choose(1, 0.0, 0, arrival_rate=0.0).point is TOP
    # top serves 32 / 0.034 = 941 images/s at full batches: 800/s would keep it 85 % busy
    assert c.utilisation(TOP, 800.0) == pytest.approx(800 * 0.034 / 32)
    assert c.choose(1, 0.0, 0, arrival_rate=800.0).point is MID
    assert c.choose(1, 0.0, 0, arrival_rate=2500.0).point is LOW  # 2500 * 0.018 / 32 = 1.4 > 0.8: mid neither
    d = c.choose(1, 0.0, 0, arrival_rate=1e6)  # nothing keeps up: the fastest, as the best effort
    assert d.point is LOW and not d.fits


def test_headroom_keeps_a_margin_below_the_target():
    tight = Controller(POINTS, table(), max_batch=32, slo_s=0.100, headroom=0.5)
    assert tight.choose(32, 0.0, 32).point is MID  # top would take 0.068 s > 0.05


def test_no_target_always_serves_the_most_accurate_point_and_pinning_always_the_pinned_one():
    free = Controller(POINTS, table(), max_batch=32)
    assert free.choose(32, 10.0, 10_000).point is TOP
    pinned = Controller(POINTS, table(), max_batch=32, slo_s=0.001, pinned="low")
    assert {pinned.choose(n, 0.0, q).point.name for n, q in [(1, 0), (32, 1000)]} == {"low"}
    with pytest.raises(KeyError, match="have: low, mid, top"):
        Controller(POINTS, table(), max_batch=32, pinned="nope")


def test_budget_caps_the_running_mean_of_macs_served():
    c = Controller(POINTS, table(), max_batch=8, budget=60e6)  # no latency target
    spent = 0.0
    for _ in range(200):
        p = c.choose(8).point
        c.served(p, 8, 0.01, p.macs * 8)
        spent += p.macs * 8
        assert spent / c.images <= 60e6 + 1e-6
    assert spent / c.images > 55e6  # and it spends what the budget allows, not the cheapest point
    with pytest.raises(ValueError, match="below the cheapest point"):
        Controller(POINTS, table(), max_batch=8, budget=10e6)


def test_budget_counts_the_macs_really_spent_and_falls_back_to_the_cheapest_point():
    c = Controller(POINTS, table(), max_batch=8, budget=60e6)
    c.served(MID, 8, 0.01, 8 * 90e6)  # mid's inputs cost far more than its calibrated mean
    assert c.choose(8).point is LOW  # even mid would keep the mean above the budget
    c.served(LOW, 8, 0.01, 8 * 25e6)
    assert c.choose(8).point is MID  # (720 + 200 + 400) / 24 = 55 M


def test_budget_is_a_mean_over_a_window_so_a_cheap_stretch_banks_no_lasting_credit():
    def dear_batches_after_a_cheap_stretch(window):
        c = Controller(POINTS, table(), max_batch=8, budget=60e6, budget_window=window)
        for _ in range(100):  # 800 inputs at the cheapest point: 35 M under the budget each
            c.served(LOW, 8, 0.01, 8 * 25e6)
        run = 0
        while (p := c.choose(8).point) is TOP and run < 1000:
            c.served(p, 8, 0.01, 8 * p.macs)
            run += 1
            if window is not None:  # the mean over the last `window` inputs stays within the budget
                assert c.window_mean_macs <= 60e6 + 1e-6
        # the history held is the window's batches, none at all for a mean since start-up
        assert len(c._window) == (0 if window is None else window // 8)
        return run

    # since start-up: 800 x 35 M of credit pays for 700 inputs at 100 M before the mean reaches 60 M
    assert dear_batches_after_a_cheap_stretch(None) == 87
    # a window of 80 inputs: the credit is gone after a few batches at the top point
    assert dear_batches_after_a_cheap_stretch(80) <= 4
    c = Controller(POINTS, table(), max_batch=8, budget=60e6, budget_window=16)
    assert c.window_mean_macs is None
    for p in (TOP, LOW, LOW):
        c.served(p, 8, 0.01, 8 * p.macs)
    assert c.window_mean_macs == pytest.approx(25e6)  # the top batch has left the 16-input window
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="budget window"):
            Controller(POINTS, table(), max_batch=8, budget=60e6, budget_window=bad)


@pytest.mark.parametrize("kw", [{"slo_s": 0}, {"slo_s": math.inf}, {"budget": -1.0}, {"headroom": 0},
                                {"max_batch": 0}])
def test_controller_refuses_nonsense(kw):
    with pytest.raises(ValueError):
        Controller(POINTS, table(), **{"max_batch": 32, **kw})


def test_controller_needs_calibrated_points_with_times():
    with pytest.raises(ValueError, match="calibrated"):
        Controller([OperatingPoint("raw")], table(), max_batch=8)
    with pytest.raises(ValueError, match="no times"):
        Controller([TOP, OperatingPoint("x", {}, 1e6, 50.0, "calib")], table(), max_batch=8)


def simulate(controller, rate, seconds=20.0, max_batch=32, max_wait=0.002, seed=0, slowdown=1.0):
    """Latencies of Poisson arrivals through one batching worker (fake clock). Batch times are
    the table's own predictions, times a seeded +-10 % jitter the controller does not know
    (and ``slowdown``: a machine slower than the start-up table said)."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, int(rate * seconds)))
    t, i, lat, used = 0.0, 0, [], []
    truth = table()
    while i < len(arrivals):
        t = max(t, arrivals[i])
        # wait for a full batch or until the oldest has waited max_wait
        due = arrivals[i] + max_wait
        n_avail = np.searchsorted(arrivals, max(t, due), side="right") - i
        if n_avail < max_batch:
            t = max(t, due)
        else:
            t = max(t, arrivals[i + max_batch - 1])
        n = min(max_batch, np.searchsorted(arrivals, t, side="right") - i)
        queued = np.searchsorted(arrivals, t, side="right") - i - n
        rate = np.searchsorted(arrivals, t, side="right") - np.searchsorted(arrivals, t - 1.0, side="right")
        p = controller.choose(int(n), t - arrivals[i], int(queued), float(rate)).point
        dt = truth.predict(p.name, int(n)) * rng.uniform(0.9, 1.1) * slowdown
        t += dt
        controller.served(p, int(n), dt, p.macs * n, latency_s=t - arrivals[i])
        lat += list(t - arrivals[i:i + n])
        used += [p.name] * int(n)
        i += int(n)
    return np.percentile(lat, 95), used


def capacity(op):  # images/s at full batches, for the simulation's table
    return 32 / table().predict(op, 32)


def test_simulated_overload_adaptive_holds_the_target_where_the_pinned_top_point_cannot():
    c_full = capacity("top")
    slo = 0.060
    for load in (0.5, 1.0, 2.0):
        p95, used = simulate(Controller(POINTS, table(), max_batch=32, slo_s=slo), load * c_full)
        assert p95 <= slo, (load, p95)
        if load == 0.5:  # light load: nearly everything at the top point
            assert used.count("top") / len(used) > 0.95
        if load == 2.0:  # twice what the top point can serve: cheaper points carry it
            assert used.count("top") / len(used) < 0.5
    p95_pinned, _ = simulate(Controller(POINTS, table(), max_batch=32, pinned="top"), 2.0 * c_full)
    assert p95_pinned > 10 * slo  # the queue grows without bound


def test_late_answers_shrink_the_usable_target_and_timely_ones_grow_it_back():
    c = Controller(POINTS, table(), max_batch=32, slo_s=0.100, headroom=1.0, backoff=0.5, recover=0.25)
    assert c.choose(32, 0.0, 64).point is MID  # predicted 0.054 s of 0.1
    c.served(MID, 32, 0.02, 0.0, latency_s=0.150)  # answered late: something the table does not see
    assert c.scale == 0.5 and c.choose(32, 0.0, 64).point is LOW  # mid's 0.054 > 0.05
    c.served(MID, 32, 0.02, 0.0, latency_s=0.150)
    c.served(MID, 32, 0.02, 0.0, latency_s=0.150)
    c.served(MID, 32, 0.02, 0.0, latency_s=0.150)
    assert c.scale == pytest.approx(0.1)  # the floor
    for _ in range(4):
        c.served(LOW, 32, 0.01, 0.0, latency_s=0.02)
    assert c.scale == pytest.approx(1.0) and c.choose(32, 0.0, 64).point is MID
    with pytest.raises(ValueError):
        Controller(POINTS, table(), max_batch=32, backoff=1.0)


def test_simulated_machine_slower_than_its_table_still_holds_the_target():
    slo = 0.060
    c = Controller(POINTS, table(), max_batch=32, slo_s=slo)
    p95, used = simulate(c, 1.5 * capacity("top"), slowdown=1.6)
    assert p95 <= slo, p95
