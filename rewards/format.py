"""Format rewards: credit for writing the tags a task asks for."""

from __future__ import annotations

from typing import Any

from rewards.parsing import completion_text, extract_tag
from rewards.registry import register


@register("format_tags")
def format_tags(
    prompts: list, completions: list, *, think: float = 0.1, answer: float = 0.1, **kwargs: Any
) -> list[float | None]:
    """``think`` for a ``<think>...</think>`` block plus ``answer`` for an ``<answer>...</answer>`` block."""
    rewards: list[float | None] = []
    for completion in completions:
        text = completion_text(completion)
        has_think = extract_tag(text, "think") is not None
        has_answer = extract_tag(text, "answer") is not None
        rewards.append(think * has_think + answer * has_answer)
    return rewards
