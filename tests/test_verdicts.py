"""The verdict rule: better/worse only beyond the Welch t-test threshold (95 %) of the combined uncertainty."""

from __future__ import annotations

import math

import pytest

from tauml.evaluation.verdicts import (
    BETTER,
    NO_DIFFERENCE,
    UNDETERMINED,
    WORSE,
    best_of,
    compare,
    summarize,
)


def test_summary_is_mean_sample_std_and_standard_error():
    s = summarize([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.sem == pytest.approx(1.0 / math.sqrt(3))
    assert summarize([5.0]).std == 0.0 and summarize([5.0]).sem == 0.0


def test_hand_computed_difference_and_uncertainty():
    # A: mean 0.02, std 0.001 -> sem 0.001/sqrt(3); B: mean 0.03, std 0.004 -> sem 0.004/sqrt(3)
    c = compare([0.019, 0.020, 0.021], [0.026, 0.030, 0.034], higher_is_better=False)
    expected_sigma = math.sqrt((0.001**2 + 0.004**2) / 3)
    assert c.difference == pytest.approx(0.010)
    assert c.uncertainty == pytest.approx(expected_sigma)
    assert c.verdict == BETTER  # 0.010 = 4.2 sigma > k = t_0.975(nu = 2.25) = 3.88
    assert c.dof == pytest.approx(2.249, abs=1e-3) and c.threshold == pytest.approx(3.877, abs=1e-3)
    assert c.relative == pytest.approx(0.010 / 0.030)
    assert compare([0.026, 0.030, 0.034], [0.019, 0.020, 0.021], higher_is_better=False).verdict == WORSE


def test_direction_matters():
    assert compare([0.9, 0.91, 0.92], [0.8, 0.81, 0.82], higher_is_better=True).verdict == BETTER
    assert compare([0.9, 0.91, 0.92], [0.8, 0.81, 0.82], higher_is_better=False).verdict == WORSE


def test_overlapping_seeds_give_no_significant_difference():
    c = compare([0.021, 0.035, 0.028], [0.024, 0.031, 0.027], higher_is_better=False)
    assert c.verdict == NO_DIFFERENCE


def test_counting_error_is_added_and_can_erase_a_difference():
    a, b = [0.010, 0.010, 0.010], [0.012, 0.012, 0.012]
    assert compare(a, b, higher_is_better=False).verdict == BETTER  # no spread at all
    noisy = compare(a, b, higher_is_better=False, stat_a=0.002, stat_b=0.002)
    assert noisy.uncertainty == pytest.approx(math.sqrt(2) * 0.002)
    assert noisy.verdict == NO_DIFFERENCE


def test_one_seed_without_counting_error_is_undetermined():
    c = compare([0.02], [0.03], higher_is_better=False)
    assert c.verdict == UNDETERMINED and "one seed" in c.text()
    assert compare([0.02], [0.03], higher_is_better=False, stat_a=0.001, stat_b=0.001).verdict == BETTER


def test_best_of_keeps_every_option_tied_with_the_best():
    values = {1: [0.50, 0.52, 0.51], 2: [0.60, 0.61, 0.59], 3: [0.605, 0.58, 0.62]}
    best, tied = best_of(values, higher_is_better=True)
    assert best == 3 and sorted(tied) == [2, 3]  # means 0.51, 0.600, 0.602


def test_nan_is_refused():
    with pytest.raises(ValueError, match="diverged"):
        summarize([0.1, float("nan")])


def test_welch_threshold_from_the_degrees_of_freedom():
    from tauml.evaluation.verdicts import threshold

    # two equal standard errors from three seeds each: nu = 4, k = t_0.975(4) = 2.776 (tables)
    k, dof = threshold((0.1, 0.1), (3, 3))
    assert dof == pytest.approx(4.0) and k == pytest.approx(2.776, abs=1e-3)
    # one term dominates: nu -> n - 1 = 2, k = 4.303
    k, dof = threshold((1.0, 1e-6), (3, 3))
    assert dof == pytest.approx(2.0, rel=1e-6) and k == pytest.approx(4.303, abs=1e-3)
    # only counting errors: infinitely many degrees of freedom, the normal 1.96
    k, dof = threshold((0.0, 0.0), (3, 3), (0.01, 0.02))
    assert math.isinf(dof) and k == pytest.approx(1.960, abs=1e-3)


def test_two_and_a_half_sigma_from_three_seeds_is_not_enough():
    """The fixed 2-sigma rule called this better; three seeds a side do not support it (Welch, k = 2.78)."""
    a = [0.0, 1.0, 2.0]  # sem 1/sqrt(3)
    b = [x - 2.5 * math.sqrt(2 / 3) for x in a]  # same spread, 2.5 sigma lower
    c = compare(a, b, higher_is_better=True)
    assert c.significance == pytest.approx(2.5)
    assert c.verdict == NO_DIFFERENCE and "needs 2.8σ" in c.text()
    assert compare(a, [x - 3.0 * math.sqrt(2 / 3) for x in a], higher_is_better=True).verdict == BETTER
