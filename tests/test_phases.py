"""analysis/phases.py: transition windows are found where planted, and not in noise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.phases import (
    Window,
    detect_windows,
    load_csv_series,
    load_csv_std,
    load_run_series_std,
    load_series,
    noise_sigma,
    smooth_series,
)

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "analysis" / "phases.py"

# Tolerances used below: a level shift's window must bracket the change exactly (start <= last step
# before it, end >= first step after it); a slope change's window must lie within 10% of the series
# length of the true kink (a kink's location is intrinsically less certain than a jump's).
SLOPE_TOL = 0.10


def _level(n, c, size, seed, sigma=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return t, offset + np.where(t >= c, size * sigma, 0.0) + sigma * rng.standard_normal(n)


def _brackets(w: Window, before: float, after: float) -> bool:
    return w.start <= before and w.end >= after


@pytest.mark.parametrize("n", [50, 120, 400])
@pytest.mark.parametrize("seed", range(6))
def test_level_shift_recovered(n, seed):
    rng = np.random.default_rng(1000 + seed)
    c = int(rng.integers(int(0.3 * n), int(0.7 * n)))
    sigma = float(10 ** rng.uniform(-3, 3))
    t, y = _level(n, c, 6.0, seed, sigma=sigma, offset=123.0 * sigma)
    windows = detect_windows(t, y, column="x")
    assert len(windows) == 1, windows
    assert _brackets(windows[0], c - 1, c), (c, windows)
    assert windows[0].column == "x" and windows[0].score >= 4.0


@pytest.mark.parametrize("seed", range(6))
def test_two_level_shifts_recovered(seed):
    t, y = _level(200, 70, 6.0, seed)
    y = y + np.where(t >= 140, -7.0, 0.0)
    windows = detect_windows(t, y)
    assert len(windows) == 2, windows
    assert _brackets(windows[0], 69, 70) and _brackets(windows[1], 139, 140)


@pytest.mark.parametrize("n", [100, 200])
@pytest.mark.parametrize("seed", range(6))
def test_slope_change_recovered(n, seed):
    """A kink that bends the curve by 10 sigma over the shorter side is found within 10% of n."""
    rng = np.random.default_rng(seed)
    c = int(0.55 * n)
    t = np.arange(n)
    y = np.where(t >= c, (t - c) * 10.0 / min(c, n - c), 0.0) + rng.standard_normal(n)
    windows = detect_windows(t, y)
    assert 1 <= len(windows) <= 2, windows
    tol = SLOPE_TOL * n
    assert any(w.start - tol <= c <= w.end + tol for w in windows), (c, windows)


def test_uneven_log_spaced_steps():
    t = np.unique(np.round(np.geomspace(1, 5000, 40)))
    for seed in range(5):
        y = np.where(t >= 300, 8.0, 0.0) + np.random.default_rng(seed).standard_normal(t.size)
        windows = detect_windows(t, y)
        assert len(windows) == 1, windows
        before, after = t[t < 300].max(), t[t >= 300].min()
        assert _brackets(windows[0], before, after)
        # and noise alone on the same steps gives nothing
        assert detect_windows(t, np.random.default_rng(seed).standard_normal(t.size)) == []


@pytest.mark.parametrize("n", [10, 20, 60, 200, 1000])
def test_flat_noise_gives_no_windows(n):
    # measured false-alarm rate at threshold 4: ~0.1-0.4% of series for n <= 20, ~0 for n >= 100
    for seed in range(20):
        for scale in (1e-6, 1.0, 1e4):
            rng = np.random.default_rng(seed)
            y = 3.0 * scale + scale * rng.standard_normal(n)
            assert detect_windows(np.arange(n) * 10, y) == [], (n, seed, scale)


def test_saturating_learning_curve_few_windows_at_the_bend():
    n, tau = 300, 50.0
    t = np.arange(n)
    for seed in range(5):
        y = 1 - np.exp(-t / tau) + 0.02 * np.random.default_rng(seed).standard_normal(n)
        windows = detect_windows(t, y)
        assert len(windows) <= 3, windows
        assert all(w.end <= 4 * tau for w in windows), windows  # the bend, not the plateau


@pytest.mark.parametrize(
    "steps, values",
    [
        ([], []),
        ([1], [1.0]),
        ([1, 2, 3, 4, 5], [0, 0, 9, 9, 9]),
        (list(range(50)), [2.5] * 50),
        (list(range(50)), [float("nan")] * 50),
        (list(range(50)), list(np.arange(50) * 3.0)),  # a straight line: no change of trend
        ([3, 1, 2, 2, 5, 4, 7, 6], [1, 2, 3, 4, 5, 6, 7, 8]),  # unsorted, duplicated steps
    ],
)
def test_short_constant_degenerate_series_do_not_crash(steps, values):
    assert detect_windows(steps, values) == []


def test_nans_dropped_and_noise_free_step_found():
    y = np.array([0.0] * 15 + [1.0] * 15)
    y[[3, 20]] = np.nan
    windows = detect_windows(np.arange(30), y)
    assert len(windows) == 1 and _brackets(windows[0], 14, 15)


def test_threshold_and_smooth():
    t, y = _level(200, 100, 6.0, 0)
    assert detect_windows(t, y, threshold=1000.0) == []
    narrow, wide = detect_windows(t, y, smooth=3)[0], detect_windows(t, y, smooth=25)[0]
    assert narrow.end - narrow.start <= wide.end - wide.start
    assert all(w.score >= 4.0 for w in detect_windows(t, y))


def test_noise_and_smoothing_helpers():
    rng = np.random.default_rng(0)
    t = np.arange(500)
    y = 0.01 * t + 2.0 * rng.standard_normal(500)
    assert noise_sigma(t, y) == pytest.approx(2.0, rel=0.15)
    st, sy = smooth_series(t, y, 25)
    assert st.shape == sy.shape == (500,)
    assert np.std(sy - 0.01 * t) < 0.7


# ---------------------------------------------------------------------------------------- per-point std
@pytest.mark.parametrize("n", [20, 60, 200])
def test_flat_noise_with_per_point_std_gives_no_windows(n):
    for seed in range(20):
        rng = np.random.default_rng(seed)
        std = rng.uniform(0.3, 3.0, n)  # each point's own sigma, the noise drawn with it
        y = 5.0 + std * rng.standard_normal(n)
        assert detect_windows(np.arange(n), y, std=std) == [], (n, seed)
        # stated errors 3x too small: the actual scatter takes over, still no windows
        assert detect_windows(np.arange(n), y, std=std / 3) == [], (n, seed)


@pytest.mark.parametrize("seed", range(6))
def test_five_sigma_jump_with_per_point_std_found(seed):
    rng = np.random.default_rng(seed)
    n, c = 100, 40
    std = rng.uniform(0.8, 1.25, n)
    y = 3.0 + np.where(np.arange(n) >= c, 5.0, 0.0) + std * rng.standard_normal(n)
    windows = detect_windows(np.arange(n), y, std=std, column="llc_mean")
    assert len(windows) == 1, windows
    assert _brackets(windows[0], c - 1, c) and windows[0].score >= 4.0


@pytest.mark.parametrize("seed", range(6))
def test_large_error_bars_around_a_dip_give_no_window(seed):
    """A dip of 10 scatter sigmas is two windows without std, none when its points carry sigma 2."""
    rng = np.random.default_rng(seed)
    n = 60
    t = np.arange(n) * 10
    dip = (np.arange(n) >= 25) & (np.arange(n) < 35)
    y = 0.1 * rng.standard_normal(n) - np.where(dip, 1.0, 0.0)
    std = np.where(dip, 2.0, 0.1)
    assert len(detect_windows(t, y)) >= 1
    assert detect_windows(t, y, std=std) == []


def test_std_edge_cases():
    t, y = _level(60, 30, 8.0, 0)
    base = detect_windows(t, y)
    assert detect_windows(t, y, std=np.zeros(60)) == base  # no usable std: the unweighted method
    assert detect_windows(t, y, std=[float("nan")] * 60) == base
    std = np.ones(60)
    std[[3, 9]] = [np.nan, -1.0]  # missing values count as the median
    assert len(detect_windows(t, y, std=std)) == 1
    with pytest.raises(ValueError, match="differ in length"):
        detect_windows(t, y, std=np.ones(5))


# ---------------------------------------------------------------------------------------- loading
def _wandb_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    t, y = _level(120, 60, 6.0, 3, sigma=0.1, offset=1.0)
    lines = ['"Step","run-a - train/reward","run-a - train/reward__MIN"']
    for s, v in zip(t, y, strict=True):
        cell = "" if s == 7 else f"{v:.6f}"  # wandb leaves cells empty when a step has no value
        lines.append(f"{s},{cell},{v - 0.5:.6f}")
    path.write_text("\n".join(lines) + "\n")
    return t, y


def test_wandb_export_loading(tmp_path):
    csv = tmp_path / "export.csv"
    t, y = _wandb_csv(csv)
    steps, values = load_csv_series(csv, "run-a - train/reward")
    assert steps.tolist() == t.tolist()
    assert np.isnan(values[7]) and np.allclose(np.delete(values, 7), np.delete(y, 7), atol=1e-5)
    windows = detect_windows(steps, values)
    assert len(windows) == 1 and _brackets(windows[0], 59, 60)
    s2, v2 = load_series(csv, "run-a - train/reward__MIN", step_column="Step")
    assert len(s2) == 120


def test_run_dir_loading(tmp_path):
    run = tmp_path / "run"
    (run / "analysis").mkdir(parents=True)
    recs = [{"step": s, "kind": "train", "reward": float(s >= 20)} for s in range(1, 41)]
    recs += [{"step": s, "kind": "eval", "eval/pass@1": 0.1 * s / 10} for s in (0, 10, 20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "analysis" / "llc.csv").write_text("step,llc_mean,llc_std,healthy,notes\n1,3.0,0.1,True,\n2,3.5,0.1,False,x\n")
    assert load_series(run, "reward")[0].tolist() == list(range(1, 41))
    assert load_series(run, "eval/pass@1")[1].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert load_series(run, "llc_mean")[1].tolist() == [3.0, 3.5]


def test_run_dir_std(tmp_path):
    run = tmp_path / "run"
    (run / "analysis").mkdir(parents=True)
    recs = [{"step": s, "kind": "train", "reward": 0.5} for s in range(1, 5)]
    recs += [{"step": s, "kind": "eval", "eval/pass@1": 0.5, "eval/pass@1_ci": [0.5 - 0.196, 0.5 + 0.196]} for s in (0, 10)]
    recs.append({"step": 20, "kind": "eval", "eval/pass@1": 0.5})  # no interval: NaN, later the median
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "analysis" / "llc.csv").write_text("step,llc_mean,llc_std,healthy,notes\n1,3.0,0.1,True,\n2,3.5,0.2,False,x\n")
    steps, values, std, how = load_run_series_std(run, "llc_mean")
    assert std.tolist() == [0.1, 0.2] and "llc_std" in how
    steps, values, std, how = load_run_series_std(run, "eval/pass@1")
    assert std[:2] == pytest.approx([0.1, 0.1]) and np.isnan(std[2]) and "_ci" in how
    assert load_run_series_std(run, "reward")[2] is None


# ---------------------------------------------------------------------------------------- CLI
def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_json_matches_library(tmp_path):
    csv = tmp_path / "export.csv"
    _wandb_csv(csv)
    col = "run-a - train/reward"
    out = _cli("--csv", str(csv), "--column", col, "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    expected = detect_windows(*load_csv_series(csv, col), column=col)
    assert [(d["start"], d["end"], d["column"]) for d in got] == [(w.start, w.end, w.column) for w in expected]
    assert [d["score"] for d in got] == pytest.approx([w.score for w in expected], abs=1e-3)
    table = _cli("--csv", str(csv), "--column", col, "--threshold", "1000")
    assert table.returncode == 0 and "no transition windows found" in table.stdout


def test_cli_run_writes_phases_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    recs = [{"step": s, "kind": "train", "reward": float(s >= 50) + 0.1 * rng.standard_normal()} for s in range(1, 101)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = _cli("--run", str(run), "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert len(got) == 1 and got[0]["column"] == "reward" and got[0]["start"] <= 49 <= 50 <= got[0]["end"]
    saved = json.loads((run / "analysis" / "phases.json").read_text())
    assert saved["windows"] == got


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--csv", "/no/such/file.csv", "--column", "x"], "no such file"),
        (["--csv", "{csv}", "--column", "run-a - train/rewrd"], "did you mean 'run-a - train/reward'"),
        (["--csv", "{nostep}", "--column", "x"], "no step column"),
        (["--run", "/no/such/run"], "no such run directory"),
        (["--run", "{run}", "--column", "rewrd"], "did you mean 'reward'"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, args, needle):
    csv = tmp_path / "export.csv"
    _wandb_csv(csv)
    nostep = tmp_path / "nostep.csv"
    nostep.write_text("a,x\n1,2\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "kind": "train", "reward": 1.0}) + "\n")
    args = [a.format(csv=csv, nostep=nostep, run=run) for a in args]
    out = _cli(*args)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert needle in out.stderr


def _std_csv(path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 80
    std = rng.uniform(0.5, 1.0, n)
    y = np.where(np.arange(n) >= 40, 6.0, 0.0) + std * rng.standard_normal(n)
    rows = ["step,value,value_std"] + [f"{s},{v:.6f},{e:.6f}" for s, v, e in zip(range(n), y, std, strict=True)]
    path.write_text("\n".join(rows) + "\n")


def test_cli_std_column(tmp_path):
    csv = tmp_path / "s.csv"
    _std_csv(csv)
    out = _cli("--csv", str(csv), "--column", "value", "--std-column", "value_std", "--json")
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    expected = detect_windows(*load_csv_std(csv, "value", "value_std")[:2], std=load_csv_std(csv, "value", "value_std")[2])
    assert [(d["start"], d["end"]) for d in got] == [(w.start, w.end) for w in expected]
    assert len(got) == 1 and got[0]["start"] <= 39 and got[0]["end"] >= 40
    assert "sigma for value: per-point value_std" in out.stderr


def test_cli_run_reports_sigma(tmp_path):
    run = tmp_path / "run"
    (run / "analysis").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "kind": "train", "reward": 1.0}) + "\n")
    rows = [f"{s},{3.0 + 0.01 * s},0.1,True," for s in range(1, 21)]
    (run / "analysis" / "llc.csv").write_text("step,llc_mean,llc_std,healthy,notes\n" + "\n".join(rows) + "\n")
    out = _cli("--run", str(run), "--column", "llc_mean", "--json")
    assert out.returncode == 0, out.stderr
    assert "sigma for llc_mean: per-point llc_std" in out.stderr
    assert json.loads((run / "analysis" / "phases.json").read_text())["sigma"]["llc_mean"].startswith("per-point llc_std")
    out = _cli("--run", str(run), "--column", "llc_mean", "--no-std")
    assert out.returncode == 0 and "residuals" in out.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--column", "value", "--std-column", "value_sd"], "std column 'value_sd' not in"),
        (["--column", "value", "--std-column", "value_std", "--std-column", "value_std"], "one --std-column per --column"),
    ],
)
def test_cli_std_column_errors(tmp_path, args, needle):
    csv = tmp_path / "s.csv"
    _std_csv(csv)
    out = _cli("--csv", str(csv), *args)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert needle in out.stderr
    if "std column" in needle:
        assert "did you mean 'value_std'" in out.stderr
