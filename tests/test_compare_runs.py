"""analysis/compare_runs.py: runs overlaid on one step axis, final/best table, report.md; seeds grouped."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from analysis import compare_runs
from training_with_unsloth.intervals import t_interval


def _write_run(path, *, seed: int, lr: float, shift: float) -> None:
    path.mkdir(parents=True)
    cfg = {"name": path.name, "seed": seed, "output_dir": str(path.parent), "trainer": {"learning_rate": lr, "max_steps": 10}}
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for step in range(1, 11):
        lines.append({"step": step, "kind": "train", "reward": 0.1 * step + shift, "kl/k3": 0.01 * step,
                      "entropy": 1.0 - 0.05 * step, "completions/mean_length": 20 + step})  # fmt: skip
    for step in (0, 5, 10):
        value = min(1.0, 0.3 + 0.05 * step + shift)
        lines.append({"step": step, "kind": "eval", "eval/pass@1": value, "eval/pass@1_ci": [value - 0.1, value + 0.1],
                      "eval/greedy_pass@1": value, "eval/greedy_pass@1_ci": [value - 0.12, value + 0.12]})  # fmt: skip
    lines.append({"step": 10, "kind": "summary", "train_runtime": 120.0})
    (path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_two_runs_give_figures_table_and_report(tmp_path, capsys):
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    _write_run(a, seed=1, lr=1e-4, shift=0.0)
    _write_run(b, seed=2, lr=3e-4, shift=0.1)
    out = tmp_path / "cmp"
    assert compare_runs.main([str(a), str(b), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["entropy.png", "kl.png", "length.png", "overview.png", "passk.png", "report.md", "reward.png"]
    report = (out / "report.md").read_text()
    assert "`trainer.learning_rate` | `0.0001` | `0.0003`" in report and "`seed`" in report
    assert "| a | 1 | 10 | 0.800 [0.680, 0.920] | 0.800 [0.700, 0.900] |" in report  # final greedy pass@1, pass@1 with intervals
    assert "(10)" in report and "2.0 min" in report and "![overview](overview.png)" in report
    assert "| b |" in capsys.readouterr().out


def test_group_by_config_averages_seeds_with_a_t_interval(tmp_path):
    runs = []
    for name, seed, shift in (("qs-s1", 1, 0.0), ("qs-s2", 2, 0.1), ("qs-s3", 3, 0.05)):
        _write_run(tmp_path / name, seed=seed, lr=1e-4, shift=shift)
        runs.append(compare_runs.read_run(tmp_path / name))
    (group,) = compare_runs.group_runs(runs, by_config=True)
    assert group.label == "qs-s (n=3)"
    steps, values, lows, highs = compare_runs.group_series(group, "eval/greedy_pass@1", "eval")
    assert steps == [0, 5, 10] and math.isclose(values[0], 0.35)
    assert (lows[0], highs[0]) == t_interval([0.3, 0.4, 0.35])
    assert compare_runs.main([*(str(tmp_path / r.name) for r in runs), "--group-by-config", "--out", str(tmp_path / "g")]) == 0
    assert "t-intervals across them" in (tmp_path / "g" / "report.md").read_text()
    assert not (tmp_path / "g" / "llc.png").exists()  # no run has LLCs: no LLC figure


def test_llcs_of_seeds_are_drawn_as_a_band(tmp_path):
    runs = []
    for name, seed, shift in (("qs-s1", 1, 0.0), ("qs-s2", 2, 0.3), ("qs-s3", 3, 0.1)):
        _write_run(tmp_path / name, seed=seed, lr=1e-4, shift=shift)
        (tmp_path / name / "analysis").mkdir()
        rows = "".join(f"{s},{3.0 - 0.1 * s + shift},0.1,True\n" for s in (1, 5, 10))
        (tmp_path / name / "analysis" / "llc.csv").write_text("step,llc_mean,llc_std,healthy\n" + rows)
        runs.append(compare_runs.read_run(tmp_path / name))
    (group,) = compare_runs.group_runs(runs, by_config=True)
    steps, values, lows, highs = compare_runs.group_series(group, "llc_mean", "llc")
    assert steps == [1, 5, 10] and math.isclose(values[0], 2.9 + 0.4 / 3)
    assert (lows[0], highs[0]) == pytest.approx(t_interval([2.9, 3.2, 3.0]))
    assert compare_runs.main([*(str(tmp_path / r.name) for r in runs), "--group-by-config", "--out", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "llc.png").is_file()


def test_t_interval_matches_the_t_table():
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert math.isclose(hi - 2.0, 4.303 * 1.0 / math.sqrt(3), rel_tol=1e-9) and math.isclose(2.0 - lo, hi - 2.0)
    assert all(math.isnan(v) for v in t_interval([1.0]))


def test_not_a_run_is_one_line(tmp_path, capsys):
    assert compare_runs.main([str(tmp_path)]) == 2
    assert "is not a run directory (no config.yaml)" in capsys.readouterr().err
