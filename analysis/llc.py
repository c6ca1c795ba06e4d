"""Local learning coefficients over a run's adapter checkpoints, with devinterp's samplers.

    uv run analysis/llc.py --run runs/quickstart                 # calibrates the lr first, then every checkpoint
    uv run analysis/llc.py --run runs/quickstart --calibrate     # the lr x n_beta grid on first and last checkpoint
    uv run analysis/llc.py --run runs/quickstart --components    # LLCs per component: attention / MLP x layer thirds
    uv run analysis/llc.py --runs runs/s42 runs/s43 runs/s44     # each run, then the mean and 95% interval across seeds
    uv run grpo-llc --run runs/quickstart                        # the same command, as a console script

The base model is loaded once, through the training backends; each `checkpoints/adapter-<step>/`
is swapped in by loading its LoRA weights into the same model. Only the LoRA parameters are
sampled (devinterp `param_masks`). By default every checkpoint is measured on one probe
(`--probe rollouts`): held-out prompts of the run's task, each with one completion sampled once
from the first or the last checkpoint with the run's sampler (`analysis/run_probe.py`); its hash is
recorded in `llc_settings.json` and in every row. `--probe self` measures each checkpoint on its own
completions; `--probe reference` on the gold answers.

After the curve, the robustness check (unless `--no-robustness`) recomputes it at half the step size
and on a second, disjoint probe draw (one chain each) and reports the rank correlation of the
checkpoints' LLCs between them (`analysis/llc_robustness.py`).

Writes `<run>/analysis/`: `llc.csv` (one row per checkpoint), `llc_settings.json`, `traces/`,
`llc_traces.png`, `llc_robustness.json` with `llc_alt_lr.csv` and `llc_alt_probe.csv`, the
calibration files when it calibrates, `llc_components.csv` and its heatmap with `--components`, and
the combined figure. A row is healthy when every chain is positive and settled, the chains agree and
the checkpoint is a minimum of its probe loss (`analysis/llc_health.py`); `notes` says why not, then
the share of draws below the init loss and the MALA acceptance rate.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.llc_estimator import GROUPINGS, PROBES, SAMPLERS, Settings  # noqa: E402
from analysis.llc_statistic import LLCStatistic, llc_over_run  # noqa: E402

INTERRUPTED = "interrupted: llc.csv holds every checkpoint finished so far; rerun to continue"


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _steps(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _probe_from(text: str) -> list[str]:
    parts = [x.strip() for x in text.split(",") if x.strip()]
    for p in parts:
        if p not in ("first", "last") and not p.isdigit():
            raise argparse.ArgumentTypeError(f"{p!r}: use checkpoint steps, 'first' or 'last' (e.g. first,last or 24)")
    return parts


def resolve_probe_from(parts: list[str] | None, steps: list[int]) -> tuple[int, ...] | None:
    """`first` / `last` / steps as the run's checkpoint steps (None: the default sources)."""
    from analysis.run_probe import default_probe_from

    if not parts:
        return default_probe_from(steps)
    out = [steps[0] if p == "first" else steps[-1] if p == "last" else int(p) for p in parts]
    return tuple(dict.fromkeys(out))


