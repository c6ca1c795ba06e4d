"""Which optimizer steps get an adapter snapshot and which get a Pass@K evaluation."""

from __future__ import annotations

from training_with_unsloth.config import CheckpointConfig, EvalConfig


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


def checkpoint_steps(cfg: CheckpointConfig, max_steps: int) -> list[int]:
    """Adapter snapshot steps for a run of `max_steps`; always includes the final step."""
    if cfg.every is not None:
        steps = set(range(cfg.every, max_steps + 1, cfg.every))
    elif cfg.log_spaced is not None:
        steps = set(log_spaced_steps(cfg.log_spaced, max_steps))
    elif cfg.steps is not None:
        steps = {s for s in cfg.steps if s <= max_steps}
    else:
        steps = set()
    steps.add(max_steps)
    return sorted(steps)


def eval_steps(cfg: EvalConfig, max_steps: int) -> list[int]:
    """Pass@K steps: 0 (before any update), every `every` steps, and the final step."""
    if not cfg.enabled:
        return []
    steps = {0, max_steps}
    if cfg.every:
        steps.update(range(cfg.every, max_steps + 1, cfg.every))
    return sorted(steps)
