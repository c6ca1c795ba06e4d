"""Research callbacks: metrics log, Pass@K schedule, adapter snapshots, live plots.

Each is a `transformers.TrainerCallback`; those that need the trainer get it through `bind()`.
Import after `backends.prepare()` (this module imports transformers).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import ProgressCallback, TrainerCallback

from .evaluation import PassKEvaluator
from .plots import plot_run
from .rundir import RunDir, atomic_write_json


class _Bound(TrainerCallback):
    trainer: Any = None

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer


def _current_train_metrics(trainer: Any) -> dict[str, float]:
    """Means of the metrics TRL has gathered since its last log (this step's, with logging_steps 1)."""
    out = {}
    for key, values in trainer._metrics["train"].items():
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
            self.training_bar.write(f"done in {logs['train_runtime']:.0f}s ({logs['train_runtime'] / max(state.global_step, 1):.1f} s/step)")
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        if "reward" in logs:
            per = [f"{k.split('/')[1]} {v:.3g}" for k, v in logs.items() if k.startswith("rewards/") and k.endswith("/mean")]
            parts.append(f"reward {logs['reward']:.3g}" + (f" ({', '.join(per)})" if per else ""))
        for key, label in (("kl", "kl"), ("entropy", "entropy"), ("completions/mean_length", "len"), ("step_time", "s/step")):
            if isinstance(logs.get(key), int | float):
                parts.append(f"{label} {logs[key]:.3g}")
        self.training_bar.write("  ".join(parts))


class MetricsLogger(_Bound):
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


class TaskProgress(TrainerCallback):
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


class PassKCallback(_Bound):
    """Pass@K before the first update, on the schedule, and at the end of training."""

    def __init__(self, evaluator: PassKEvaluator, steps: list[int], run: RunDir, seed: int):
        self.evaluator = evaluator
        self.steps = set(steps)
        self.run = run
        self.seed = seed
        self.done: set[int] = set()
        self.latest: dict[str, float] = {}

    def _evaluate(self, step: int) -> None:
        import torch

        # Evaluation draws from its own seeded RNG, so it neither perturbs nor depends on training's.
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            torch.manual_seed(self.seed * 1_000_003 + step)
            metrics = self.evaluator.evaluate(self.trainer, step)
        self.done.add(step)
        self.latest = {"step": step, **metrics}
        self.run.append_metrics({"step": step, "kind": "eval", "time": time.time(), **metrics})
        _wandb_log(metrics, step)
        ks = " ".join(f"{k.removeprefix('eval/')}={v:.3f}" for k, v in metrics.items() if "pass@" in k)
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


def _wandb_log(metrics: dict[str, float], step: int) -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.log({**metrics, "train/global_step": step})


class AdapterCheckpoints(_Bound):
    """Adapter-only snapshots `checkpoints/adapter-<step>/` with `meta.json`, written atomically."""

    def __init__(self, run: RunDir, steps: list[int], passk: PassKCallback | None = None):
        self.run = run
        self.steps = set(steps)
        self.passk = passk
        self.start = time.time()
        self.saved: set[int] = set()

    def save(self, step: int) -> Path:
        final = self.run.adapter_dir(step)
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".adapter-{step}.", dir=self.run.checkpoints))
        try:
            self.trainer.model.save_pretrained(tmp, selected_adapters=["default"])
            meta = {
                "step": step,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "seconds_since_start": time.time() - self.start,
                "train_metrics": _current_train_metrics(self.trainer),
                "latest_eval": self.passk.latest if self.passk else {},
            }
            atomic_write_json(tmp / "meta.json", meta)
            if final.exists():  # a resumed run redoing this step: swap the old snapshot out
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
        self.saved.add(step)
        return final

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps and state.is_world_process_zero:
            self.save(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        if state.global_step > 0 and state.global_step not in self.saved and state.is_world_process_zero:
            self.save(state.global_step)


class LivePlots(_Bound):
    """Redraws `plots/` every `every` steps and at the end."""

    def __init__(self, run: RunDir, every: int):
        self.run = run
        self.every = max(every, 1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and state.global_step % self.every == 0:
            plot_run(self.run)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_run(self.run)
