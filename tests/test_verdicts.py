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
    bonferroni_confidence,
    compare,
    consistent,
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


def test_consistent_runs_agree_within_their_combined_uncertainty():
    # the thread-count case of docs/studies.md: +3.8 % ± 0.7 % against +3.9 % ± 1.6 % measure the same gain
    assert consistent((0.038, 0.007, 8.0), (0.039, 0.016, 6.0))
    # 5 and 1 with uncertainties 1 each (many degrees of freedom): 4 / sqrt(2) = 2.8 sigma apart
    assert not consistent((5.0, 1.0, math.inf), (1.0, 1.0, math.inf))
    assert consistent((2.0, 1.0, math.inf), (1.0, 1.0, math.inf))
    # with few degrees of freedom the same gap is allowed: t(0.975, 2) = 4.3
    assert consistent((5.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    # Comparison objects work as well
    a = compare([0.019, 0.020, 0.021], [0.026, 0.030, 0.034], higher_is_better=False)
    assert consistent(a, a)
    with pytest.raises(ValueError, match="finite"):
        consistent((math.nan, 1.0, 3.0), (1.0, 1.0, 3.0))


def test_a_table_is_one_family_of_tests():
    """Bonferroni: each of m comparisons at 1 - 0.05/m, so the table's chance of any false finding stays 5 %."""
    from tauml.evaluation.verdicts import threshold

    assert bonferroni_confidence(1) == pytest.approx(0.95) and bonferroni_confidence(12) == pytest.approx(1 - 0.05 / 12)
    # two equal standard errors from three seeds each (nu = 4): alone t_0.975(4) = 2.776; as 1 of 4 tests
    # t_(1 - 0.05/8)(4) = 4.315, as 1 of 12 t_(1 - 0.05/24)(4) = 5.885 (scipy.stats.t.ppf)
    assert threshold((0.1, 0.1), (3, 3))[0] == pytest.approx(2.776, abs=1e-3)
    assert threshold((0.1, 0.1), (3, 3), comparisons=4)[0] == pytest.approx(4.315, abs=1e-3)
    assert threshold((0.1, 0.1), (3, 3), comparisons=12)[0] == pytest.approx(5.885, abs=1e-3)
    # counting errors only: the normal quantile, 2.865 for 12 tests
    assert threshold((), (), (0.01,), comparisons=12)[0] == pytest.approx(2.865, abs=1e-3)
    # 4 sigma is a finding alone, not as one of four
    a = [0.0, 1.0, 2.0]
    b = [x - 4.0 * math.sqrt(2 / 3) for x in a]
    assert compare(a, b, higher_is_better=True).verdict == BETTER
    c = compare(a, b, higher_is_better=True, comparisons=4)
    assert c.verdict == NO_DIFFERENCE and c.comparisons == 4 and "needs 4.3σ as 1 of 4 tests" in c.text()
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="number of comparisons"):
            bonferroni_confidence(bad)
