"""apart-physics addition (seed 000): the exact sum, as a string, inside <answer> tags."""

from __future__ import annotations

from typing import Any

from rewards.parsing import completion_text
from rewards.registry import register

_OPEN, _CLOSE = "<answer>", "</answer>"


def answer_text(text: str) -> str | None:
    """The seed's extraction: the stripped inside of the first complete ``<answer>...</answer>`` block;
    failing that, everything after the last ``<answer>`` (a reply cut off before its closing tag); else None.
    """
    start = text.find(_OPEN)
    if start < 0:
        return None
    end = text.find(_CLOSE, start + len(_OPEN))
    if end >= 0:
        return text[start + len(_OPEN) : end].strip()
    return text[text.rfind(_OPEN) + len(_OPEN) :].strip()


def is_exact(text: str, gold: str) -> bool:
    """Whether the extracted answer is exactly the string ``gold`` (no number normalisation, as the seed)."""
    return answer_text(text) == gold


@register("addition_correct")
def addition_correct(
    prompts: list, completions: list, *, answer: list[str], correct: float = 5.0, **kwargs: Any
) -> list[float | None]:
    """``correct`` when the ``<answer>`` content is exactly the gold sum string, else 0.0."""
    return [correct if is_exact(completion_text(c), a) else 0.0 for c, a in zip(completions, answer, strict=True)]
