"""Where training prompts come from when they change during training: a fetch-time dataset steered by
the curriculum (`curriculum.py`) and prompt replay (`replay.py`).

`build_train_source` returns the dataset to train on and the `TrainSource` control that steers it.
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
0``, a config rule). The data loader fetches one batch ahead, so a change of phase or schedule
reaches training one generation batch later; rows carry their ``curriculum_phase`` so that such a
late batch is not counted toward the new phase's success window.

Every served row has the task's columns plus ``replayed`` (bool) and ``curriculum_phase`` (int).
Problems of the run's eval set (built from the base task parameters) are never served for
training, whatever a phase's parameters.

Single process only: the state follows this process's share of each batch.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

import tasks as task_registry
from tasks.base import Task
from training_with_unsloth.config import CurriculumConfig, ReplayConfig
from training_with_unsloth.controls import ResearchCallback
from training_with_unsloth.controls.curriculum import Curriculum
from training_with_unsloth.controls.replay import REPLAYED, Replay
from training_with_unsloth.controls.scored_batch import ScoredBatch
from training_with_unsloth.errors import ConfigError

log = logging.getLogger(__name__)

INDEX_COLUMN = "_index"
PHASE = "curriculum_phase"
__all__ = ["INDEX_COLUMN", "PHASE", "REPLAYED", "TrainSource", "build_train_source"]
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


# --------------------------------------------------------------------------- the control


class TrainSource(ResearchCallback):
    """Curriculum phases, linear schedules and prompt replay behind one fetch-time dataset.

    Register it as a research callback and train on the dataset `build_train_source` returned with
    it. It also tells its own tasks the training progress (`set_progress`), so the generic
    `TaskProgress` control is not needed for them.
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
        self.seed = int(seed)
        self.max_steps = max(int(max_steps), 1)
        self.curriculum = Curriculum(task_name, base_params, curriculum)
        self.replay = Replay(replay)
        if eval_ds is None:
            eval_ds = task_registry.get(task_name, **self.curriculum.base_params).build(self.seed)[1]
        self._eval_ids = _eval_ids(eval_ds)
        self.version = 0  # changes whenever what a fetch serves changes (saved in checkpoints)
        self._cache: OrderedDict[tuple, _Source] = OrderedDict()
        self._phase_tasks: dict[int, Task] = {}
        self._source = self._activate()

    # ------------------------------------------------------------------ the state, as read by researchers

    @property
    def phases(self) -> list:
        return self.curriculum.phases

    @property
    def phase(self) -> int:
        return self.curriculum.phase

    @property
    def values(self) -> dict[str, Any]:
        return self.curriculum.values

    @property
    def window(self):
        return self.curriculum.window

    @property
    def transitions(self) -> list[dict[str, Any]]:
        return self.curriculum.transitions

    @property
    def progress(self) -> float:
        return self.curriculum.progress

    @property
    def buffer(self):
        return self.replay.buffer

    @property
    def dropped(self) -> set[str]:
        return self.replay.dropped

    def params_for(self, phase: int) -> dict[str, Any]:
        """The task parameters of ``phase`` at the current scheduled values."""
        return self.curriculum.params_for(phase)

    # ------------------------------------------------------------------ sources

    def _activate(self) -> _Source:
        """Make the current (phase, values) train set current, building it if needed."""
        key = (self.phase, tuple(sorted(self.values.items())))
        source = self._cache.get(key)
        if source is None:
            source = self._build(key)
            self._cache[key] = source
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        self._phase_tasks[self.phase] = source.task
        source.task.set_progress(self.progress)
        self._source = source
        return source

    def _build(self, key: tuple) -> _Source:
        params = self.params_for(self.phase)
        task = task_registry.get(self.task_name, **params)
        train, _ = task.build(self.seed)
        ids = _problem_ids(train)
        blocked = {i for i, pid in enumerate(ids) if pid in self._eval_ids}
        if len(blocked) == len(ids):
            raise ConfigError(
                f"curriculum phase {self.phase} ({params}): every training problem is in the eval set: widen the phase's ranges"
            )
        if blocked:
            log.info("curriculum phase %d: %d training rows are eval problems and are skipped", self.phase, len(blocked))
        return _Source(key, self.phase, params, task, train, ids, blocked)

    def _alive(self, source: _Source) -> list[int]:
        if source.alive_rev != self.replay.dropped_rev:
            dropped = self.replay.dropped
            source.alive = [i for i, pid in enumerate(source.ids) if i not in source.blocked and pid not in dropped]
            source.alive_rev = self.replay.dropped_rev
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
        replay_on = self.replay.serving
        out: list[dict[str, Any] | None] = [None] * len(indices)
        fresh: list[tuple[int, int]] = []  # (slot, position in the train set)
        for slot, index in enumerate(indices):
            i = int(index)
            take_buffer = replay_on and self._uniform(i, _COIN) < self.replay.cfg.mix
            if not take_buffer and not alive and replay_on:
                take_buffer = True  # every fresh problem is dropped: serve from the buffer
            if take_buffer:
                out[slot] = self.replay.row(_hash(self.seed, self.version, i, _PICK))
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

    # ------------------------------------------------------------------ trainer hooks

    def bind(self, trainer: Any) -> None:
        super().bind(trainer)
        accelerator = getattr(trainer, "accelerator", None)
        if accelerator is not None and getattr(accelerator, "num_processes", 1) > 1:
            raise ConfigError("curriculum/replay support a single training process only")

    def on_scored_batch(self, batch: ScoredBatch) -> None:
        """Count each group, feed the curriculum's success window and the replay buffer; a new version if either changed."""
        changed = self._observe_curriculum(batch)
        changed = self._observe_replay(batch) or changed
        if changed:
            self.version += 1

    def _group_phase(self, batch: ScoredBatch, group: range) -> tuple[dict[str, Any], bool, int]:
        row = batch.rows[group.start]
        return row, bool(row.get(REPLAYED, False)), int(row.get(PHASE, self.phase) or 0)

    def _observe_curriculum(self, batch: ScoredBatch) -> bool:
        """The batch's successes under the current phase's rule (fresh groups of this phase only); advance on the rule."""
        if self.curriculum.rule is None:
            return False
        total = batch.total
        successes: list[float] = []
        for group in batch.groups():
            _, replayed, phase = self._group_phase(batch, group)
            if self.curriculum.counts(phase, replayed):
                rows = [batch.rows[i] for i in group]
                successes += self.curriculum.successes(
                    self.task_for(phase), [batch.completions[i] for i in group], rows, [total[i] for i in group]
                )
        if not successes:
            return False
        if self.curriculum.record(successes, batch.step):
            self._activate()
        return True

    def _observe_replay(self, batch: ScoredBatch) -> bool:
        """Group counts for the replay metrics; solved problems dropped and informative prompts kept."""
        changed = False
        for group in batch.groups():
            row, replayed, phase = self._group_phase(batch, group)
            zero = batch.zero_variance(group)
            self.replay.count(replayed, zero)

            def solved(group: range = group, phase: int = phase) -> bool:
                task = self.task_for(phase)
                return all(task.is_correct(batch.completions[i], batch.rows[i]) for i in group)

            changed = self.replay.observe(row, zero_variance=zero, solved=solved) or changed
        return changed

    def _set_progress(self, state: Any) -> None:
        max_steps = getattr(state, "max_steps", 0) or self.max_steps
        progress = min(1.0, max(0.0, state.global_step / max(max_steps, 1)))
        if self.curriculum.set_progress(progress):
            self._activate()
            self.version += 1
        else:
            self._source.task.set_progress(progress)

    def on_train_begin(self, args, state, control, **kwargs):
        self._set_progress(state)

    def on_step_end(self, args, state, control, **kwargs):
        self._set_progress(state)
        metrics = getattr(self.trainer, "_metrics", None)
        if metrics is not None:
            self.curriculum.log_into(metrics["train"])
            self.replay.log_into(metrics["train"])
        self.replay.new_step()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, **self.curriculum.state_dict(), **self.replay.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.curriculum.load_state_dict(state)
        self.version = int(state.get("version", 0))
        self.replay.load_state_dict(state)
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
    """The dataset to train on and the control that decides, at fetch time, what its rows are.

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
