"""Which optimizer steps get an adapter snapshot and which get a Pass@K evaluation.

A schedule is a `Steps`: an arithmetic progression (every N steps) plus a few listed steps, held as
those numbers, never as the full set, so that planning costs the same for 20 steps or 10**15.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from training_with_unsloth.config import CheckpointConfig, EvalConfig


@dataclass(frozen=True)
class Steps:
    """The steps `every, 2*every, ... <= last` (none when `every` is 0) together with the steps in `listed`.

    Supports `in`, `len`, iteration in increasing order (lazily), truth and `==` with a list. Memory and
    time of every operation but full iteration depend on `len(listed)`, not on `last`.
    """

    every: int = 0
    last: int = 0
    listed: frozenset[int] = field(default_factory=frozenset)

    def _on_grid(self, step: int) -> bool:
        return self.every > 0 and 0 < step <= self.last and step % self.every == 0

    def __contains__(self, step: object) -> bool:
        return isinstance(step, int) and (step in self.listed or self._on_grid(step))

    def __len__(self) -> int:
        grid = self.last // self.every if self.every > 0 and self.last > 0 else 0
        return grid + sum(1 for s in self.listed if not self._on_grid(s))

    def __bool__(self) -> bool:
        return bool(self.listed) or (self.every > 0 and self.last >= self.every)

    def __iter__(self) -> Iterator[int]:
        grid: Iterable[int] = range(self.every, self.last + 1, self.every) if self.every > 0 else ()
        extra = sorted(s for s in self.listed if not self._on_grid(s))
        return heapq.merge(grid, extra)

    def head(self, n: int) -> list[int]:
        """The first `n` steps."""
        out: list[int] = []
        for step in self:
            if len(out) >= n:
                break
            out.append(step)
        return out

    def final(self) -> int | None:
        """The largest step (None when empty)."""
        grid = (self.last // self.every) * self.every if self.every > 0 and self.last >= self.every else None
        candidates = [s for s in (grid, max(self.listed, default=None)) if s is not None]
        return max(candidates) if candidates else None

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Steps):
            return list(self) == list(other) if len(self) == len(other) else False
        if isinstance(other, list | tuple):
            return len(self) == len(other) and list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = self.head(8)
        more = f", ... ({len(self)} in all)" if len(self) > len(shown) else ""
        return f"Steps([{', '.join(map(str, shown))}{more}])"


def as_steps(steps: Steps | Iterable[int]) -> Steps:
    """A `Steps` from a schedule or from explicit step numbers."""
    return steps if isinstance(steps, Steps) else Steps(listed=frozenset(int(s) for s in steps))


def log_spaced_steps(count: int, max_steps: int) -> list[int]:
    """`count` distinct steps in 1..max_steps, spaced evenly in log(step): dense early, sparse late.

    The last one is `max_steps`. Where rounding makes early steps collide they are pushed apart by
    one, so the result always has min(count, max_steps) steps.
    """
    if max_steps < 1 or count < 1:
        return []
    count = min(count, max_steps)
    if count == 1:
        return [max_steps]
    raw = [max_steps ** (i / (count - 1)) for i in range(count)]
    steps: list[int] = []
    for i, x in enumerate(raw):
        lo = steps[-1] + 1 if steps else 1
        hi = max_steps - (count - 1 - i)  # leave room for the remaining ones
        steps.append(min(max(round(x), lo), hi))
    return steps


def checkpoint_steps(cfg: CheckpointConfig, max_steps: int) -> Steps:
    """Adapter snapshot steps for a run of `max_steps`; always includes the final step."""
    if cfg.every is not None:
        return Steps(cfg.every, max_steps, frozenset({max_steps}))
    if cfg.log_spaced is not None:
        listed = set(log_spaced_steps(cfg.log_spaced, max_steps))
    elif cfg.steps is not None:
        listed = {s for s in cfg.steps if s <= max_steps}
    else:
        listed = set()
    return Steps(listed=frozenset(listed | {max_steps}))


def eval_steps(cfg: EvalConfig, max_steps: int) -> Steps:
    """Pass@K steps: 0 (before any update), every `every` steps, and the final step."""
    if not cfg.enabled:
        return Steps()
    return Steps(cfg.every, max_steps, frozenset({0, max_steps}))
