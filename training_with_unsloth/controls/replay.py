"""Prompt replay: a FIFO buffer of prompts whose group had reward variance, and the problems solved for good.

With replay on, `TrainSource` serves a share `mix` of prompts from the buffer; with `drop_solved`,
a problem whose whole group was correct is not served again. Needs no torch or transformers.
"""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

from training_with_unsloth.config import ReplayConfig

REPLAYED = "replayed"  # column of every served row: whether it came from the buffer


class Replay:
    """The replay buffer, the dropped problems and this step's group counts; state saved with checkpoints."""

    def __init__(self, cfg: ReplayConfig):
        self.cfg = cfg
        self.buffer: deque[dict[str, Any]] = deque()
        self.buffer_ids: set[str] = set()
        self.dropped: set[str] = set()
        self.dropped_rev = 0  # bumped whenever `dropped` changes (fresh-row lists are cached per revision)
        self.step_stats = self._empty_stats()

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    @property
    def serving(self) -> bool:
        """Whether fetches may take prompts from the buffer now."""
        return self.cfg.enabled and len(self.buffer) > 0

    def row(self, pick: int) -> dict[str, Any]:
        """A copy of buffer row ``pick mod size``, marked as replayed."""
        return {**copy.deepcopy(self.buffer[pick % len(self.buffer)]), REPLAYED: True}

    def count(self, replayed: bool, zero_variance: bool) -> None:
        """Count one scored group (for this step's replay/zero_std_* metrics)."""
        kind = "replayed" if replayed else "fresh"
        self.step_stats[f"{kind}_groups"] += 1
        self.step_stats[f"{kind}_zero"] += int(zero_variance)

    def observe(self, row: dict[str, Any], *, zero_variance: bool, solved: Any) -> bool:
        """Drop a solved problem (``solved()`` is asked only with drop_solved) or keep a prompt that taught
        something; True when the buffer or the dropped set changed."""
        if not self.cfg.enabled:
            return False
        pid = str(row.get("problem_id", ""))
        if self.cfg.drop_solved and pid and pid not in self.dropped and solved():
            self.drop(pid)
            return True
        if not zero_variance and pid and pid not in self.buffer_ids and pid not in self.dropped:
            self.push(row)
            return True
        return False

    def push(self, row: dict[str, Any]) -> None:
        """Append a prompt's row to the buffer, evicting the oldest beyond capacity."""
        stored = {k: copy.deepcopy(v) for k, v in row.items() if k != REPLAYED}
        self.buffer.append(stored)
        self.buffer_ids.add(str(stored.get("problem_id", "")))
        while len(self.buffer) > self.cfg.capacity:
            old = self.buffer.popleft()
            self.buffer_ids.discard(str(old.get("problem_id", "")))

    def drop(self, pid: str) -> None:
        """Never serve problem ``pid`` again (also removed from the buffer)."""
        self.dropped.add(pid)
        self.dropped_rev += 1
        if pid in self.buffer_ids:
            self.buffer = deque(r for r in self.buffer if str(r.get("problem_id", "")) != pid)
            self.buffer_ids.discard(pid)

    @staticmethod
    def _empty_stats() -> dict[str, int]:
        return {"fresh_groups": 0, "fresh_zero": 0, "replayed_groups": 0, "replayed_zero": 0}

    def new_step(self) -> None:
        """Start counting the next step's groups."""
        self.step_stats = self._empty_stats()

    def log_into(self, train: dict[str, list[float]]) -> None:
        """This step's replay metrics, into TRL's metric lists."""
        if self.cfg.enabled:
            s = self.step_stats
            if s["fresh_groups"]:
                train["replay/zero_std_fresh"].append(s["fresh_zero"] / s["fresh_groups"])
            if s["replayed_groups"]:
                train["replay/zero_std_replayed"].append(s["replayed_zero"] / s["replayed_groups"])
            if s["fresh_groups"] + s["replayed_groups"]:
                train["replay/replayed_frac"].append(s["replayed_groups"] / (s["fresh_groups"] + s["replayed_groups"]))
            train["replay/buffer_size"].append(float(len(self.buffer)))
            train["replay/dropped"].append(float(len(self.dropped)))

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": [copy.deepcopy(r) for r in self.buffer], "dropped": sorted(self.dropped)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = deque()
        self.buffer_ids = set()
        for row in state.get("buffer", []):
            self.push(row)
        self.dropped = set(state.get("dropped", []))
        self.dropped_rev += 1
