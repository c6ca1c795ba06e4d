"""Countdown: build an expression from given numbers, each used exactly once, that hits a target."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rewards.parsing import completion_text, extract_tag, safe_eval
from rewards.registry import register


def is_countdown_solution(text: str, nums: list[int], target: int, *, allow_div: bool = False) -> bool:
    """Whether the last ``<answer>`` block is an expression using exactly ``nums`` that equals ``target``."""
    expression = extract_tag(text, "answer")
    if expression is None:
        return False
    parsed = safe_eval(expression, allow_div=allow_div)
    if parsed is None:
        return False
    value, used = parsed
    return value == target and Counter(used) == Counter(nums)


@register("countdown_correct")
def countdown_correct(
    prompts: list,
    completions: list,
    *,
    nums: list[list[int]],
    target: list[int],
    correct: float = 1.0,
    **kwargs: Any,
) -> list[float | None]:
    """``correct`` when the completion solves its Countdown problem, else 0.0."""
    return [
        correct if is_countdown_solution(completion_text(c), n, t) else 0.0
        for c, n, t in zip(completions, nums, target, strict=True)
    ]
