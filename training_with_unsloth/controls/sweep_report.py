"""`SweepReport`: a sweep trial's evaluations reported to its Optuna study, and training stopped when pruned.

`experiments/sweep.py` starts a trial's first run with `GRPO_SWEEP_TRIAL` set (the study's storage, its
name, the trial id, the metric and the pruner); assembly then adds this callback after Pass@K. After each
evaluation it calls `trial.report(value, step)`; when the pruner says so, it writes `pruned.json` in the run
directory and stops training at the end of the step (the run still ends cleanly: final eval, adapters, summary).
"""

from __future__ import annotations

import json
import os
from typing import Any

from training_with_unsloth.controls import ResearchCallback
from training_with_unsloth.rundir import RunDir, atomic_write_json
from training_with_unsloth.sweeps import PRUNED_FILE, REPORT_ENV


def from_environment(run: RunDir, passk: Any) -> SweepReport | None:
    """The callback for this process's run when a sweep started it (`GRPO_SWEEP_TRIAL`), else None."""
    text = os.environ.get(REPORT_ENV)
    if not text or passk is None:
        return None
    return SweepReport(run, passk, **json.loads(text))


class SweepReport(ResearchCallback):
    """Reports `metric` after every Pass@K evaluation to Optuna trial `trial_id` of `study` in `storage`."""

    def __init__(self, run: RunDir, passk: Any, *, storage: str, study: str, trial_id: int, metric: str, pruner: str):
        self.run, self.passk, self.metric = run, passk, metric
        self.storage, self.study_name, self.trial_id, self.pruner_name = storage, study, trial_id, pruner
        self._trial: Any = None
        self._seen: Any = None

    def trial(self) -> Any:
        if self._trial is None:
            import optuna

            from training_with_unsloth.sweeps import make_pruner

            study = optuna.load_study(study_name=self.study_name, storage=self.storage, pruner=make_pruner(self.pruner_name))
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def _check(self, state: Any, control: Any) -> None:
        latest = self.passk.latest
        if not latest or latest is self._seen or self.metric not in latest:
            return
        self._seen = latest
        if not state.is_world_process_zero:
            return
        trial = self.trial()
        trial.report(float(latest[self.metric]), int(latest.get("step", state.global_step)))
        if trial.should_prune():
            atomic_write_json(
                self.run.path / PRUNED_FILE,
                {"step": latest.get("step"), "metric": self.metric, "value": latest[self.metric], "pruner": self.pruner_name},
            )
            control.should_training_stop = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._check(state, control)

    def on_step_end(self, args, state, control, **kwargs):
        self._check(state, control)
