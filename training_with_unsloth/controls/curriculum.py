"""Curriculum state: which phase the run is in, the linear schedules' current values, and when to move on.

A phase overrides task parameters and advances when the success rate over its last `window` scored
batches reaches `threshold`; a linear schedule moves a numeric parameter from `start` to `end` over
training. `TrainSource` (in `train_source.py`) serves prompts from the task these parameters give.
Needs no torch or transformers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

import tasks as task_registry
from tasks.base import Task
from training_with_unsloth.config import AdvanceRule, CurriculumConfig, LinearSchedule
from training_with_unsloth.curriculum_rules import _is_int_field, _rounded, validate_curriculum

log = logging.getLogger(__name__)


class Curriculum:
    """Phases and linear schedules over one task; its state is saved with every trainer checkpoint."""

    def __init__(self, task_name: str, base_params: dict[str, Any], cfg: CurriculumConfig):
        self.cfg = cfg
        self.base_params = dict(base_params)
        self.phases = validate_curriculum(task_name, self.base_params, cfg)
        base = task_registry.get(task_name, **self.base_params)
        self._int_params = {s.param: _is_int_field(base, s.param) for s in cfg.linear}
        self.phase = 0
        self.progress = 0.0
        self.window: deque[float] = deque(maxlen=self._window_size(0))
        self.values: dict[str, Any] = {s.param: self._scheduled(s, 0.0) for s in cfg.linear}
        self.transitions: list[dict[str, Any]] = []

    def _scheduled(self, s: LinearSchedule, progress: float) -> Any:
        return _rounded(s.start + (s.end - s.start) * progress, self._int_params[s.param])

    def _window_size(self, phase: int) -> int:
        rule = self.phases[phase].advance
        return rule.window if rule else 1

    @property
    def rule(self) -> AdvanceRule | None:
        """The current phase's rule for moving on (None in the last phase or without phases)."""
        return self.phases[self.phase].advance

    def params_for(self, phase: int) -> dict[str, Any]:
        """The task parameters of ``phase`` at the current scheduled values."""
        return {**self.base_params, **self.phases[phase].params, **self.values}

    def counts(self, phase: int, replayed: bool) -> bool:
        """Whether a group served in ``phase`` counts toward the current phase's success window."""
        return self.rule is not None and not replayed and phase == self.phase

    def successes(self, task: Task, completions: Sequence[str], rows: Sequence[dict], totals: Sequence[float]) -> list[float]:
        """Per-completion successes of one group under the current rule: the checker's verdict, or reward >= min_reward."""
        rule = self.rule
        assert rule is not None
        if rule.success == "correct":
            return [float(task.is_correct(c, r)) for c, r in zip(completions, rows, strict=True)]
        return [float(t >= rule.min_reward) for t in totals]

    def record(self, successes: list[float], step: int) -> bool:
        """Add one scored batch's success rate to the window; True when the phase advanced."""
        self.window.append(sum(successes) / len(successes))
        rule = self.rule
        if rule is not None and len(self.window) == rule.window and self.phase + 1 < len(self.phases):
            rate = sum(self.window) / len(self.window)
            if rate >= rule.threshold:
                self._advance(step, rate)
                return True
        return False

    def _advance(self, step: int, rate: float) -> None:
        old = self.phase
        self.phase += 1
        self.window = deque(maxlen=self._window_size(self.phase))
        self.transitions.append({"step": int(step), "phase": self.phase, "success_rate": rate})
        log.info("curriculum: phase %d -> %d at step %d (success rate %.3f)", old, self.phase, step, rate)
        tqdm.write(
            f"[curriculum] phase {old} -> {self.phase} at step {step} (success rate {rate:.3f}): {self.phases[self.phase].params}"
        )

    def set_progress(self, progress: float) -> bool:
        """Move the linear schedules to ``progress`` (0..1); True when a scheduled value changed."""
        self.progress = progress
        values = {s.param: self._scheduled(s, progress) for s in self.cfg.linear}
        if values == self.values:
            return False
        self.values = values
        return True

    def log_into(self, train: dict[str, list[float]]) -> None:
        """This step's curriculum metrics, into TRL's metric lists."""
        if self.cfg.phases:
            train["curriculum/phase"].append(float(self.phase))
            if self.window:
                train["curriculum/success_rate"].append(sum(self.window) / len(self.window))
        for param, value in self.values.items():
            train[f"curriculum/{param}"].append(float(value))

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "progress": self.progress,
            "window": list(self.window),
            "values": dict(self.values),
            "transitions": list(self.transitions),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        phase = int(state.get("phase", 0))
        if phase >= len(self.phases):
            log.warning("curriculum: saved phase %d but only %d phases are configured; using the last", phase, len(self.phases))
            phase = len(self.phases) - 1
        self.phase = phase
        self.progress = float(state.get("progress", 0.0))
        self.window = deque(state.get("window", []), maxlen=self._window_size(phase))
        saved = state.get("values", {})
        self.values = {s.param: saved.get(s.param, self._scheduled(s, self.progress)) for s in self.cfg.linear}
        self.transitions = list(state.get("transitions", []))
