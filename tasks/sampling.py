"""Seeded problem sampling shared by tasks: distinct eval problems first, then train without them."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from rewards.errors import ConfigError

Problem = dict[str, Any]
Draw = Callable[[random.Random], Problem | None]

PATIENCE = 20_000  # draws in a row without a usable problem before the problem space counts as exhausted


def draw_split(task: str, draw: Draw, seed: int, eval_size: int, train_size: int) -> tuple[list[Problem], list[Problem]]:
    """(train, eval) problems; ``draw`` returns a problem with a ``problem_id`` key, or None to reject.

    Eval problems are distinct and drawn first; train problems may repeat but never share an
    eval ``problem_id``. Deterministic for a seed.
    """
    rng = random.Random(seed)
    eval_problems: dict[str, Problem] = {}
    while len(eval_problems) < eval_size:
        problem = _draw_new(rng, draw, eval_problems)
        if problem is None:
            raise ConfigError(
                f"task '{task}' can supply only {len(eval_problems)} distinct problems, fewer than "
                f"task.eval_size={eval_size} (no new one in {PATIENCE} draws): widen its ranges or lower eval_size"
            )
        eval_problems[problem["problem_id"]] = problem
    train: list[Problem] = []
    while len(train) < train_size:
        problem = _draw_new(rng, draw, eval_problems)
        if problem is None:
            raise ConfigError(
                f"task '{task}' has no training problems left outside its {eval_size} eval problems "
                f"(none in {PATIENCE} draws): widen its ranges or lower task.eval_size"
            )
        train.append(problem)
    return train, list(eval_problems.values())


def _draw_new(rng: random.Random, draw: Draw, taken: dict[str, Problem]) -> Problem | None:
    """The first drawn problem whose id is not in ``taken``, or None after PATIENCE tries."""
    for _ in range(PATIENCE):
        problem = draw(rng)
        if problem is not None and problem["problem_id"] not in taken:
            return problem
    return None


def normalise_operators(value: str, allowed: str) -> str:
    """``value``'s operators in ``allowed``'s order; a ValueError (pydantic's message) unless a non-empty subset."""
    if not value or set(value) - set(allowed):
        raise ValueError(f"operators must be a non-empty subset of '{allowed}'")
    return "".join(op for op in allowed if op in value)
