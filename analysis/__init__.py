"""Analysis of finished runs: statistics over adapter checkpoints, transitions, figures, comparisons.

Data flow, each module one step of it:

- `runs.py`: the one reader of a run directory (config, metric and eval series with their intervals,
  per-checkpoint tables `analysis/<name>.csv`).
- `per_checkpoint.py`: `for_each_checkpoint(run, statistic, steps)`, the loop every per-checkpoint
  statistic shares (model loaded once, adapters swapped, finished steps skipped, CSV after each step).
- statistics, one module each with its command line:
  - `llc.py`: local learning coefficients (the command; `LLCStatistic`), built on `llc_estimator.py`
    (devinterp's SGLD, settings, parameter groups), `llc_health.py` (is an estimate trustworthy),
    `llc_calibration.py` (which step size), `run_probe.py` and `probe.py` (the data it is measured on),
    `llc_robustness.py` (does the curve survive another step size and probe draw);
  - `adapter_norms.py`: the norm of each checkpoint's LoRA update, per component.
- `across_seeds.py`: a statistic's mean and 95% t-interval across runs of several seeds.
- `phases.py`: transition windows in any step-indexed series.
- `figures.py` and `plot_run.py`: the figures (`plot_run.py` the combined figure of one run).
- `compare_runs.py`, `compare_evals.py`: several runs on one axis; whether two evaluations differ.
"""
