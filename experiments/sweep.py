"""Sweep config keys with Optuna: each trial an ordinary run (per seed), the study resumable in SQLite.

    uv run experiments/sweep.py experiment_configs/sweeps/quickstart_lr_rank.yaml
    uv run experiments/sweep.py SWEEP.yaml --workers 2             # two local workers share the study
    uv run experiments/sweep.py SWEEP.yaml --slurm partition=gpu,gpus=1,time=2:00:00 --workers 8
    uv run experiments/sweep.py SWEEP.yaml --report                # the table, best trial and figures only

Rerunning the same command continues an interrupted sweep: finished trials are kept, an interrupted
trial continues in its own run directories (`--resume`), and nothing is trained twice.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from training_with_unsloth.cli import command_name, run_main

INTERRUPTED = "interrupted: finished trials and checkpoints are kept; rerun the same command to continue the sweep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command_name("sweep.py"),
        description="Run (or continue) an Optuna sweep over experiment config keys; write its report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The sweep file names a base config, a search space (choices, uniform, loguniform, int), a sampler\n"
        "(grid, random, tpe), trials, the metric and direction, and seeds; docs/scaling.md describes it.\n"
        "The sweep lives in <output_dir>/sweeps/<name>/: study.db, trials/trial-<n>-seed<s>/, report.md.",
    )
    parser.add_argument("sweep", metavar="SWEEP", help="sweep YAML (e.g. experiment_configs/sweeps/quickstart_lr_rank.yaml)")
    parser.add_argument("--report", action="store_true", help="only write report.md from the study as it stands")
    parser.add_argument("--workers", type=int, default=1, help="processes (or SLURM jobs) sharing the study (default 1)")
    parser.add_argument("--slurm", metavar="KEY=VALUE,...", help="run the workers as SLURM jobs (submitit parameters)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one worker of --workers N
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return run_main(lambda: _sweep(args), interrupted=INTERRUPTED)


def _sweep(args: argparse.Namespace) -> int:
    from training_with_unsloth.sweeps import Sweep, optimize, write_report

    sweep = Sweep(args.sweep)
    if args.report:
        print(f"report: {write_report(sweep)}")
        return 0
    if args.worker:
        optimize(sweep)
        return 0
    print(f"sweep {sweep.cfg.name}: {sweep.cfg.total_trials} trials x {len(sweep.cfg.seeds)} seeds in {sweep.dir}")
    if args.slurm:
        _submit_workers(sweep, args)
        return 0
    if args.workers == 1:
        study = optimize(sweep)
    else:
        sweep.study()  # created once here, before the workers open it
        _local_workers(args)
        study = None
    report = write_report(sweep, study)
    print(f"report: {report}")
    return 0


def _local_workers(args: argparse.Namespace) -> None:
    """`--workers N` here: N worker processes on the same study (one GPU each when there are several)."""
    import torch

    gpus = torch.cuda.device_count()
    procs = []
    for i in range(args.workers):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), args.sweep, "--worker"], env=env))
    status = [p.wait() for p in procs]
    if any(s == 130 for s in status):
        raise KeyboardInterrupt
    if any(status):
        print(f"note: worker exit statuses {status}; the report shows which trials finished", file=sys.stderr)


def _submit_workers(sweep, args: argparse.Namespace) -> None:
    """`--slurm`: `--workers` SLURM jobs, each a worker on the study (study.db must be on a shared file system)."""
    from training_with_unsloth.jobs import executor, slurm_parameters
    from training_with_unsloth.sweeps import SweepWorker

    ex = executor(sweep.dir / "jobs", slurm=slurm_parameters(args.slurm), local=False)
    sweep.study()  # created once here, before the jobs open it
    ex.update_parameters(job_name=f"sweep-{sweep.cfg.name}")
    jobs = ex.map_array(SweepWorker(os.path.abspath(args.sweep)), list(range(args.workers)))
    print(f"submitted {len(jobs)} worker jobs ({', '.join(j.job_id for j in jobs)}); logs in {sweep.dir / 'jobs'}")
    print(f"when they are done: {command_name('sweep.py')} {args.sweep} --report")


if __name__ == "__main__":
    sys.exit(main())
