"""Rewards for short numeric answers."""

from __future__ import annotations

from typing import Any

from rewards.parsing import completion_text, last_number
from rewards.registry import register


@register("last_number_correct")
def last_number_correct(
    prompts: list, completions: list, *, answer: list[int], correct: float = 1.0, **kwargs: Any
) -> list[float | None]:
    """``correct`` when the last number in the completion equals ``answer``, else 0.0."""
    return [correct if last_number(completion_text(c)) == a else 0.0 for c, a in zip(completions, answer, strict=True)]


@register("brevity")
def brevity(
    prompts: list, completions: list, *, max_bonus: float = 0.5, per_word: float = 0.02, **kwargs: Any
) -> list[float | None]:
    """``max(0, max_bonus - per_word * words)``: a bonus that shrinks with every word written."""
    return [max(0.0, max_bonus - per_word * len(completion_text(c).split())) for c in completions]
