"""training_with_unsloth.intervals and passk's majority vote: known answers, determinism, shrinking with n."""

from __future__ import annotations

import math

import pytest

from training_with_unsloth.intervals import bootstrap_mean_ci, mcnemar_exact, paired_bootstrap_diff, wilson_interval
from training_with_unsloth.passk import majority_correct, mean_pass_at_k, per_problem_pass_at_k


def test_wilson_matches_textbook_values():
    low, high = wilson_interval(8, 16)  # Wilson (1927) / Newcombe (1998): 0.280 .. 0.720
    assert low == pytest.approx(0.2800, abs=5e-4) and high == pytest.approx(0.7200, abs=5e-4)
    low, high = wilson_interval(0, 10)  # Newcombe's 0/10: 0 .. 0.2775
    assert low == 0.0 and high == pytest.approx(0.2775, abs=5e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=5e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_mcnemar_exact_by_hand():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # two-sided: both all-heads and all-tails
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(2, 8) == mcnemar_exact(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    try:
        from scipy.stats import binomtest
    except ImportError:
        return
    for b, c in [(1, 9), (4, 11), (7, 7), (0, 12)]:
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def test_bootstrap_contains_the_mean_shrinks_with_n_and_is_deterministic():
    small = [1.0, 0.0] * 10
    big = [1.0, 0.0] * 400
    lo_s, hi_s = bootstrap_mean_ci(small)
    lo_b, hi_b = bootstrap_mean_ci(big)
    assert lo_s < 0.5 < hi_s and lo_b < 0.5 < hi_b
    assert hi_b - lo_b < (hi_s - lo_s) / 4  # ~1/sqrt(n): 40x the problems, about a sixth of the width
    assert bootstrap_mean_ci(small) == (lo_s, hi_s)  # seeded: reruns give the same interval
    assert bootstrap_mean_ci(small, seed=1) != (lo_s, hi_s)
    assert bootstrap_mean_ci([0.25] * 7) == (0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))
    lo, hi = bootstrap_mean_ci(small)  # close to the normal approximation 0.5 +- 1.96 * 0.5 / sqrt(20)
    assert lo == pytest.approx(0.5 - 0.219, abs=0.05) and hi == pytest.approx(0.5 + 0.219, abs=0.05)


def test_paired_bootstrap_difference():
    same = [1.0, 0.0, 1.0, 0.5]
    assert paired_bootstrap_diff(same, same) == (0.0, 0.0, 0.0, 1.0)
    a, b = [0.0] * 30, [1.0] * 20 + [0.0] * 10
    diff, lo, hi, p = paired_bootstrap_diff(a, b)
    assert diff == pytest.approx(2 / 3) and lo < diff < hi and lo > 0 and p < 0.01
    diff2, lo2, hi2, p2 = paired_bootstrap_diff(b, a)
    assert diff2 == pytest.approx(-2 / 3) and hi2 < 0 and p2 == p
    assert paired_bootstrap_diff(a, b) == (diff, lo, hi, p)
    with pytest.raises(ValueError):
        paired_bootstrap_diff([1.0], [1.0, 0.0])


def test_per_problem_pass_at_k_averages_to_the_mean():
    correct = [[True, False, False, False], [True, True, False, False], [False] * 4]
    for k in (1, 2, 4):
        vals = per_problem_pass_at_k(correct, k)
        assert sum(vals) / len(vals) == mean_pass_at_k(correct, [k])[k]
    assert per_problem_pass_at_k(correct, 1) == [0.25, 0.5, 0.0]


def test_majority_vote():
    assert majority_correct(["3", "4", "4", None], [True, False, False, False]) is False
    assert majority_correct(["3", "4", "3", "4"], [True, False, True, False]) is True  # a tie: the first seen wins
    assert majority_correct(["4", "3", "3", "4"], [False, True, True, False]) is False
    assert majority_correct([None, None, "5"], [False, False, True]) is True  # None does not vote
    assert majority_correct([None, None], [True, True]) is False
