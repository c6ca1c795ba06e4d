"""Runs as submitit jobs: `--slurm` parameters, the executor (SLURM or local), and the job record in env.json.

`experiments/submit.py` (a training run, `TrainJob`) and `experiments/sweep.py --slurm` (sweep workers)
submit through `executor`. A job's stdout and stderr go to the executor's folder (submitit's
`<job id>_<task>_log.out/.err`); `job_record` is what `env.json` records about the job.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from training_with_unsloth.errors import ConfigError, UserError, closest

JOBS_DIR = "jobs"  # inside the run directory; --overwrite keeps it (a job may be writing its log there)
ALIASES = {"gpus": "gpus_per_node", "cpus": "cpus_per_task", "name": "job_name"}
MAX_REQUEUES = 3  # timeouts after which submitit stops requeueing (preemptions are always requeued)


def slurm_parameters(spec: str) -> dict[str, Any]:
    """`partition=gpu,gpus=1,time=4:00:00,mem=32G` as submitit `SlurmExecutor` parameters.

    Keys are submitit's (`partition`, `gpus_per_node`, `cpus_per_task`, `mem`, `time`, `account`, `qos`,
    `constraint`, `array_parallelism`, ...) or the short forms `gpus`, `cpus`, `name`; `time` takes minutes or
    `[D-]HH:MM[:SS]`. Integers are parsed as such. An unknown key is a ConfigError naming the closest valid one.
    """
    from submitit.slurm.slurm import _get_default_parameters

    valid = sorted(set(_get_default_parameters()) | set(ALIASES))
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not value.strip():
            raise ConfigError(f"--slurm: '{item}' is not KEY=VALUE (e.g. --slurm partition=gpu,gpus=1,time=4:00:00)")
        if key not in valid:
            near = closest(key, valid)
            hint = f"did you mean '{near}'? " if near else ""
            raise ConfigError(f"--slurm: unknown key '{key}': {hint}valid keys: {', '.join(valid)}")
        key = ALIASES.get(key, key)
        value = value.strip()
        params[key] = minutes(value) if key == "time" else int(value) if re.fullmatch(r"\d+", value) else value
    return params


def minutes(value: str) -> int:
    """SLURM's time forms (`90`, `4:00:00`, `1-12:00`, `30:00` is 30 minutes) in whole minutes, rounded up."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
    if not m:
        raise ConfigError(f"--slurm: time '{value}' is not minutes or [D-]HH:MM[:SS]")
    days, a, b, c = (int(x) if x else None for x in m.groups())
    if b is None and days is None:
        return a  # plain minutes
    if c is not None:
        hours, mins, secs = a, b, c
    elif days is not None:
        hours, mins, secs = a, b or 0, 0
    else:
        hours, mins, secs = 0, a, b  # MM:SS
    total = (days or 0) * 1440 + hours * 60 + mins + (1 if secs else 0)
    return max(total, 1)


def executor(folder: Path, *, slurm: dict[str, Any] | None, local: bool, timeout_min: int = 7 * 24 * 60) -> Any:
    """A submitit executor writing its logs to `folder`: SLURM with `slurm` parameters, or the local one."""
    import submitit

    if local:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=timeout_min)
        return ex
    if shutil.which("sbatch") is None:
        raise UserError("--slurm: no SLURM here (sbatch not found): submit from the cluster's login node, or use --local")
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=MAX_REQUEUES)
    ex.update_parameters(**(slurm or {}))
    return ex


def job_record() -> dict[str, Any]:
    """`{"job": {...}}` for env.json when this process runs as a submitit job (SLURM or local), else `{}`."""
    import os

    executor_name = os.environ.get("SUBMITIT_EXECUTOR")
    if not executor_name:
        keys = {"SLURM_JOB_ID": "job_id", "SLURM_ARRAY_JOB_ID": "array_job_id", "SLURM_ARRAY_TASK_ID": "array_task_id"}
        found = {name: os.environ[var] for var, name in keys.items() if os.environ.get(var)}
        return {"job": {"scheduler": "slurm", **found}} if found else {}
    import submitit

    env = submitit.JobEnvironment()
    return {"job": {"scheduler": executor_name, "job_id": str(env.job_id), "hostname": env.hostname}}
