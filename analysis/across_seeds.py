"""A per-checkpoint statistic across runs that differ only in their seed: mean and 95% t-interval per step.

    uv run analysis/llc.py --runs runs/phase_demo-s42 runs/phase_demo-s43 runs/phase_demo-s44
    uv run analysis/llc.py --runs runs/sweeps/phase_demo_seeds      # every run under a sweep folder

`find_runs` turns the paths into runs (a run directory, or a folder searched for run directories
with adapter checkpoints); `check_same_config` refuses runs that are not seeds of one config;
`aggregate` gives, at each step every run has, the mean, the standard deviation across runs, the
standard error and the 95% t-interval (`intervals.t_interval`); `metric` reads a run's series for it.
For the LLC, `llc.py --runs` (`llc.llc_across_runs`) computes each run's curve at one setting
(calibrated on the first run when needed) and writes `llc_across_seeds.csv` (`llc_mean`, `llc_std` =
the standard error across seeds, so `phases.py --csv ... --column llc_mean --std-column llc_std` judges
changes against the seed-to-seed spread), `metrics_across_seeds.csv` (reward, pass@1, greedy pass@1
the same way) and a figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training_with_unsloth.errors import UserError

MAX_DEPTH = 4  # how deep a folder is searched for runs
BESIDE = ("reward", "eval/pass@1", "eval/greedy_pass@1")  # drawn under the LLC, aggregated the same way


def find_runs(paths: Sequence[str | Path]) -> list[Any]:
    """The runs the paths name: each a run directory, or a folder searched (4 levels) for runs with checkpoints."""
    from analysis.runs import Run

    found: list[Any] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"--runs {p}: no such folder")
        if (p / "config.yaml").is_file():
            found.append(Run(p))
            continue
        below = _search(p, MAX_DEPTH)
        if not below:
            raise UserError(f"--runs {p}: neither a run directory (config.yaml) nor a folder holding runs with checkpoints")
        found += below
    unique = list({r.path.resolve(): r for r in found}.values())
    for r in unique:
        if not r.adapter_steps():
            raise UserError(f"{r.path} holds no adapter checkpoints (adapter-<step>/ with meta.json)")
    return unique


def _search(folder: Path, depth: int) -> list[Any]:
    from analysis.runs import Run

    out = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()):
        if (child / "config.yaml").is_file() and Run(child).adapter_steps():
            out.append(Run(child))
        elif depth > 1:
            out += _search(child, depth - 1)
    return out


def aggregate(per_run: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    """At each step every run has a finite value: mean, sd and standard error across runs, 95% t-interval, n."""
    from training_with_unsloth.intervals import t_interval

    if not per_run:
        return []
    common = set.intersection(*({s for s, v in values.items() if math.isfinite(v)} for values in per_run.values()))
    rows = []
    for step in sorted(common):
        xs = [values[step] for values in per_run.values()]
        n = len(xs)
        mean = sum(xs) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
        low, high = t_interval(xs)
        rows.append({"step": step, "mean": mean, "sd": sd, "sem": sd / math.sqrt(n), "low": low, "high": high, "n": n})
    return rows


def check_same_config(runs: Sequence[Any]) -> None:
    """Refuse runs whose configs differ in anything but `seed`, `name` and `output_dir`: they are not seeds of one run."""
    from analysis.compare_runs import config_differences

    diffs = {k: v for k, v in config_differences(runs).items() if k not in ("seed", "name", "output_dir")}
    if diffs:
        key, values = next(iter(diffs.items()))
        raise UserError(
            f"--runs: the runs differ in {', '.join(sorted(diffs))} (e.g. {key}: {values}), not only in their seed; "
            "pass runs of one config"
        )


def default_out(paths: Sequence[str | Path], runs: Sequence[Any]) -> Path:
    """One folder given: its `analysis/`; else `llc_across_seeds/` in the runs' common parent."""
    if len(paths) == 1 and not (Path(paths[0]) / "config.yaml").is_file():
        return Path(paths[0]) / "analysis"
    parents = {r.path.resolve().parent for r in runs}
    return (parents.pop() if len(parents) == 1 else Path.cwd()) / "llc_across_seeds"


def metric(run: Any, key: str) -> dict[int, float]:
    """A run's train or eval metric `key` as {step: value}."""
    s = run.series(key)
    return {int(t): float(v) for t, v in zip(s.steps, s.values, strict=True)}
