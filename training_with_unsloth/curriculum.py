"""Where training prompts come from when they change during training: curriculum phases, linear
parameter schedules and prompt replay.

`build_train_source` returns the dataset to train on and the `TrainSource` callback that steers it.
The dataset holds only an ``_index`` column; its rows are made when the data loader fetches them
(`Dataset.set_transform`), from the *current* state of the source:

* the current curriculum phase's task (``tasks.get(name, **{**task params, **phase params,
  **scheduled values}})``), its train set built with the run seed and cached;
* with replay on, a share ``mix`` of indices is served from a FIFO buffer of prompts whose group
  had reward variance; with ``drop_solved`` prompts whose whole group was correct are not served
  again.

TRL's sampler asks for each prompt index ``num_generations`` times in one fetch of a generation
batch, so the row served for an index is a deterministic function of ``(index, seed, version)``;
``version`` changes only in callbacks (after a batch is scored, after an optimizer step), never
during a fetch. Data loading must therefore stay in the training process (``dataloader_num_workers
0``). The data loader fetches one batch ahead, so a change of phase or schedule reaches training one
generation batch later; rows carry their ``curriculum_phase`` so that such a late batch is not
counted toward the new phase's success window.

Every served row has the task's columns plus ``replayed`` (bool) and ``curriculum_phase`` (int).
Problems of the run's eval set (built from the base task parameters) are never served for
training, whatever a phase's parameters.

Single process only: the state follows this process's share of each batch.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
from tqdm.auto import tqdm
from transformers import TrainerCallback

import tasks as task_registry
from tasks.base import Task

from .config import CurriculumConfig, LinearSchedule, ReplayConfig
from .curriculum_rules import _is_int_field, _rounded, validate_curriculum
from .errors import ConfigError
from .scored_batch import ScoredBatch

log = logging.getLogger(__name__)

INDEX_COLUMN = "_index"
REPLAYED = "replayed"
PHASE = "curriculum_phase"
_CACHE_SIZE = 16  # built train sets kept (the current one is never evicted)
_MASK = (1 << 64) - 1


# --------------------------------------------------------------------------- deterministic choices


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _hash(*parts: int) -> int:
    """A 64-bit hash of integers (stable across processes and Python versions, unlike ``hash``)."""
    h = 0x51ED270B
    for part in parts:
        h = _splitmix(h ^ _splitmix(part & _MASK))
    return h


_COIN, _PICK = 1, 2


# --------------------------------------------------------------------------- one built train set


@dataclass
class _Source:
    """One train set: a phase's task at given scheduled values."""

    key: tuple
    phase: int
    params: dict[str, Any]
    task: Task
    ds: datasets.Dataset
    ids: list[str]
    blocked: set[int]  # positions whose problem is in the run's eval set
    alive_rev: int = -1
    alive: list[int] = field(default_factory=list)


def _problem_ids(ds: datasets.Dataset) -> list[str]:
    raw = ds.with_format(None)
    if "problem_id" in raw.column_names:
        return [str(x) for x in raw["problem_id"]]
    return [f"#{i}" for i in range(len(ds))]  # no canonical id: rows count as distinct problems


def _eval_ids(eval_ds: datasets.Dataset) -> set[str]:
    """Problem ids of the eval set; a per-condition suffix (``<id>/<condition>``) is also stripped."""
    raw = eval_ds.with_format(None)
    if "problem_id" not in raw.column_names:
        return set()
    ids = [str(x) for x in raw["problem_id"]]
    out = set(ids)
    if "condition" in raw.column_names:
        for pid, cond in zip(ids, raw["condition"], strict=True):
            if cond is not None and pid.endswith(f"/{cond}"):
                out.add(pid[: -len(cond) - 1])
    return out


# --------------------------------------------------------------------------- the callback


