"""Transition windows in a step-indexed series: where a metric's trend changes, found by an algorithm.

The apart-physics study picked its phase-transition windows (steps 44-66, 88-110, 187-209) by eye.
This module finds such windows in any series of (step, value) pairs: an LLC curve from
`analysis/llc.csv`, a train or eval metric from `metrics.jsonl`, or a column of any CSV with a step
column (a wandb export, for instance).

Method
------
1. Clean: drop non-finite values, sort by step, average values logged twice at one step.
   Fewer than ``2 * min_points`` points, or a constant series, give no windows.
2. Noise: a robust estimate of the point-to-point noise sigma. Each interior point is compared with
   the straight line through its two neighbours (this removes any local linear trend and handles
   unevenly spaced steps); sigma = the standard deviation of those residuals (each scaled to unit
   variance) after trimming those beyond 3 MADs. With a zero MAD (quantised, mostly constant data)
   the mean absolute deviation is used; sigma never falls below 1e-9 of the series' scale.
3. Change points: binary segmentation with a piecewise-linear, discontinuous model. A segment is
   fitted with one straight line and, at every admissible break (at least ``min_points`` points
   each side), with two lines (each with its own level and slope, so both level shifts and slope
   changes are caught). The break with the largest drop D in the residual sum of squares (in
   sigma^2) is kept when all of
     - significance:  z >= threshold, where z is the normal quantile with the tail probability of
       the best of m breaks: exp(-z^2/2) = m * (1 + D/nu)^(-nu/2) (D is chi-square(2) under pure
       noise; the F-like tail accounts for sigma being estimated, nu its degrees of freedom; the
       factor m is the look-elsewhere correction). For this test sigma^2 is pooled from the global
       estimate and the split's own residuals (never below 1/2.25 of the global one).
     - effect size:   e = (|jump at the break| + |slope change| * w) / sigma >= threshold, w = the
       step span of the shorter side: the change bends or shifts the curve by >= threshold sigma.
     - sharpness:     the two lines fit the segment better than a parabola by >= 2 sigma^2, so a
       smoothly curving learning curve is not cut into many straight pieces.
   Both halves are then searched again, recursively.
4. Window: each kept break between samples i-1 and i gives the window of steps spanned by the
   breaks whose D is within 4 of the best one (a likelihood-ratio interval for the location),
   widened to cover the smoothing span (``smooth`` points centred on the break, default
   ``clip(round(sqrt(n)), 3, 25)``; ``smooth_series`` draws the same span as a local-linear
   smoothed curve). Overlapping windows are merged. ``score`` = min(z, e); every returned window
   has score >= threshold.
5. Per-point errors (optional ``std``: each point's own standard deviation, e.g. an LLC's
   ``llc_std`` or an eval's 95% interval half-width / 1.96). Each point's sigma is then
   sigma_i = std_i * max(1, s), s = the step-2 noise estimate computed on residuals each divided by
   its own (chord-combined) std, i.e. how much more the points actually scatter than their stated
   errors. All fits become weighted least squares (weights 1/sigma_i^2), so D is a chi-square
   drop with (at least) the stated variances; the pooled variance of the significance test is never
   allowed below the stated errors, and the effect size is measured in the rms sigma_i of the
   points around the break. The max (not the stated std alone) keeps flat noise window-free when the
   stated errors are too small; never going below the stated std means points with large error
   bars cannot make a change: a dip well inside them gives no window. Non-finite or negative std
   count as missing (the median of the others), zero std is raised to 1e-3 of that median, and a
   std with no positive finite value is ignored (the unweighted method).

Measured (tests/test_phases.py and simulation): flat noise gives a window in ~0.1-0.4% of series
of <= 20 points and essentially never for >= 100 points; a 6-sigma level shift in >= 50 points is
found with a window bracketing it exactly; a kink bending the curve by 8-10 sigma is found within
10% of the series length; a saturating exponential with 2% noise gives <= 3 windows, at its bend.

CLI::

    uv run analysis/phases.py --run runs/<name> [--column NAME ...] [--smooth N] [--threshold T] [--no-std] [--json]
    uv run analysis/phases.py --csv export.csv --column "run-a - train/reward" [--step-column Step] [--std-column NAME]
    uv run grpo-phases --run runs/<name>                # the same command, as a console script
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.runs import Run, to_number  # noqa: E402
from training_with_unsloth.cli import command_name, run_main  # noqa: E402
from training_with_unsloth.errors import UserError  # noqa: E402
from training_with_unsloth.rundir import RunDir, atomic_write_text  # noqa: E402

STEP_COLUMNS = ("step", "Step", "_step", "global_step", "train/global_step")
DEFAULT_RUN_COLUMNS = ("llc_mean", "reward", "eval/pass@1", "eval/greedy_pass@1")
LOCATION_DROP = 4.0  # D within this of the best break: the location interval
SHARPNESS = 2.0  # a break must fit its segment better than a parabola by this many sigma^2
NOISE_DOF = 0.45  # the trimmed chord-residual sigma of n points is worth a variance with 0.45 (n - 2) dof


@dataclass(frozen=True)
class Window:
    """A transition window: steps [start, end] of `column`, `score` = strength relative to noise."""

    start: int
    end: int
    column: str
    score: float


class SeriesError(ValueError):
    """A series could not be read (missing file, unknown column, no step column)."""


# ---------------------------------------------------------------------------------------- numerics
def _array(x: Iterable) -> np.ndarray:
    return np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float).ravel()


def _clean(steps: Iterable, values: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Finite pairs, sorted by step, duplicates averaged."""
    t, y, _ = _clean_std(steps, values, None)
    return t, y