def build_parser() -> argparse.ArgumentParser:
    from analysis.llc_calibration import LR_GRID
    from training_with_unsloth.cli import command_name

    d = Settings()
    ap = argparse.ArgumentParser(
        prog=command_name("llc.py"),
        description="LLCs over a run's adapter checkpoints (devinterp SGLD on the LoRA weights), with a robustness check.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run directory (<output_dir>/<name>), e.g. runs/quickstart")
    which.add_argument(
        "--runs", nargs="+", metavar="DIR",
        help="several runs of one config (seeds), or a folder holding them (a sweep with seeds:): each run's LLCs at "
        "the same settings, then their mean and 95%% t-interval per step",
    )  # fmt: skip
    ap.add_argument("--out", default=None, help="with --runs: where the across-seed table and figure go")
    ap.add_argument("--checkpoints", type=_steps, default=None, help="comma-separated steps (default: every adapter checkpoint)")
    ap.add_argument(
        "--probe", choices=list(PROBES), default=d.probe,
        help="completions sampled once, the same rows for every checkpoint (rollouts), each checkpoint's own "
        "completions (self), or gold answers (reference)",
    )  # fmt: skip
    ap.add_argument(
        "--probe-from", type=_probe_from, default=None,
        help="checkpoints the rollout probe's completions come from, alternating by prompt: steps, first, last "
        "(default: first,last)",
    )  # fmt: skip
    ap.add_argument("--probe-draw", type=int, default=d.probe_draw, help="which disjoint set of held-out prompts")
    ap.add_argument("--num-probes", type=int, default=d.num_probes, help="held-out problems in the probe set")
    ap.add_argument(
        "--lr", type=float, default=None,
        help=f"SGLD step size (default: the recorded or calibrated one; {d.lr:g} with --no-calibrate)",
    )  # fmt: skip
    ap.add_argument(
        "--n-beta", type=float, default=None,
        help="SGLD inverse temperature (default: the recorded or calibrated one, else batch_size / ln(batch_size))",
    )  # fmt: skip
    ap.add_argument("--localization", type=float, default=d.localization, help="pull toward the checkpoint's weights (gamma)")
    ap.add_argument("--sampler", choices=list(SAMPLERS), default=d.sampler, help="devinterp sampler")
    ap.add_argument("--chains", type=int, default=d.chains)
    ap.add_argument("--draws", type=int, default=d.draws)
    ap.add_argument("--burn-in", type=int, default=d.burn_in)
    ap.add_argument("--batch-size", type=int, default=None, help="probe rows per SGLD step (default: all of them)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--max-drift", type=float, default=d.max_drift,
        help="trace drift (last vs second quarter) tolerated, as a fraction of the loss rise",
    )  # fmt: skip
    ap.add_argument(
        "--mala-steps", type=int, default=d.mala_steps,
        help="Langevin proposals scored for the MALA acceptance rate in each estimate (0: skip)",
    )  # fmt: skip
    ap.add_argument("--no-robustness", action="store_true", help="skip the second sampler setting and probe draw")
    ap.add_argument(
        "--components", nargs="?", const="components", choices=list(GROUPINGS), default=None,
        help="also LLCs per group of LoRA weights (default grouping: attention / MLP x early / middle / late layers), "
        "in llc_components.csv and a heatmap",
    )  # fmt: skip
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    ap.add_argument("--force", action="store_true", help="recompute steps already in the tables")
    ap.add_argument(
        "--calibrate", action="store_true",
        help="only the --lr-grid x --n-beta-grid calibration on the first and last checkpoint (it also runs by itself "
        "before the LLCs when the run has no recorded settings and --lr is not given)",
    )  # fmt: skip
    ap.add_argument("--no-calibrate", action="store_true", help="never calibrate: use --lr / --n-beta or their defaults")
    ap.add_argument("--lr-grid", type=_floats, default=list(LR_GRID), help="comma-separated lrs for calibration")
    ap.add_argument(
        "--n-beta-grid", type=_floats, default=None,
        help="comma-separated n_beta values for calibration (default: the default n_beta x 0.5, 1, 2)",
    )  # fmt: skip
    ap.add_argument("--no-figure", action="store_true", help="skip the combined figure at the end")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training_with_unsloth.cli import run_main

    return run_main(lambda: _run(args), interrupted=INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    """LLCs of one run or of several (then across them), calibrating first when nothing says which lr to use."""
    from training_with_unsloth.errors import UserError

    if args.calibrate and args.no_calibrate:
        raise UserError("--calibrate and --no-calibrate contradict each other: pass one")
    if args.out and not args.runs:
        raise UserError("--out goes with --runs (a single run writes into its own analysis/ folder)")
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.runs:
        return llc_across_runs(args, device)
    from analysis.runs import open_run

    one_run(open_run(args.run, checkpoints=True), args, device)
    return 0


def base_settings(args: argparse.Namespace, run: Any) -> Settings:
    """The settings the command line gives, before calibration, with the probe's source checkpoints resolved."""
    steps = run.adapter_steps()
    return Settings(
        lr=args.lr if args.lr is not None else Settings.lr, n_beta=args.n_beta, localization=args.localization,
        chains=args.chains, draws=args.draws, burn_in=args.burn_in, batch_size=args.batch_size, seed=args.seed,
        probe=args.probe, probe_from=resolve_probe_from(args.probe_from, steps) if args.probe == "rollouts" else None,
        probe_draw=args.probe_draw, num_probes=args.num_probes, max_drift=args.max_drift, sampler=args.sampler,
        mala_steps=args.mala_steps,
    )  # fmt: skip


def one_run(run: Any, args: argparse.Namespace, device: str, settings: Settings | None = None) -> Settings | None:
    """Calibration (when needed), the LLC curve, robustness, components and figures of one run.
    Returns the settings used (None after --calibrate alone)."""
    from analysis.llc_calibration import calibrate, choose_settings
    from analysis.per_checkpoint import Context
    from training_with_unsloth.errors import UserError

    ctx = Context(run, device)
    base = base_settings(args, run)
    if args.calibrate:
        n_betas = args.n_beta_grid or [base.n_beta * f for f in (0.5, 1.0, 2.0)]
        calibrate(ctx, base, args.lr_grid, n_betas)
        return None
    available = run.adapter_steps()
    steps = args.checkpoints or available
    missing = [s for s in steps if s not in available]
    if missing:
        raise UserError(f"--checkpoints {missing}: no such adapter checkpoints; the run has {available}")
    settings = settings or choose_settings(ctx, base, args)
    llc_over_run(ctx, settings, steps, force=args.force)
    print(f"wrote {run.analysis / 'llc.csv'} and {run.analysis / 'llc_traces.png'}")
    if not args.no_robustness:
        from analysis.llc_robustness import robustness

        robustness(ctx, settings, steps, force=args.force)
    if args.components:
        from analysis.figures import plot_component_heatmap
        from analysis.per_checkpoint import for_each_checkpoint

        stat = LLCStatistic(settings, name="llc_components", grouping=args.components)
        for_each_checkpoint(run, stat, steps, force=args.force, context=ctx, desc="components")
        print(f"wrote {plot_component_heatmap(run, 'llc_components')}")
    if not args.no_figure:
        from analysis.plot_run import plot_run

        for path in plot_run(run.path):
            print(f"wrote {path}")
    return settings


def llc_across_runs(args: argparse.Namespace, device: str) -> int:
    """`llc.py --runs`: each run's LLC curve at one setting, then the across-seed table, metrics and figure
    (`analysis/across_seeds.py` finds the runs and aggregates)."""
    from analysis.across_seeds import BESIDE, aggregate, check_same_config, default_out, find_runs, metric
    from analysis.figures import plot_across_runs
    from analysis.per_checkpoint import write_rows
    from training_with_unsloth.errors import UserError

    runs = find_runs(args.runs)
    if len(runs) < 2:
        raise UserError(f"--runs found {len(runs)} run: an interval across seeds needs at least 2")
    check_same_config(runs)
    if args.calibrate:
        raise UserError("--calibrate goes with --run (calibrate one run; --runs then uses its recorded settings)")
    out = Path(args.out) if args.out else default_out(args.runs, runs)
    print(f"{len(runs)} runs: {', '.join(str(r.path) for r in runs)}", flush=True)
    settings = None
    for run in runs:
        print(f"\n== {run.path}", flush=True)
        if settings is not None:
            settings = replace(settings, probe_from=base_settings(args, run).probe_from)
        settings = one_run(run, args, device, settings=settings)
    per_run = {r.name: r.table("llc").by_step("llc_mean") for r in runs}
    rows = aggregate(per_run)
    table = [
        {"step": a["step"], "llc_mean": a["mean"], "llc_std": a["sem"], "llc_sd": a["sd"], "llc_low": a["low"],
         "llc_high": a["high"], "n": a["n"], **{f"llc[{name}]": per_run[name][a["step"]] for name in per_run}}
        for a in rows
    ]  # fmt: skip
    if not table:
        raise UserError("the runs share no checkpoint step with a finite LLC: nothing to aggregate")
    write_rows(out / "llc_across_seeds.csv", table)
    beside = {key: aggregate({r.name: metric(r, key) for r in runs}) for key in BESIDE}
    beside = {k: v for k, v in beside.items() if v}
    columns = ("mean", "sd", "sem", "low", "high", "n")
    metric_rows = [{"step": a["step"], "metric": k, **{c: a[c] for c in columns}} for k, v in beside.items() for a in v]
    write_rows(out / "metrics_across_seeds.csv", metric_rows)
    figure = plot_across_runs(rows, per_run, "llc_mean", out / "llc_across_seeds.png",
                              title=f"LLC across {len(runs)} seeds (mean, 95% t-interval)", beside=beside)  # fmt: skip
    print(f"\nLLC across {len(runs)} seeds (mean [95% t-interval]):")
    for a in rows:
        print(f"  step {a['step']:>5}: {a['mean']:.3f} [{a['low']:.3f}, {a['high']:.3f}]  sd {a['sd']:.3f}")
    print(f"wrote {out / 'llc_across_seeds.csv'}, {out / 'metrics_across_seeds.csv'} and {figure}")
    print(f"transition windows against the seed-to-seed spread: uv run analysis/phases.py --csv {out / 'llc_across_seeds.csv'} "
          "--column llc_mean --std-column llc_std")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
