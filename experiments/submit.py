"""Submit one training run as a SLURM job through submitit (or run it through submitit's local executor).

    uv run experiments/submit.py countdown --slurm partition=gpu,gpus=1,time=4:00:00
    uv run experiments/submit.py quickstart --set trainer.max_steps=10 --local

The job runs `run_experiment.py CONFIG --set ...` on the allocated node. Its stdout and stderr land in
`<run>/jobs/<job id>_0_log.out` and `.err`, and `env.json` records the job id. A preempted or timed-out
job requeues itself and continues with `--resume` (submitit's checkpoint hook: `TrainJob.checkpoint`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from experiments.run_experiment import add_run_arguments, parse_run_arguments
from training_with_unsloth.cli import command_name, run_main


class TrainJob:
    """One training run as a callable submitit pickles: `run_experiment.py CONFIG --set ...` in the job's process."""

    def __init__(self, config: str, overrides: Sequence[str], run_dir: str):
        self.config = config
        self.overrides = list(overrides)
        self.run_dir = run_dir

    def argv(self, *, resume: bool) -> list[str]:
        """The command line the job runs; `resume`: continue the last trainer checkpoint, or start afresh without one."""
        from training_with_unsloth.rundir import RunDir

        argv = [self.config]
        for item in self.overrides:
            argv += ["--set", item]
        if resume:
            run = RunDir(self.run_dir)
            argv.append("--resume" if run.last_trainer_checkpoint() is not None else "--overwrite")
        return argv

    def __call__(self, resume: bool = False) -> str:
        from experiments.run_experiment import main

        argv = self.argv(resume=resume)
        print("job: run_experiment.py " + " ".join(argv), flush=True)
        status = main(argv)
        if status:
            raise RuntimeError(f"run_experiment.py exited with status {status}: see this log and {self.run_dir}")
        return self.run_dir

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's preemption/timeout hook: requeue the same run, continuing it (`--resume`)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(TrainJob(self.config, self.overrides, self.run_dir), resume=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command_name("submit.py"),
        description="Run a GRPO experiment as a SLURM job (submitit), or through submitit's local executor.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--slurm takes submitit's SlurmExecutor parameters as KEY=VALUE pairs: partition, gpus (gpus_per_node),\n"
        "cpus (cpus_per_task), mem (e.g. 32GB), time (minutes or HH:MM:SS), account, qos, constraint, job_name, ...\n\n"
        "examples:\n"
        "  submit.py countdown --slurm partition=gpu,gpus=1,cpus=8,mem=32GB,time=4:00:00\n"
        "  submit.py quickstart --local                 (the same job path, run here; waits for it)\n"
        "  submit.py countdown --slurm partition=gpu,gpus=1 --resume",
    )
    add_run_arguments(parser)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--slurm", metavar="KEY=VALUE,...", help="submit to SLURM with these sbatch parameters")
    where.add_argument("--local", action="store_true", help="run through submitit's local executor and wait for it")
    parser.add_argument("--wait", action="store_true", help="with --slurm: wait for the job and report how it ended")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_run_arguments(build_parser(), argv)
    return run_main(lambda: _submit(args), interrupted="interrupted: the submitted job, if any, keeps running")


def _submit(args: argparse.Namespace) -> int:
    from experiments.submit import TrainJob  # by its module name, so the job process can unpickle it
    from training_with_unsloth.config import load_config
    from training_with_unsloth.config_files import resolve_config
    from training_with_unsloth.jobs import executor, slurm_parameters
    from training_with_unsloth.plan import check_new_run, check_resume
    from training_with_unsloth.rundir import RunDir

    path = resolve_config(args.config)
    cfg = load_config(path, args.overrides)  # a bad config fails here, not in the queue
    run = RunDir(cfg.run_dir)
    if args.resume:
        check_resume(cfg, run)
    else:
        check_new_run(run, resume=False, overwrite=args.overwrite)
    slurm = slurm_parameters(args.slurm) if args.slurm else None
    ex = executor(run.jobs, slurm=slurm, local=args.local)
    if args.overwrite:
        run.clear()  # here, before the job starts: the job itself never clears its own log folder
    ex.update_parameters(**({"job_name": cfg.name} if slurm is not None and "job_name" not in slurm else {}))
    job = ex.submit(TrainJob(str(path.resolve()), args.overrides, str(run.path.resolve())), resume=args.resume)
    print(f"submitted job {job.job_id}: {cfg.run_dir}; log {job.paths.stdout}")
    if args.local or args.wait:
        try:
            job.result()
        except Exception as exc:  # submitit re-raises the job's failure with its traceback
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            print(f"error: job {job.job_id} failed: {last}; see {job.paths.stderr}", file=sys.stderr)
            return 1
        print(f"done: {cfg.run_dir} (job {job.job_id}, log {job.paths.stdout})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
