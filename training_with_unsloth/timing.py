"""Where a run's time goes: wall time per phase of every step, exclusive (a nested phase pauses its parent).

`PhaseTimer` keeps the seconds of each named phase; `with timer.phase("generation"):` around a piece of
work adds its duration to that phase and takes it out of the enclosing one, so the phases never count a
second twice and, with `other` (the wall time no phase claimed), add up to the wall time exactly. The
trainer (`research_trainer.py`) times generation, reward scoring, the KL reference pass and the loss
step; the optimizer step, Pass@K, checkpoint writes and plots are timed by their callbacks.
`controls/callbacks.TimingLog` turns the counts into `time/<phase>` metrics at every log and
`timing.json` at the end. Timings are host wall clock: on a GPU, work still queued when a phase ends is
counted in the phase that waits for it (no CUDA synchronisation, which would slow the step).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# In the order the console summary lists them. `loss` is the forward and backward pass of the loss with
# what TRL does around it (advantages, old log-probs, the micro-batch split): training_step minus the
# phases nested in it.
PHASES = ("generation", "rewards", "kl", "loss", "optimizer", "eval", "checkpoint", "plots")
ABSORBING = {"eval", "checkpoint", "plots"}  # the work inside these counts as theirs (eval generation is eval)


class PhaseTimer:
    """Exclusive wall-clock seconds per phase, since the start and since the last `take`."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.total: dict[str, float] = {}
        self.since: dict[str, float] = {}
        self._stack: list[list] = []  # [name, started, seconds of nested phases]
        self._open: Any = None  # the phase `start` opened, until `stop`
        self.calls = 0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the time inside as `name`, minus the phases nested in it (inside an absorbing phase,
        e.g. Pass@K's generation inside `eval`, nothing is split off)."""
        if self._stack and self._stack[-1][0] in ABSORBING:
            yield
            return
        frame = [name, self.clock(), 0.0]
        self._stack.append(frame)
        try:
            yield
        finally:
            self._stack.pop()
            elapsed = self.clock() - frame[1]
            own = max(elapsed - frame[2], 0.0)
            self.total[name] = self.total.get(name, 0.0) + own
            self.since[name] = self.since.get(name, 0.0) + own
            if self._stack:
                self._stack[-1][2] += elapsed
            self.calls += 1

    def start(self, name: str) -> None:
        """Open a phase that a later `stop(name)` closes (for work that starts and ends in different hooks)."""
        self._open = self.phase(name)
        self._open.__enter__()

    def stop(self, name: str) -> None:
        opened = self._open
        if opened is not None and self._stack and self._stack[-1][0] == name:
            self._open = None
            opened.__exit__(None, None, None)

    def take(self) -> dict[str, float]:
        """The seconds per phase since the previous `take`, and reset them."""
        out, self.since = self.since, {}
        return out


def overhead_per_phase(samples: int = 2000) -> float:
    """Measured seconds one `with timer.phase(...)` costs on this machine (its own bookkeeping)."""
    timer = PhaseTimer()
    t0 = time.perf_counter()
    for _ in range(samples):
        with timer.phase("x"):
            pass
    return (time.perf_counter() - t0) / samples


def shares_line(seconds: dict[str, float], wall: float) -> str:
    """`generation 61%, loss 22%, ...` in PHASES order, then other; phases under 0.5% are left out."""
    if wall <= 0:
        return ""
    parts = []
    for name in (*PHASES, "other"):
        value = seconds.get(name, 0.0)
        if value / wall >= 0.005:
            parts.append(f"{name} {100 * value / wall:.0f}%")
    return ", ".join(parts)
