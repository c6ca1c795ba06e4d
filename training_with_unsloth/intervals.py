"""95% intervals and paired tests over problems: percentile bootstrap, Wilson, McNemar's exact test."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

RESAMPLES = 2000
SEED = 0
LEVEL = 0.95


def _resample_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    return values[idx].mean(axis=1)


def _percentiles(means: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_mean_ci(
    values: Sequence[float], *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-problem ``values`` (problems resampled with replacement).

    Seeded, so the same values always give the same interval; NaNs when there are no values.
    """
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return _percentiles(_resample_means(arr, resamples, seed), level)


def wilson_interval(successes: int, n: int, *, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n`` (NaNs when n is 0)."""
    if n <= 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n (successes={successes}, n={n})")
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no rounding residue)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (only A right) and c (only B right).

    Under the null each discordant pair is a fair coin: ``p = min(1, 2 * P[Binom(b + c, 1/2) <= min(b, c)])``.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], *, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float, float, float]:
    """(difference, low, high, p) of ``mean(b) - mean(a)`` over paired problems, by a paired percentile bootstrap.

    The two-sided p-value is ``min(1, 2 * min(P*[d <= 0], P*[d >= 0]))`` over the resampled mean differences
    (1 when every problem scores the same in both).
    """
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if xa.shape != xb.shape:
        raise ValueError(f"paired_bootstrap_diff needs as many values in a as in b ({xa.size} != {xb.size})")
    if xa.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    d = xb - xa
    means = _resample_means(d, resamples, seed)
    low, high = _percentiles(means, level)
    p = min(1.0, 2.0 * min(float(np.mean(means <= 0)), float(np.mean(means >= 0))))
    return float(d.mean()), low, high, p


# Student's t 0.975 quantiles for 1..30 degrees of freedom (beyond: the Cornish-Fisher expansion, within 0.001).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)  # fmt: skip


def t_interval(values: Sequence[float]) -> tuple[float, float]:
    """95% t-interval of the mean of independent ``values`` (e.g. one number per seed); NaNs with fewer than two."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size < 2:
        return math.nan, math.nan
    df = arr.size - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.95996 + 2.3722 / df
    half = t * float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return float(arr.mean()) - half, float(arr.mean()) + half
