"""The pass@k estimator against brute-force enumeration, and the checkpoint/eval schedules."""

from itertools import combinations
from math import comb

import pytest

from training_with_unsloth.config import CheckpointConfig, EvalConfig
from training_with_unsloth.passk import mean_pass_at_k, pass_at_k
from training_with_unsloth.schedule import checkpoint_steps, eval_steps, log_spaced_steps


def brute_force(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12)
            assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_edges_and_errors():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


def test_mean_pass_at_k():
    rows = [[True, False, False, False], [False] * 4, [True] * 4]
    got = mean_pass_at_k(rows, [1, 4])
    assert got[1] == pytest.approx((0.25 + 0 + 1) / 3)
    assert got[4] == pytest.approx((1 + 0 + 1) / 3)


def test_log_spaced_dense_early_and_complete():
    steps = log_spaced_steps(8, 200)
    assert steps == [1, 2, 5, 10, 21, 44, 94, 200]
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps == sorted(gaps)  # spacing grows: dense early
    for count, max_steps in [(5, 5), (12, 10), (3, 3), (6, 7), (20, 1000)]:
        got = log_spaced_steps(count, max_steps)
        assert len(got) == min(count, max_steps) and len(set(got)) == len(got)
        assert got == sorted(got) and got[-1] == max_steps and got[0] >= 1
    assert log_spaced_steps(1, 50) == [50]


def test_checkpoint_schedules_always_include_final():
    assert checkpoint_steps(CheckpointConfig(every=10), 35) == [10, 20, 30, 35]
    assert checkpoint_steps(CheckpointConfig(every=10), 30) == [10, 20, 30]
    assert checkpoint_steps(CheckpointConfig(steps=[3, 1, 50]), 20) == [1, 3, 20]
    assert checkpoint_steps(CheckpointConfig(log_spaced=4), 1000) == [1, 10, 100, 1000]
    assert checkpoint_steps(CheckpointConfig(), 7) == [7]


def test_eval_schedule():
    assert eval_steps(EvalConfig(every=10), 25) == [0, 10, 20, 25]
    assert eval_steps(EvalConfig(every=0), 25) == [0, 25]
    assert eval_steps(EvalConfig(enabled=False), 25) == []
