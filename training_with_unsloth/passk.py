"""The unbiased pass@k estimator (Chen et al. 2021), per-problem aggregation and majority vote (maj@k)."""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct.

    `1 - C(n-c, k) / C(n, k)`, computed as `1 - prod_{i=n-c+1..n} (1 - k/i)` to stay exact in floats.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def per_problem_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> list[float]:
    """pass@k of each problem, given as the correctness of its n samples."""
    return [pass_at_k(len(row), sum(map(bool, row)), k) for row in correct]


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most frequent answer (None answers do not vote; ties go to the first seen) is correct.

    The majority answer's verdict is that of its first sample; False when no sample has an answer.
    """
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, a in enumerate(answers):
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
            first.setdefault(a, i)
    if not counts:
        return False
    best = max(counts, key=lambda a: (counts[a], -first[a]))
    return bool(correct[first[best]])


def mean_pass_at_k(correct: Sequence[Sequence[bool]], ks: Sequence[int]) -> dict[int, float]:
    """Mean pass@k over problems, each given as the correctness of its n samples."""
    out = {}
    for k in ks:
        vals = per_problem_pass_at_k(correct, k)
        out[k] = sum(vals) / len(vals) if vals else float("nan")
    return out