def _clean_std(steps: Iterable, values: Iterable, std: Iterable | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Finite pairs, sorted by step, duplicates averaged; with `std`, each point's cleaned sigma too.

    Non-finite or negative std count as missing (the median of the valid ones), zero std is raised to
    1e-3 of that median; a std with no positive finite value gives None (the unweighted method).
    The std of an average of repeated steps is sqrt(sum std^2) / count.
    """
    t, y = _array(steps), _array(values)
    if t.shape != y.shape:
        raise ValueError(f"steps and values differ in length ({t.size} != {y.size})")
    s = None
    if std is not None:
        s = _array(std)
        if s.shape != t.shape:
            raise ValueError(f"std and values differ in length ({s.size} != {y.size})")
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    if s is not None:
        s = s[keep]
        valid = np.isfinite(s) & (s >= 0)
        positive = s[valid & (s > 0)]
        if positive.size == 0:
            s = None
        else:
            med = float(np.median(s[valid]))
            s = np.where(valid, s, med)
            s = np.maximum(s, 1e-3 * (med if med > 0 else float(np.median(positive))))
    if t.size == 0:
        return t, y, s
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    s = s[order] if s is not None else None
    uniq, inverse, counts = np.unique(t, return_inverse=True, return_counts=True)
    if uniq.size != t.size:
        y = np.bincount(inverse, weights=y) / counts
        if s is not None:
            s = np.sqrt(np.bincount(inverse, weights=s * s)) / counts
        t = uniq
    return t, y, s


def noise_sigma(steps: Sequence[float], values: Sequence[float]) -> float:
    """Robust point-to-point noise: MAD of each point's residual from its neighbours' chord."""
    t, y = _clean(steps, values)
    return _noise(t, y)


def _noise(t: np.ndarray, y: np.ndarray, std: np.ndarray | None = None) -> float:
    """Noise sigma; with `std`, the ratio of the actual scatter to the stated per-point errors."""
    if std is not None:
        if y.size < 3:
            return 1.0
        w = (t[2:] - t[1:-1]) / (t[2:] - t[:-2])
        var = std[1:-1] ** 2 + (w * std[:-2]) ** 2 + ((1 - w) * std[2:]) ** 2
        r = (y[1:-1] - (w * y[:-2] + (1 - w) * y[2:])) / np.sqrt(var)
        return _trimmed_sigma(r, 1e-9)
    scale = float(np.max(np.abs(y))) if y.size else 0.0
    floor = 1e-9 * max(scale, 1e-12)
    if y.size < 3:
        return max(float(np.std(y)), floor)
    w = (t[2:] - t[1:-1]) / (t[2:] - t[:-2])  # weight of the left neighbour in the chord
    r = (y[1:-1] - (w * y[:-2] + (1 - w) * y[2:])) / np.sqrt(1 + w**2 + (1 - w) ** 2)
    return _trimmed_sigma(r, floor)


def _trimmed_sigma(r: np.ndarray, floor: float) -> float:
    """The standard deviation of unit-variance residuals r, trimmed beyond 3 MADs (robust)."""
    med = np.median(r)
    dev = np.abs(r - med)
    mad = 1.4826 * float(np.median(dev))
    if mad <= floor:  # quantised, mostly constant data: fall back to the mean absolute deviation
        return max(1.2533 * float(np.mean(dev)), floor)
    kept = r[dev <= 3.0 * mad]  # trimmed standard deviation: robust, and twice as efficient as the MAD
    sigma = float(np.sqrt(np.sum((kept - kept.mean()) ** 2) / max(kept.size - 1, 1)))
    return max(sigma, floor)


def default_smooth(n: int) -> int:
    """The automatic smoothing span (points) for a series of n points."""
    return int(np.clip(round(math.sqrt(max(n, 1))), 3, 25))


def smooth_series(steps: Sequence[float], values: Sequence[float], window: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, smoothed values): a local straight-line fit over `window` neighbouring points.

    Unevenly spaced steps are handled (the fit is in step units); at the ends the window is shifted
    inwards rather than shrunk, so the curve has no end effects from a one-sided mean.
    """
    t, y = _clean(steps, values)
    n = t.size
    if n < 3:
        return t, y
    k = min(max(2, int(window or default_smooth(n))), n)
    lo = np.clip(np.arange(n) - (k - 1) // 2, 0, n - k)
    hi = lo + k
    tc = (t - t.mean()) / (t.std() or 1.0)
    yc = y - np.median(y)
    c = [np.concatenate([[0.0], np.cumsum(a)]) for a in (np.ones(n), tc, tc * tc, yc, tc * yc)]
    s1, st, stt, sy, sty = (a[hi] - a[lo] for a in c)
    var = stt - st * st / s1
    slope = np.where(var > 1e-12, (sty - st * sy / s1) / np.where(var > 1e-12, var, 1.0), 0.0)
    fit = sy / s1 + slope * (tc - st / s1)
    return t, fit + np.median(y)


class _Segments:
    """Prefix sums for O(1) straight-line RSS on any index range [a, b)."""

    def __init__(self, t: np.ndarray, y: np.ndarray, w: np.ndarray | None = None):
        w = np.ones(t.size) if w is None else w  # weighted least squares: the same formulas with weighted sums
        self.c = [np.concatenate([[0.0], np.cumsum(a)]) for a in (w, w * t, w * t * t, w * y, w * t * y, w * y * y)]

    def sums(self, a, b):
        return [c[b] - c[a] for c in self.c]

    def fit(self, a, b):
        """(rss, slope, intercept) of the least-squares line on [a, b) (vectorised over a, b)."""
        s1, st, stt, sy, sty, syy = self.sums(a, b)
        vtt = stt - st * st / s1
        vty = sty - st * sy / s1
        vyy = syy - sy * sy / s1
        ok = vtt > 1e-12 * np.maximum(stt, 1e-300)
        slope = np.where(ok, vty / np.where(ok, vtt, 1.0), 0.0)
        rss = np.maximum(vyy - slope * vty, 0.0)
        intercept = (sy - slope * st) / s1
        return rss, slope, intercept


def _quadratic_rss(t: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """(Weighted) residual sum of squares of the least-squares parabola through (t, y)."""
    tc = t - t.mean()
    tc = tc / (np.abs(tc).max() or 1.0)
    X = np.stack([np.ones_like(tc), tc, tc * tc], axis=1)
    rw = np.ones_like(tc) if w is None else np.sqrt(w)
    beta, *_ = np.linalg.lstsq(X * rw[:, None], y * rw, rcond=None)
    return float(np.sum((rw * (y - X @ beta)) ** 2))


def _significance(drop: float, m: int, nu: float) -> float:
    """z of the best of m breaks, corrected for looking at m places and for sigma being estimated.

    With sigma known, drop ~ chi2(2) and P(drop > x) = exp(-x/2); with sigma estimated from nu
    degrees of freedom the tail is (1 + x/nu)^(-nu/2). The z returned has the same tail probability
    after the Bonferroni factor m: exp(-z^2/2) = m * tail(drop).
    """
    if drop <= 0:
        return 0.0
    z2 = nu * math.log1p(drop / nu) - 2.0 * math.log(max(m, 1))
    return math.sqrt(z2) if z2 > 0 else 0.0


def _location_interval(drop: np.ndarray, cand: np.ndarray, best: int) -> tuple[int, int]:
    """The contiguous run of candidates around `best` (an index into cand) within LOCATION_DROP of it."""
    lo = hi = best
    while lo > 0 and drop[best] - drop[lo - 1] <= LOCATION_DROP:
        lo -= 1
    while hi < cand.size - 1 and drop[best] - drop[hi + 1] <= LOCATION_DROP:
        hi += 1
    return int(cand[lo]), int(cand[hi])


def detect_windows(
    steps: Sequence[float],
    values: Sequence[float],
    *,
    column: str = "value",
    smooth: int | None = None,
    threshold: float = 4.0,
    min_points: int = 3,
    std: Sequence[float] | None = None,
) -> list[Window]:
    """Transition windows of one series (see the module docstring for the method).

    steps may be unevenly spaced (log-spaced checkpoints); NaNs are dropped. Returns the windows
    sorted by start step, each with score >= threshold; [] for short, constant or flat-noise series.

    std: optional per-point standard deviations (same length as values). Each point is then judged
    against its own error: sigma_i = std_i * max(1, s), s = how much more the points scatter than
    their stated errors (the robust noise estimate of the std-normalised residuals), and every fit is
    weighted by 1/sigma_i^2. The max keeps flat noise window-free when the stated errors are too
    small; never going below the stated std means a change well inside large error bars is not a
    window. Without std (or a std with no positive finite value) the noise is estimated from the
    residuals alone.
    """
    min_points = max(2, int(min_points))
    t, y, s = _clean_std(steps, values, std)
    n = t.size
    if n < 2 * min_points or np.ptp(y) == 0:
        return []
    half = max(1, int(smooth) if smooth else default_smooth(n)) // 2
    nu = max(1.0, NOISE_DOF * (n - 2))  # degrees of freedom of the MAD noise estimate
    if s is None:
        sigma, weights, point_sigma, var_floor = _noise(t, y), None, None, 1.0 / 1.5**2
    else:  # each point's own sigma, inflated to the actual scatter when the stated errors are too small
        inflate = max(1.0, _noise(t, y, s))
        point_sigma = s * inflate
        sigma = float(np.median(point_sigma))
        weights = (sigma / point_sigma) ** 2
        var_floor = max(1.0 / 1.5**2, 1.0 / inflate**2)  # the pooled variance never goes below the stated errors
    # standardise: steps to unit spread (numerics), values to units of sigma (D is then dRSS)
    t0, ts = float(t.mean()), float(t.std()) or 1.0
    tn = (t - t0) / ts
    yn = (y - float(np.median(y))) / sigma
    seg = _Segments(tn, yn, weights)

    found: list[tuple[int, int, int, float]] = []  # (break index, lo break, hi break, score)
    stack = [(0, n)]
    while stack:
        a, b = stack.pop()
        if b - a < 2 * min_points:
            continue
        cand = np.arange(a + min_points, b - min_points + 1)  # break before index i
        rss0 = seg.fit(np.array([a]), np.array([b]))[0][0]
        rl, sl, il = seg.fit(np.full(cand.size, a), cand)
        rr, sr, ir = seg.fit(cand, np.full(cand.size, b))
        drop = rss0 - rl - rr
        j = int(np.argmax(drop))
        i = int(cand[j])
        # pool the global noise estimate (nu dof) with this split's residuals (b - a - 4 dof)
        resid_dof = b - a - 4
        var = (nu + float(rl[j] + rr[j])) / (nu + resid_dof) if resid_dof > 0 else 1.0
        var = max(var, var_floor)  # never trust the pooled estimate far below the global one
        z = _significance(float(drop[j]) / var, cand.size, nu + max(resid_dof, 0))
        tau = 0.5 * (tn[i - 1] + tn[i])
        jump = abs((il[j] + sl[j] * tau) - (ir[j] + sr[j] * tau))
        w = min(tau - tn[a], tn[b - 1] - tau)
        effect = (jump + abs(sr[j] - sl[j]) * w) / math.sqrt(var)  # in noise sigmas
        if point_sigma is not None:  # in the rms sigma of the points around the break
            near = point_sigma[max(a, i - half - 1) : min(b, i + half + 1)]
            effect *= sigma / float(np.sqrt(np.mean(near**2)))
        score = min(z, effect)
        wq = None if weights is None else weights[a:b]
        if score < threshold or _quadratic_rss(tn[a:b], yn[a:b], wq) - float(rl[j] + rr[j]) < SHARPNESS * var:
            continue
        lo, hi = _location_interval(drop, cand, j)
        lo, hi = max(a + 1, min(lo, i - half + 1)), min(b - 1, max(hi, i + half - 1))
        found.append((i, min(lo, i), max(hi, i), score))
        stack.extend([(a, i), (i, b)])

    windows = [Window(int(round(t[lo - 1])), int(round(t[hi])), column, float(s)) for _, lo, hi, s in found]
    return _merge(sorted(windows, key=lambda w: (w.start, w.end)))


def _merge(windows: list[Window]) -> list[Window]:
    out: list[Window] = []
    for w in windows:
        if out and w.start <= out[-1].end:
            last = out[-1]
            out[-1] = Window(last.start, max(last.end, w.end), last.column, max(last.score, w.score))
        else:
            out.append(w)
    return out


# ---------------------------------------------------------------------------------------- loading
def _closest(name: str, options: Iterable[str]) -> str:
    options = list(options)
    near = difflib.get_close_matches(name, options, n=1, cutoff=0.3)
    if near:
        return f"; did you mean {near[0]!r}?"
    shown = ", ".join(repr(o) for o in options[:8])
    return f"; available: {shown}" + (" ..." if len(options) > 8 else "") if options else "; no columns available"


def read_csv_columns(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (SeriesError when it is missing or has no header)."""
    path = Path(path)
    if not path.is_file():
        raise SeriesError(f"no such file: {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not header:
        raise SeriesError(f"{path} has no header row")
    return header, rows


def find_step_column(header: Sequence[str], step_column: str | None = None) -> str:
    if step_column is not None:
        if step_column not in header:
            raise SeriesError(f"step column {step_column!r} not in the CSV{_closest(step_column, header)}")
        return step_column
    for name in STEP_COLUMNS:
        if name in header:
            return name
    raise SeriesError(f"no step column (looked for {', '.join(STEP_COLUMNS)}); name one with --step-column")


def load_csv_series(path: str | Path, column: str, *, step_column: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `column` in any CSV with a step column; empty cells become NaN."""
    header, rows = read_csv_columns(path)
    sc = find_step_column(header, step_column)
    if column not in header:
        raise SeriesError(f"column {column!r} not in {path}{_closest(column, [h for h in header if h != sc])}")
    steps = np.array([to_number(r.get(sc)) for r in rows], dtype=float)
    values = np.array([to_number(r.get(column)) for r in rows], dtype=float)
    return steps, values


def load_csv_std(
    path: str | Path, column: str, std_column: str, *, step_column: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, values, std) of `column` and its per-point standard deviation `std_column` in a CSV."""
    header, rows = read_csv_columns(path)
    sc = find_step_column(header, step_column)
    if std_column not in header:
        raise SeriesError(f"std column {std_column!r} not in {path}{_closest(std_column, [h for h in header if h != sc])}")
    steps, values = load_csv_series(path, column, step_column=sc)
    return steps, values, np.array([to_number(r.get(std_column)) for r in rows], dtype=float)


def _ci_sigma(interval) -> float:
    """A 95% interval [low, high] as a standard deviation: half its width / 1.96 (NaN when unusable)."""
    if not isinstance(interval, list | tuple) or len(interval) != 2:
        return math.nan
    low, high = to_number(interval[0]), to_number(interval[1])
    return (high - low) / (2 * 1.96) if math.isfinite(low) and math.isfinite(high) and high >= low else math.nan


def run_columns(run: RunDir | str | Path) -> dict[str, str]:
    """Every series a run dir offers, as {column: source}: 'train', 'eval' or a per-checkpoint table's name."""
    return _as_run(run).columns()


def _as_run(run: RunDir | str | Path) -> Run:
    return Run(run.path if isinstance(run, RunDir) else run)


def load_run_series(run: RunDir | str | Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a run's `column`: a column of a per-checkpoint table (analysis/*.csv), or a train/eval metric."""
    run = _as_run(run)
    if not run.path.is_dir():
        raise SeriesError(f"no such run directory: {run.path}")
    cols = run.columns()
    if column not in cols:
        raise SeriesError(f"column {column!r} not found in {run.path}{_closest(column, cols)}")
    s = run.column_series(column)
    return s.steps, s.values


def load_run_series_std(run: RunDir | str | Path, column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(steps, values, std, how) of a run's `column` with each point's own standard deviation.

    A table's `llc_mean...` column uses the matching `llc_std...` column of the same table; an eval
    metric uses half the width of its `<metric>_ci` interval / 1.96 (a 95% interval); anything else, or
    a series with no usable std, gives std None. `how` says which sigma that is, for printing.
    """
    run = _as_run(run)
    steps, values = load_run_series(run, column)
    source = run.columns()[column]
    std = None
    how = "noise estimated from the residuals"
    if source not in ("train", "eval") and "llc_mean" in column:
        table = run.table(source)
        std_col = column.removeprefix(f"{source}/").replace("llc_mean", "llc_std")
        if std_col in table.header:
            values_all = table.column(column.removeprefix(f"{source}/"))
            std = table.column(std_col)[np.isfinite(values_all)]
            how = f"per-point {std_col} (analysis/{source}.csv)"
    elif source == "eval":
        s = run.series(column, "eval")
        if s.low is not None:
            std = np.array([_ci_sigma([lo, hi]) for lo, hi in zip(s.low, s.high, strict=True)], dtype=float)
            steps, values = s.steps, s.values
        how = f"per-point {column}_ci half-width / 1.96"
    if std is not None and not np.any(np.isfinite(std) & (std > 0)):
        std, how = None, "noise estimated from the residuals (no usable per-point std)"
    return steps, values, std, how


def load_series(source: RunDir | str | Path, column: str, *, step_column: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `column` from a run directory or from a CSV file."""
    if isinstance(source, RunDir) or Path(source).is_dir():
        return load_run_series(source, column)
    return load_csv_series(source, column, step_column=step_column)


def default_run_columns(run: RunDir | str | Path) -> list[str]:
    cols = run_columns(run)
    return [c for c in DEFAULT_RUN_COLUMNS if c in cols]


# ---------------------------------------------------------------------------------------- output
def windows_to_json(windows: Sequence[Window]) -> list[dict]:
    return [{"start": w.start, "end": w.end, "column": w.column, "score": round(w.score, 4)} for w in windows]


def windows_from_json(items: Iterable[dict]) -> list[Window]:
    return [Window(int(d["start"]), int(d["end"]), str(d["column"]), float(d["score"])) for d in items]


def format_table(windows: Sequence[Window]) -> str:
    if not windows:
        return "no transition windows found"
    width = max(len("column"), *(len(w.column) for w in windows))
    lines = [f"{'column':<{width}}  {'start':>8}  {'end':>8}  {'score':>8}"]
    lines += [f"{w.column:<{width}}  {w.start:>8}  {w.end:>8}  {w.score:>8.2f}" for w in windows]
    return "\n".join(lines)


def analyse_run(
    run: RunDir | str | Path,
    columns: Sequence[str] | None = None,
    *,
    smooth: int | None = None,
    threshold: float = 4.0,
    min_points: int = 3,
    write: bool = True,
    use_std: bool = True,
    sigma_used: dict[str, str] | None = None,
) -> list[Window]:
    """Windows of each column of a run (default columns when None); written to analysis/phases.json.

    use_std: judge each point against its own error where the run has one (`llc_std` for the LLC,
    the `<metric>_ci` interval for eval metrics; see `load_run_series_std`). `sigma_used`, when
    given, is filled with {column: which sigma was used}; phases.json records it under "sigma".
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    columns = list(columns) if columns else default_run_columns(run)
    windows: list[Window] = []
    used: dict[str, str] = {}
    for col in columns:
        if use_std:
            steps, values, std, used[col] = load_run_series_std(run, col)
        else:
            (steps, values), std, used[col] = load_run_series(run, col), None, "noise estimated from the residuals (--no-std)"
        windows += detect_windows(steps, values, column=col, smooth=smooth, threshold=threshold, min_points=min_points, std=std)
    if sigma_used is not None:
        sigma_used.update(used)
    if write:
        payload = {
            "columns": columns,
            "sigma": used,
            "smooth": smooth,
            "threshold": threshold,
            "min_points": min_points,
            "windows": windows_to_json(windows),
        }
        atomic_write_text(run.analysis / "phases.json", json.dumps(payload, indent=2) + "\n")
    return windows


def read_phases_json(run: RunDir | str | Path) -> list[Window] | None:
    """The windows in a run's analysis/phases.json, or None when there is none (or it is unreadable)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    path = run.analysis / "phases.json"
    try:
        data = json.loads(path.read_text())
        items = data["windows"] if isinstance(data, dict) else data
        return windows_from_json(items)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("analysis/phases.py"),
        description="Find transition windows (changes in level or slope, well above noise) in step-indexed series.",
        epilog="Method: robust noise sigma (trimmed neighbour residuals), piecewise-linear binary segmentation; "
        "a break is kept when its look-elsewhere-corrected significance and its size in sigmas both reach "
        "--threshold and it fits better than a smooth parabola. See the module docstring.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--run",
        metavar="DIR",
        help="a run directory; reads analysis/llc.csv and metrics.jsonl (train and eval records) and writes analysis/phases.json",
    )
    src.add_argument("--csv", metavar="FILE", help="any CSV with a step column (e.g. a wandb export)")
    p.add_argument(
        "--column",
        action="append",
        metavar="NAME",
        help="series to analyse (repeatable). With --run the "
        "default is whichever of " + ", ".join(DEFAULT_RUN_COLUMNS) + " exist; required with --csv",
    )
    p.add_argument(
        "--step-column",
        metavar="NAME",
        help="the CSV's step column (default: the first of " + ", ".join(STEP_COLUMNS) + " present)",
    )
    p.add_argument(
        "--std-column",
        action="append",
        metavar="NAME",
        help="the CSV column holding each point's "
        "standard deviation, one per --column in order: each point is judged against its own error "
        "(with --run, llc_std and the eval <metric>_ci intervals are used automatically)",
    )
    p.add_argument(
        "--no-std", action="store_true", help="with --run: ignore per-point errors, estimate the noise from the residuals only"
    )
    p.add_argument(
        "--smooth",
        type=int,
        metavar="N",
        help="smoothing span in points; windows cover at least this "
        "many points around a change (default: sqrt(n) clipped to 3..25)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=4.0,
        metavar="T",
        help="minimum score: strength of a change relative to noise (default 4.0)",
    )
    p.add_argument("--min-points", type=int, default=3, metavar="K", help="fewest points each side of a change (default 3)")
    p.add_argument("--json", action="store_true", help='print a JSON list of {"start", "end", "column", "score"}')
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    """Find the windows the arguments ask for and print them (a table, or JSON with --json)."""
    try:
        windows = _windows(args)
    except (SeriesError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    if args.json:
        print(json.dumps(windows_to_json(windows)))
    else:
        print(format_table(windows))
    return 0


def _windows(args: argparse.Namespace) -> list[Window]:
    """The windows of `--run` (writing its analysis/phases.json) or of each `--csv` column."""
    if args.smooth is not None and args.smooth < 2:
        raise SeriesError("--smooth must be at least 2")
    if args.run:
        run = RunDir(args.run)
        if not run.path.is_dir():
            raise SeriesError(f"no such run directory: {run.path}")
        if not args.column and not default_run_columns(run):
            raise SeriesError(f"{run.path} has none of the default columns ({', '.join(DEFAULT_RUN_COLUMNS)})")
        if args.std_column:
            raise SeriesError("--std-column is for --csv; --run uses llc_std and the eval <metric>_ci intervals itself")
        used: dict[str, str] = {}
        windows = analyse_run(
            run,
            args.column,
            smooth=args.smooth,
            threshold=args.threshold,
            min_points=args.min_points,
            use_std=not args.no_std,
            sigma_used=used,
        )
        _print_sigma(used)
        return windows
    if not args.column:
        raise SeriesError("--csv needs at least one --column")
    if args.std_column and len(args.std_column) != len(args.column):
        raise SeriesError(f"give one --std-column per --column ({len(args.std_column)} for {len(args.column)})")
    windows = []
    used = {}
    for k, col in enumerate(args.column):
        if args.std_column:
            steps, values, std = load_csv_std(args.csv, col, args.std_column[k], step_column=args.step_column)
            used[col] = f"per-point {args.std_column[k]}"
        else:
            (steps, values), std = load_csv_series(args.csv, col, step_column=args.step_column), None
            used[col] = "noise estimated from the residuals"
        windows += detect_windows(
            steps, values, column=col, smooth=args.smooth, threshold=args.threshold, min_points=args.min_points, std=std
        )
    _print_sigma(used)
    return windows


def _print_sigma(used: dict[str, str]) -> None:
    """Say on stderr which sigma each series was judged against (stdout stays the table or JSON)."""
    for col, how in used.items():
        print(f"sigma for {col}: {how}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
