"""Property tests (hypothesis) of budgets and operating-point selection, on random sets of
calibrated points held by a small stand-in model: ``at_budget`` stays within the budget
(a Mixture meets it exactly in expectation), never picks a dominated point, never loses
accuracy when given more budget, and refuses every non-budget with a BudgetError."""

import math

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from anycost.core import BudgetError, DynamicModel, DynamicOutput, Mixture, OperatingPoint, pareto_indices

REL = 1e-9  # at_budget's tolerance for float rounding


class Points(DynamicModel):
    """A model that is nothing but its shipped points: each input costs its point's MACs."""

    family = "points"

    def __init__(self, pairs):
        super().__init__()
        self.set_operating_points([OperatingPoint(f"p{i}", {}, m, a, "calib") for i, (m, a) in enumerate(pairs)])

    def _infer(self, x, op):
        n = x.shape[0]
        return DynamicOutput(torch.zeros(n, 2), torch.full((n,), float(op.macs), dtype=torch.float64))


macs_st = st.floats(1e3, 1e9, allow_nan=False)
acc_st = st.floats(0.0, 100.0, allow_nan=False)
pairs_st = st.lists(st.tuples(macs_st, acc_st), min_size=1, max_size=12)


def _budget(pairs, frac):
    """A budget from just below the cheapest point to twice the dearest, by ``frac`` in [0, 1]."""
    lo, hi = min(m for m, _ in pairs), max(m for m, _ in pairs)
    return lo * (0.999 + frac * (2 * hi / lo - 0.999))


def _reachable(pairs, b):
    return min(m for m, _ in pairs) <= b * (1 + REL)


def _dominated(p, pairs):
    """Some point is at most as dear and at least as accurate, and better in one of the two."""
    return any(m <= p.macs and a >= p.accuracy and (m < p.macs or a > p.accuracy) for m, a in pairs)


@settings(max_examples=300, deadline=None)
@given(pairs_st, st.floats(0.0, 1.0), st.booleans())
def test_choice_stays_within_the_budget(pairs, frac, mix):
    model, b = Points(pairs), _budget(pairs, frac)
    assume(_reachable(pairs, b))
    c = model.at_budget(b, mix=mix)
    if isinstance(c, Mixture):
        assert mix and 0.0 < c.p_high < 1.0 + REL
        assert c.low.macs < b < c.high.macs
        assert c.macs == pytest.approx(b, rel=1e-7)
    else:
        assert isinstance(c, OperatingPoint) and c.macs <= b * (1 + REL)


@settings(max_examples=300, deadline=None)
@given(pairs_st, st.floats(0.0, 1.0), st.booleans())
def test_choice_is_never_dominated(pairs, frac, mix):
    model, b = Points(pairs), _budget(pairs, frac)
    assume(_reachable(pairs, b))
    c = model.at_budget(b, mix=mix)
    for p in ([c.low, c.high] if isinstance(c, Mixture) else [c]):
        assert not _dominated(p, pairs)
    if not isinstance(c, Mixture):  # and it is the most accurate point that fits
        assert c.accuracy == max(a for m, a in pairs if m <= b * (1 + REL))


@settings(max_examples=300, deadline=None)
@given(pairs_st, st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.booleans())
def test_more_budget_never_lowers_expected_accuracy(pairs, f1, f2, mix):
    model = Points(pairs)
    b1, b2 = sorted((_budget(pairs, f1), _budget(pairs, f2)))
    assume(_reachable(pairs, b1))
    a1, a2 = model.at_budget(b1, mix=mix).accuracy, model.at_budget(b2, mix=mix).accuracy
    assert a1 <= a2 + 1e-9 * max(1.0, abs(a2))


@settings(max_examples=200, deadline=None)
@given(pairs_st)
def test_budget_above_the_dearest_point_gets_the_most_accurate(pairs):
    model = Points(pairs)
    hi = max(m for m, _ in pairs)
    for b in (hi, hi * 1.5, 1e300):
        c = model.at_budget(b)
        assert isinstance(c, OperatingPoint) and c.accuracy == max(a for _, a in pairs)


bad_number_st = st.one_of(
    st.sampled_from([0, 0.0, -0.0, math.nan, math.inf, -math.inf]),
    st.floats(max_value=0.0, allow_nan=False),
    st.integers(max_value=0),
)
not_a_number_st = st.one_of(st.text(max_size=5), st.none(), st.booleans(), st.lists(macs_st, max_size=2),
                            st.dictionaries(st.text(max_size=2), macs_st, max_size=1))


@settings(max_examples=300, deadline=None)
@given(pairs_st, st.one_of(bad_number_st, not_a_number_st), st.booleans())
def test_every_non_budget_is_refused_naming_the_range(pairs, bad, mix):
    with pytest.raises(BudgetError, match=r"positive finite number.*reachable: .* to .* MACs per input"):
        Points(pairs).at_budget(bad, mix=mix)


@settings(max_examples=300, deadline=None)
@given(pairs_st, st.floats(0.0, 1.0 - 1e-6), st.booleans())
@example([(1000.0, 50.0)], 1.0 - 1e-9, True)
def test_budgets_below_the_cheapest_point_are_refused(pairs, frac, mix):
    lo = min(m for m, _ in pairs)
    b = lo * frac
    assume(not _reachable(pairs, b) and b > 0)
    with pytest.raises(BudgetError, match="below the cheapest operating point.*reachable"):
        Points(pairs).at_budget(b, mix=mix)


@settings(max_examples=200, deadline=None)
@given(macs_st, st.floats(1.01, 100.0), acc_st, st.floats(0.01, 0.99), st.integers(1, 64), st.integers(0, 2**31 - 1))
def test_a_mixture_spends_the_budget_per_batch(lo, ratio, acc, frac, n, seed):
    """Stratified assignment: a batch of n rows spends within one row's difference of n x b."""
    hi = lo * ratio
    model, b = Points([(lo, acc / 2), (hi, acc / 2 + 1.0)]), lo + frac * (hi - lo)
    c = model.at_budget(b)
    assert isinstance(c, Mixture) and c.macs == pytest.approx(b, rel=1e-9)
    out = model.infer(torch.zeros(n, 1, 1, 1), c, generator=torch.Generator().manual_seed(seed))
    assert abs(float(out.macs.sum()) - n * b) <= (hi - lo) * (1 + 1e-9)


def test_a_budget_a_rounding_error_below_the_cheapest_point_is_that_point():
    """One tolerance decides both whether a point fits and whether a budget is reachable: a
    budget within float rounding below the cheapest point gets that point, never an error."""
    model = Points([(1000.0, 50.0), (2000.0, 60.0)])
    for b in (1000.0 * (1 - 1e-9), 1000.0 / (1 + 1e-9)):
        assert model.at_budget(b).name == "p0"


@settings(max_examples=200, deadline=None)
@given(pairs_st)
def test_frontier_is_sorted_strictly_better_and_complete(pairs):
    macs, acc = [m for m, _ in pairs], [a for _, a in pairs]
    front = pareto_indices(macs, acc)
    assert [macs[i] for i in front] == sorted(macs[i] for i in front)
    assert all(acc[i] < acc[j] for i, j in zip(front, front[1:]))
    for i in range(len(pairs)):  # every point off the frontier is matched or beaten by one on it
        assert i in front or any(macs[j] <= macs[i] and acc[j] >= acc[i] for j in front)
