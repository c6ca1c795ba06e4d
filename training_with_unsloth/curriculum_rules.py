"""Curriculum checks that need no torch or transformers: `prepare()` runs them before a backend is chosen
(Unsloth must be imported before transformers), and `curriculum.TrainSource` uses them again."""

from __future__ import annotations

import math
import types
import typing
from typing import Any

import tasks as task_registry
from tasks.base import Task
from training_with_unsloth.config import CurriculumConfig, PhaseConfig
from training_with_unsloth.errors import ConfigError, unknown


def _field_types(task: Task, param: str) -> set[Any]:
    ann = type(task).Params.model_fields[param].annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return set(typing.get_args(ann))
    return {ann}


def _is_int_field(task: Task, param: str) -> bool:
    types_ = _field_types(task, param)
    return int in types_ and float not in types_


def _is_numeric_field(task: Task, param: str) -> bool:
    return bool(_field_types(task, param) & {int, float})


def _rounded(value: float, as_int: bool) -> int | float:
    """A scheduled value: rounded half up for an int parameter, else to 6 significant digits."""
    return math.floor(value + 0.5) if as_int else float(f"{value:.6g}")


def validate_curriculum(task_name: str, base_params: dict[str, Any], curriculum: CurriculumConfig) -> list[PhaseConfig]:
    """The phases to run (one implicit phase when none are given); a ConfigError for any invalid combination.

    ``task_name`` is what ``tasks.get`` takes: a registered name or ``package.module:Class``. Every phase
    must accept both ends of every linear schedule, so a bad value fails before training.
    """
    phases = list(curriculum.phases) or [PhaseConfig()]  # no phases: one implicit phase with the task's parameters
    for s in curriculum.linear:
        for k, phase in enumerate(phases):
            if s.param in phase.params:
                raise ConfigError(
                    f"curriculum: task parameter '{s.param}' is both scheduled linearly and set by "
                    f"curriculum.phases[{k}]: keep one"
                )
    probe = task_registry.get(task_name, **base_params)
    fields = type(probe).Params.model_fields
    for s in curriculum.linear:
        if s.param not in fields:
            raise unknown("task parameter", s.param, fields, where="curriculum.linear")
        if not _is_numeric_field(probe, s.param):
            raise ConfigError(f"curriculum.linear: task parameter '{s.param}' is not a number")
    # Every phase must accept both ends of every schedule (fails here, not hours into a run).
    for where, params in phase_parameter_sets(task_name, base_params, curriculum, phases):
        try:
            task_registry.get(task_name, **params)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return phases


def phase_parameter_sets(
    task_name: str, base_params: dict[str, Any], curriculum: CurriculumConfig, phases: list[PhaseConfig] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(label, task parameters) of every phase at both ends of every linear schedule (task_name as in tasks.get)."""
    phases = phases if phases is not None else (list(curriculum.phases) or [PhaseConfig()])
    probe = task_registry.get(task_name, **base_params)
    ends: list[dict[str, Any]] = [{}]
    if curriculum.linear:
        ends = [
            {s.param: _rounded(getattr(s, which), _is_int_field(probe, s.param)) for s in curriculum.linear}
            for which in ("start", "end")
        ]
    out = []
    for k, phase in enumerate(phases):
        for values in ends:
            where = f"curriculum.phases[{k}]" if curriculum.phases else "curriculum"
            out.append((where + (f" (with {values})" if values else ""), {**base_params, **phase.params, **values}))
    return out
