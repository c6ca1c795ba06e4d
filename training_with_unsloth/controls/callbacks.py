"""Research callbacks: metrics log, Pass@K schedule, adapter snapshots, the best adapter, live plots.

Each is a `ResearchCallback` (controls.py): a TrainerCallback bound to the trainer, some with checkpointed state.
Import after `backends.prepare()` (this module imports transformers).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import ProgressCallback

from training_with_unsloth import distributed
from training_with_unsloth.controls import ResearchCallback
from training_with_unsloth.errors import ConfigError, closest
from training_with_unsloth.evaluation import PassKEvaluator, seeded_evaluate
from training_with_unsloth.plots import plot_run
from training_with_unsloth.rundir import RunDir, atomic_write_json, temp_dir_beside
from training_with_unsloth.schedule import as_steps


def _timed(trainer: Any, phase: str) -> Any:
    """The trainer's phase timer around a callback's work (a no-op for a trainer without one)."""
    timer = getattr(trainer, "timer", None)
    return timer.phase(phase) if timer is not None else contextlib.nullcontext()


def _current_train_metrics(trainer: Any) -> dict[str, float]:
    """Means of the metrics TRL has gathered since its last log (this step's, with logging_steps 1)."""
    out = {}
    for key, values in getattr(trainer, "_metrics", {}).get("train", {}).items():
        valid = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
        if valid:
            out[key] = sum(valid) / len(valid)
    return out


class CompactProgress(ProgressCallback):
    """The progress bar, with one short line per log instead of the full metrics dict.

    Everything is still in `metrics.jsonl`; the line shows what a researcher watches.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not (state.is_world_process_zero and self.training_bar is not None and logs):
            return
        if "train_runtime" in logs:
            self.training_bar.write(
                f"done in {logs['train_runtime']:.0f}s ({logs['train_runtime'] / max(state.global_step, 1):.1f} s/step)"
            )
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        if "reward" in logs:
            per = [f"{k.split('/')[1]} {v:.3g}" for k, v in logs.items() if k.startswith("rewards/") and k.endswith("/mean")]
            parts.append(f"reward {logs['reward']:.3g}" + (f" ({', '.join(per)})" if per else ""))
        for key, label in (("kl", "kl"), ("entropy", "entropy"), ("completions/mean_length", "len"), ("step_time", "s/step")):
            if isinstance(logs.get(key), int | float):
                parts.append(f"{label} {logs[key]:.3g}")
        self.training_bar.write("  ".join(parts))


class MetricsLogger(ResearchCallback):
    """Appends every trainer log to `metrics.jsonl` (kind `train`, or `summary` for the end-of-run totals)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        kind = "summary" if "train_runtime" in logs else "train"
        self.run.append_metrics({"step": state.global_step, "kind": kind, "time": time.time(), **logs, **_gpu_memory()})


def _gpu_memory() -> dict[str, float]:
    """Peak and reserved CUDA memory in GiB since the start (what decides whether a run fits a 16 GB card)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    gib = 1024**3
    return {
        "gpu/max_allocated_gib": torch.cuda.max_memory_allocated() / gib,
        "gpu/max_reserved_gib": torch.cuda.max_memory_reserved() / gib,
    }


class TaskProgress(ResearchCallback):
    """Tells the task how far training is (`global_step / max_steps`), for prompt schedules like `mix_oneshot`.

    Set at the start (also on resume, from the restored step) and after every optimizer step; the
    trainer may already hold the next batch by then, so a schedule lags by at most a step or two.
    """

    def __init__(self, task: Any):
        self.task = task

    def _update(self, state) -> None:
        self.task.set_progress(min(1.0, state.global_step / max(state.max_steps, 1)))

    def on_train_begin(self, args, state, control, **kwargs):
        self._update(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._update(state)


class PassKCallback(ResearchCallback):
    """Pass@K before the first update, on the schedule, and at the end of training."""

    def __init__(self, evaluator: PassKEvaluator, steps: Iterable[int], run: RunDir, seed: int):
        self.evaluator = evaluator
        self.steps = as_steps(steps)
        self.run = run
        self.seed = seed
        self.done: set[int] = set()
        self.latest: dict[str, float] = {}

    def _evaluate(self, step: int) -> None:
        # Evaluation draws from its own seeded RNG, so it neither perturbs nor depends on training's.
        with _timed(self.trainer, "eval"):
            metrics = seeded_evaluate(self.evaluator, self.trainer, step, self.seed)
        self.done.add(step)
        self.latest = {"step": step, **metrics}
        if not distributed.is_main():  # every process evaluated its share and holds the gathered result
            return
        self.run.append_metrics({"step": step, "kind": "eval", "time": time.time(), **metrics})
        _wandb_log(metrics, step)
        ks = " ".join(
            f"{k.removeprefix('eval/')}={v:.3f}" for k, v in metrics.items() if "pass@" in k and isinstance(v, int | float)
        )
        tqdm.write(f"[eval] step {step}: {ks} reward={metrics['eval/reward']:.3f} ({metrics['eval/seconds']:.0f}s)")

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0 and 0 in self.steps:
            self._evaluate(0)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps and state.global_step not in self.done:
            self._evaluate(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if self.steps and state.global_step not in self.done:
            self._evaluate(state.global_step)


def _wandb_log(metrics: dict[str, Any], step: int) -> None:
    """Log to an active wandb run; a `[low, high]` interval (`<key>_ci`) goes as `<key>_ci_low` and `<key>_ci_high`."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        flat: dict[str, Any] = {}
        for key, value in metrics.items():
            if isinstance(value, list | tuple) and len(value) == 2:
                flat[f"{key}_low"], flat[f"{key}_high"] = value
            else:
                flat[key] = value
        wandb.log({**flat, "train/global_step": step})


def save_adapter(trainer: Any, final: Path, meta: dict[str, Any]) -> Path:
    """Save the trainer's LoRA adapter and `meta.json` to `final`, atomically.

    Written to a temporary directory beside `final`, then renamed over it; an existing `final` (a
    resumed run redoing a step, or a new best) is swapped out and removed, so readers see either
    the old directory or the new one, never half of one.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(final)
    try:
        trainer.model.save_pretrained(tmp, selected_adapters=["default"])
        atomic_write_json(tmp / "meta.json", meta)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


class AdapterCheckpoints(ResearchCallback):
    """Adapter-only snapshots `checkpoints/adapter-<step>/` with `meta.json`, written atomically."""

    def __init__(self, run: RunDir, steps: Iterable[int], passk: PassKCallback | None = None):
        self.run = run
        self.steps = as_steps(steps)
        self.passk = passk
        self.start = time.time()
        self.saved: set[int] = set()

    def save(self, step: int) -> Path:
        meta = {
            "step": step,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds_since_start": time.time() - self.start,
            "train_metrics": _current_train_metrics(self.trainer),
            "latest_eval": self.passk.latest if self.passk else {},
        }
        with _timed(self.trainer, "checkpoint"):
            final = save_adapter(self.trainer, self.run.adapter_dir(step), meta)
        self.saved.add(step)
        return final

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps and state.is_world_process_zero:
            self.save(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step > 0 and state.global_step not in self.saved and state.is_world_process_zero:
            self.save(state.global_step)


class UnknownMetricError(ConfigError, ValueError):
    """`checkpoints.best` names a metric the evaluation does not report (a one-line user error)."""


class BestCheckpoint(ResearchCallback):
    """Keeps `checkpoints/best/`: the adapter with the best value of one eval metric so far.

    Looks at `passk.latest` after every Pass@K evaluation, so register it after the PassKCallback (callbacks
    run in registration order within an event). The first evaluation counts as an improvement; a tie keeps
    the earlier adapter; a NaN value never improves. `meta.json` holds the step, the metric, its value,
    the mode and all eval metrics of that evaluation. The best value and step are saved with every trainer
    checkpoint (`state_key`), and so is a copy of the adapter (`save_to_checkpoint`), so a resumed run puts
    back the best of the steps it keeps and compares against it.
    """

    state_key = "best_checkpoint"

    def __init__(self, run: RunDir, metric: str, mode: str = "max", passk: PassKCallback | None = None):
        if mode not in ("max", "min"):
            raise ValueError(f"checkpoints.best_mode must be 'max' or 'min', got {mode!r}")
        self.run = run
        self.metric = metric
        self.mode = mode
        self.passk = passk
        self.start = time.time()
        self.best_value: float | None = None
        self.best_step: int | None = None
        self._seen: dict[str, Any] | None = None  # the PassK result last looked at (a new dict per evaluation)

    @property
    def path(self) -> Path:
        return self.run.checkpoints / "best"

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def _check(self, state) -> None:
        latest = self.passk.latest if self.passk is not None else None
        if not latest or latest is self._seen:
            return
        self._seen = latest
        if self.metric not in latest:
            available = sorted(k for k in latest if k.startswith("eval/") and isinstance(latest[k], int | float))
            near = closest(self.metric, available)
            hint = f"did you mean '{near}'? " if near else ""
            raise UnknownMetricError(
                f"checkpoints.best: the evaluation reports no metric '{self.metric}': {hint}available: {', '.join(available)}"
            )
        value = latest[self.metric]
        if not isinstance(value, int | float) or not self.improves(float(value)):
            return
        step = int(latest.get("step", state.global_step))
        if state.is_world_process_zero:
            meta = {
                "step": step,
                "metric": self.metric,
                "value": float(value),
                "mode": self.mode,
                "previous_best": {"step": self.best_step, "value": self.best_value},
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds_since_start": time.time() - self.start,
                "eval": {k: v for k, v in latest.items() if k != "step"},
                "train_metrics": _current_train_metrics(self.trainer) if step > 0 else {},
            }
            with _timed(self.trainer, "checkpoint"):
                save_adapter(self.trainer, self.path, meta)
            tqdm.write(f"[best] step {step}: {self.metric}={float(value):.4g} -> {self.path}")
        self.best_value, self.best_step = float(value), step

    def on_train_begin(self, args, state, control, **kwargs):
        meta = self.path / "meta.json"
        if state.global_step > 0 and state.is_world_process_zero and meta.is_file():
            try:
                kept = json.loads(meta.read_text()).get("step")
            except (OSError, ValueError):
                kept = None
            if kept is not None and kept != self.best_step and kept > state.global_step:
                bar = f"{self.metric}={self.best_value:.4g} (step {self.best_step})" if self.best_value is not None else "nothing"
                tqdm.write(
                    f"[best] {self.path} holds step {kept}, past the resumed step {state.global_step}: "
                    f"the next evaluation that beats {bar} replaces it"
                )
        self._check(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._check(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._check(state)

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.best_value, "step": self.best_step}

    def save_to_checkpoint(self, folder: Path) -> None:
        """Keep the current best adapter in a trainer checkpoint being saved (hard links: no extra disk space)."""
        from training_with_unsloth.resume import keep_best_copy

        keep_best_copy(self.path, folder)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the best so far, unless it was kept for another metric or mode (then the next evaluation wins)."""
        if state.get("metric") == self.metric and state.get("mode") == self.mode:
            self.best_value = None if state.get("value") is None else float(state["value"])
            self.best_step = state.get("step")


class LivePlots(ResearchCallback):
    """Redraws `plots/` every `every` steps and at the end."""

    def __init__(self, run: RunDir, every: int):
        self.run = run
        self.every = max(every, 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            with _timed(self.trainer, "plots"):
                plot_run(self.run)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            with _timed(self.trainer, "plots"):
                plot_run(self.run)


class TimingLog(ResearchCallback):
    """`time/<phase>` in every train log: seconds per step in each phase since the previous log (timing.py),
    `time/other` (what no phase claimed: data loading, logging, callbacks) and `time/step` (their sum, the wall
    time per step). Registered first, so the metrics log and the progress line see the keys."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.last_step = 0
        self.began: tuple[float, int, int, dict[str, float]] | None = None  # time, step, timer calls and totals

    def on_train_begin(self, args, state, control, **kwargs):
        timer = self.trainer.timer
        self.last, self.last_step = time.perf_counter(), state.global_step
        timer.take()  # what happened before training (a resumed run's loading) is not a step
        self.began = (self.last, state.global_step, timer.calls, dict(timer.total))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.timer.start("optimizer")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.timer.stop("optimizer")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "train_runtime" in logs or self.last is None:
            return
        now = time.perf_counter()
        steps = max(state.global_step - self.last_step, 1)
        wall, seconds = now - self.last, self.trainer.timer.take()
        self.last, self.last_step = now, state.global_step
        for name, value in seconds.items():
            logs[f"time/{name}"] = value / steps
        logs["time/other"] = max(wall - sum(seconds.values()), 0.0) / steps
        logs["time/step"] = wall / steps


class TimingSummary(ResearchCallback):
    """At the end of training: `timing.json` (seconds, shares and seconds per step of every phase over the
    whole run, and the timer's own measured cost) and one console line with the shares. Registered last, so
    the final evaluation, adapters and plots are in it."""

    def __init__(self, run: RunDir, log: TimingLog):
        self.run = run
        self.log = log  # whose on_train_begin, the first of all callbacks, marked the start
        self.per_phase_cost = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        from training_with_unsloth.timing import overhead_per_phase

        self.per_phase_cost = overhead_per_phase()

    def on_train_end(self, args, state, control, **kwargs):
        from training_with_unsloth.timing import PHASES, shares_line

        if self.log.began is None or not state.is_world_process_zero:
            return
        start, start_step, start_calls, start_total = self.log.began
        timer = self.trainer.timer
        wall = time.perf_counter() - start
        seconds = {k: v - start_total.get(k, 0.0) for k, v in timer.total.items()}
        seconds["other"] = max(wall - sum(seconds.values()), 0.0)
        steps = max(state.global_step - start_step, 1)
        calls = timer.calls - start_calls
        order = [p for p in (*PHASES, "other") if p in seconds]
        record = {
            "wall_s": wall,
            "steps": steps,
            "seconds": {p: seconds[p] for p in order},
            "share": {p: seconds[p] / wall for p in order} if wall > 0 else {},
            "per_step_s": {p: seconds[p] / steps for p in order},
            "timer": {
                "phases_timed": calls,
                "seconds_per_phase": self.per_phase_cost,
                "overhead_s": calls * self.per_phase_cost,
                "overhead_share": calls * self.per_phase_cost / wall if wall > 0 else 0.0,
            },
            "note": "host wall clock, exclusive per phase; on a GPU, queued work counts in the phase that waits for it",
        }
        atomic_write_json(self.run.path / "timing.json", record)
        where = self.run.path / "timing.json"
        tqdm.write(f"time: {shares_line(seconds, wall)} of {wall:.0f}s ({wall / steps:.1f} s/step); {where}")