class TrainSource(TrainerCallback):
    """Curriculum phases, linear schedules and prompt replay behind one fetch-time dataset.

    Register it as a research callback (it binds to the trainer, reads every scored batch, saves its
    state in checkpoints) and train on the dataset `build_train_source` returned with it. It also
    tells its own tasks the training progress (`set_progress`), so the generic `TaskProgress`
    callback is not needed for them.
    """

    state_key = "train_source"

    def __init__(
        self,
        task_name: str,
        base_params: dict[str, Any],
        curriculum: CurriculumConfig,
        replay: ReplayConfig,
        *,
        seed: int,
        max_steps: int,
        eval_ds: datasets.Dataset | None = None,
    ):
        self.task_name = task_name
        self.base_params = dict(base_params)
        self.curriculum = curriculum
        self.replay = replay
        self.seed = int(seed)
        self.max_steps = max(int(max_steps), 1)
        self.trainer: Any = None
        self.phases = validate_curriculum(task_name, self.base_params, curriculum)
        base = task_registry.get(task_name, **self.base_params)
        self._eval_ids = _eval_ids(eval_ds if eval_ds is not None else base.build(self.seed)[1])
        self._int_params = {s.param: _is_int_field(base, s.param) for s in curriculum.linear}

        # State (saved in checkpoints).
        self.version = 0
        self.phase = 0
        self.progress = 0.0
        self.window: deque[float] = deque(maxlen=self._window_size(0))
        self.values: dict[str, Any] = {s.param: self._scheduled(s, 0.0) for s in curriculum.linear}
        self.buffer: deque[dict[str, Any]] = deque()
        self.buffer_ids: set[str] = set()
        self.dropped: set[str] = set()
        self.transitions: list[dict[str, Any]] = []

        self._dropped_rev = 0
        self._cache: OrderedDict[tuple, _Source] = OrderedDict()
        self._phase_tasks: dict[int, Task] = {}
        self._source = self._activate()
        self._step_stats = self._empty_stats()

    # ------------------------------------------------------------------ configuration

    def _scheduled(self, s: LinearSchedule, progress: float) -> Any:
        return _rounded(s.start + (s.end - s.start) * progress, self._int_params[s.param])

    def _window_size(self, phase: int) -> int:
        rule = self.phases[phase].advance
        return rule.window if rule else 1

    def params_for(self, phase: int) -> dict[str, Any]:
        """The task parameters of ``phase`` at the current scheduled values."""
        return {**self.base_params, **self.phases[phase].params, **self.values}

    # ------------------------------------------------------------------ sources

    def _activate(self) -> _Source:
        """Make the current (phase, values) train set current, building it if needed."""
        key = (self.phase, tuple(sorted(self.values.items())))
        source = self._cache.get(key)
        if source is None:
            params = self.params_for(self.phase)
            task = task_registry.get(self.task_name, **params)
            train, _ = task.build(self.seed)
            ids = _problem_ids(train)
            blocked = {i for i, pid in enumerate(ids) if pid in self._eval_ids}
            if len(blocked) == len(ids):
                raise ConfigError(
                    f"curriculum phase {self.phase} ({params}): every training problem is in the eval set: "
                    "widen the phase's ranges"
                )
            if blocked:
                log.info("curriculum phase %d: %d training rows are eval problems and are skipped", self.phase, len(blocked))
            source = _Source(key, self.phase, params, task, train, ids, blocked)
            self._cache[key] = source
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        self._phase_tasks[self.phase] = source.task
        source.task.set_progress(self.progress)
        self._source = source
        return source

    def _alive(self, source: _Source) -> list[int]:
        if source.alive_rev != self._dropped_rev:
            dropped = self.dropped
            source.alive = [i for i, pid in enumerate(source.ids) if i not in source.blocked and pid not in dropped]
            source.alive_rev = self._dropped_rev
        return source.alive

    def task_for(self, phase: int) -> Task:
        """The task object that judges rows of ``phase`` (the one last used to build it)."""
        if phase not in self._phase_tasks:
            self._phase_tasks[phase] = task_registry.get(self.task_name, **self.params_for(min(phase, len(self.phases) - 1)))
        return self._phase_tasks[phase]

    @property
    def task(self) -> Task:
        """The current phase's task."""
        return self._source.task

    @property
    def train_set(self) -> datasets.Dataset:
        """The current phase's train set (the rows fresh prompts come from)."""
        return self._source.ds

    @property
    def uses_progress(self) -> bool:
        """Fetches read this object's state: data loading must stay in the training process."""
        return True

    # ------------------------------------------------------------------ fetching

    def rows_for(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """The rows served for dataset ``indices`` now (a pure function of index, seed and state)."""
        source = self._source
        alive = self._alive(source)
        replay_on = self.replay.enabled and len(self.buffer) > 0
        out: list[dict[str, Any] | None] = [None] * len(indices)
        fresh: list[tuple[int, int]] = []  # (slot, position in the train set)
        for slot, index in enumerate(indices):
            i = int(index)
            take_buffer = replay_on and self._uniform(i, _COIN) < self.replay.mix
            if not take_buffer and not alive and replay_on:
                take_buffer = True  # every fresh problem is dropped: serve from the buffer
            if take_buffer:
                row = self.buffer[_hash(self.seed, self.version, i, _PICK) % len(self.buffer)]
                out[slot] = {**copy.deepcopy(row), REPLAYED: True}
            else:
                fresh.append((slot, alive[i % len(alive)] if alive else i % len(source.ds)))
        if fresh:
            fetched = source.ds.__getitems__([pos for _, pos in fresh])
            for (slot, _), row in zip(fresh, fetched, strict=True):
                out[slot] = {**row, REPLAYED: False, PHASE: source.phase}
        return out  # type: ignore[return-value]

    def _uniform(self, i: int, salt: int) -> float:
        return _hash(self.seed, self.version, i, salt) / 2.0**64

    def _transform(self, batch: dict[str, list]) -> dict[str, list]:
        rows = self.rows_for(batch[INDEX_COLUMN])
        keys: dict[str, None] = {}
        for row in rows:
            keys.update(dict.fromkeys(row))
        return {k: [row.get(k) for row in rows] for k in keys}

    def _bump(self) -> None:
        self.version += 1

    # ------------------------------------------------------------------ trainer hooks

    def bind(self, trainer: Any) -> None:
        self.trainer = trainer
        args = getattr(trainer, "args", None)
        if args is not None and getattr(args, "dataloader_num_workers", 0):
            raise ConfigError(
                "curriculum/replay choose training prompts when they are fetched, which data-loader worker "
                "processes cannot see: set trainer.dataloader_num_workers: 0"
            )
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
            raise ConfigError("curriculum/replay support a single training process only")

    def on_scored_batch(self, batch: ScoredBatch) -> None:
        total = batch.total
        rule = self.phases[self.phase].advance
        successes: list[float] = []
        changed = False
        stats = self._step_stats
        for group in batch.groups():
            row = batch.rows[group.start]
            replayed = bool(row.get(REPLAYED, False))
            phase = int(row.get(PHASE, self.phase) or 0)
            zero = batch.zero_variance(group)
            kind = "replayed" if replayed else "fresh"
            stats[f"{kind}_groups"] += 1
            stats[f"{kind}_zero"] += int(zero)
            if rule is not None and not replayed and phase == self.phase:
                if rule.success == "correct":
                    task = self.task_for(phase)
                    successes += [float(task.is_correct(batch.completions[i], batch.rows[i])) for i in group]
                else:
                    successes += [float(total[i] >= rule.min_reward) for i in group]
            if not self.replay.enabled:
                continue
            pid = str(row.get("problem_id", ""))
            if self.replay.drop_solved and pid and pid not in self.dropped:
                task = self.task_for(phase)
                if all(task.is_correct(batch.completions[i], batch.rows[i]) for i in group):
                    self._drop(pid)
                    changed = True
                    continue
            if not zero and pid and pid not in self.buffer_ids and pid not in self.dropped:
                self._push(row)
                changed = True
        if successes:
            self.window.append(sum(successes) / len(successes))
            changed = True
            if rule is not None and len(self.window) == rule.window and self.phase + 1 < len(self.phases):
                rate = sum(self.window) / len(self.window)
                if rate >= rule.threshold:
                    self._advance(batch.step, rate)
        if changed:
            self._bump()

    def _push(self, row: dict[str, Any]) -> None:
        stored = {k: copy.deepcopy(v) for k, v in row.items() if k != REPLAYED}
        self.buffer.append(stored)
        self.buffer_ids.add(str(stored.get("problem_id", "")))
        while len(self.buffer) > self.replay.capacity:
            old = self.buffer.popleft()
            self.buffer_ids.discard(str(old.get("problem_id", "")))

    def _drop(self, pid: str) -> None:
        self.dropped.add(pid)
        self._dropped_rev += 1
        if pid in self.buffer_ids:
            self.buffer = deque(r for r in self.buffer if str(r.get("problem_id", "")) != pid)
            self.buffer_ids.discard(pid)

    def _advance(self, step: int, rate: float) -> None:
        old = self.phase
        self.phase += 1
        self.window = deque(maxlen=self._window_size(self.phase))
        self.transitions.append({"step": int(step), "phase": self.phase, "success_rate": rate})
        log.info("curriculum: phase %d -> %d at step %d (success rate %.3f)", old, self.phase, step, rate)
        tqdm.write(f"[curriculum] phase {old} -> {self.phase} at step {step} (success rate {rate:.3f}): {self.phases[self.phase].params}")
        self._activate()

    def _set_progress(self, state: Any) -> None:
        max_steps = getattr(state, "max_steps", 0) or self.max_steps
        self.progress = min(1.0, max(0.0, state.global_step / max(max_steps, 1)))
        values = {s.param: self._scheduled(s, self.progress) for s in self.curriculum.linear}
        if values != self.values:
            self.values = values
            self._activate()
            self._bump()
        else:
            self._source.task.set_progress(self.progress)

    def on_train_begin(self, args, state, control, **kwargs):
        self._set_progress(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._set_progress(state)
        self._log_step()
        self._step_stats = self._empty_stats()

    @staticmethod
    def _empty_stats() -> dict[str, int]:
        return {"fresh_groups": 0, "fresh_zero": 0, "replayed_groups": 0, "replayed_zero": 0}

    def _log_step(self) -> None:
        metrics = getattr(self.trainer, "_metrics", None)
        if metrics is None:
            return
        train = metrics["train"]
        if self.curriculum.phases:
            train["curriculum/phase"].append(float(self.phase))
            if self.window:
                train["curriculum/success_rate"].append(sum(self.window) / len(self.window))
        for param, value in self.values.items():
            train[f"curriculum/{param}"].append(float(value))
        if self.replay.enabled:
            s = self._step_stats
            if s["fresh_groups"]:
                train["replay/zero_std_fresh"].append(s["fresh_zero"] / s["fresh_groups"])
            if s["replayed_groups"]:
                train["replay/zero_std_replayed"].append(s["replayed_zero"] / s["replayed_groups"])
            if s["fresh_groups"] + s["replayed_groups"]:
                train["replay/replayed_frac"].append(s["replayed_groups"] / (s["fresh_groups"] + s["replayed_groups"]))
            train["replay/buffer_size"].append(float(len(self.buffer)))
            train["replay/dropped"].append(float(len(self.dropped)))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "phase": self.phase,
            "progress": self.progress,
            "window": list(self.window),
            "values": dict(self.values),
            "buffer": [copy.deepcopy(r) for r in self.buffer],
            "dropped": sorted(self.dropped),
            "transitions": list(self.transitions),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        phase = int(state.get("phase", 0))
        if phase >= len(self.phases):
            log.warning("curriculum: saved phase %d but only %d phases are configured; using the last", phase, len(self.phases))
            phase = len(self.phases) - 1
        self.phase = phase
        self.version = int(state.get("version", 0))
        self.progress = float(state.get("progress", 0.0))
        self.window = deque(state.get("window", []), maxlen=self._window_size(phase))
        saved = state.get("values", {})
        self.values = {s.param: saved.get(s.param, self._scheduled(s, self.progress)) for s in self.curriculum.linear}
        self.buffer = deque()
        self.buffer_ids = set()
        for row in state.get("buffer", []):
            self._push(row)
        self.dropped = set(state.get("dropped", []))
        self._dropped_rev += 1
        self.transitions = list(state.get("transitions", []))
        self._activate()


# --------------------------------------------------------------------------- entry point


def build_train_source(
    task_name: str,
    base_params: dict[str, Any],
    curriculum: CurriculumConfig,
    replay: ReplayConfig,
    *,
    seed: int,
    max_steps: int,
    eval_ds: datasets.Dataset | None = None,
) -> tuple[datasets.Dataset, TrainSource]:
    """The dataset to train on and the callback that decides, at fetch time, what its rows are.

    The dataset has one ``_index`` column; its length is the largest train set among the phases
    (each phase's index ``i`` serves row ``i mod len`` of its own train set, skipping dropped and
    eval problems). ``eval_ds`` is the run's eval set when already built (else it is built here).
    """
    source = TrainSource(task_name, base_params, curriculum, replay, seed=seed, max_steps=max_steps, eval_ds=eval_ds)
    length = len(source.train_set)
    for k in range(len(source.phases)):
        size = getattr(task_registry.get(task_name, **source.params_for(k)).params, "train_size", None)
        if isinstance(size, int):
            length = max(length, size)
    ds = datasets.Dataset.from_dict({INDEX_COLUMN: list(range(length))})
    ds.set_transform(source._transform)
    return ds, source
