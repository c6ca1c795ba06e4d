"""What one generation batch looked like after scoring: the input rows, completions, rewards and advantages.

`ResearchGRPOTrainer` builds one after TRL (or Unsloth) has generated and scored a batch and hands
it to every registered hook: curricula, prompt replay and the completion log all read it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ScoredBatch:
    """One generation batch (this process's share), in TRL's order: each prompt's group is contiguous."""

    step: int  # the optimizer step this batch trains (global_step + 1 while it is being made)
    rows: list[dict[str, Any]]  # the dataset row of every completion (a prompt's row repeated per completion)
    completions: list[str]
    rewards: dict[str, list[float]]  # raw (unweighted) value per reward function; NaN where a reward gave None
    weights: list[float]
    advantages: list[float]
    num_generations: int
    completion_lengths: list[int] = field(default_factory=list)

    @property
    def total(self) -> list[float]:
        """The weighted reward of each completion, NaN-ignoring as TRL sums it."""
        out = [0.0] * len(self.completions)
        for (_, values), w in zip(self.rewards.items(), self.weights, strict=True):
            out = [t + (w * v if not math.isnan(v) else 0.0) for t, v in zip(out, values, strict=True)]
        return out

    def groups(self) -> Iterator[range]:
        """Index ranges of each prompt's completions."""
        n = self.num_generations
        for start in range(0, len(self.completions), n):
            yield range(start, min(start + n, len(self.completions)))

    def zero_variance(self, group: range) -> bool:
        """Whether every completion of ``group`` got the same total reward (so GRPO learns nothing from it)."""
        total = self.total
        values = [total[i] for i in group]
        return max(values) - min(values) < 1e-9
