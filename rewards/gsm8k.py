"""GSM8K: the final number of a grade-school word problem, compared exactly with the gold number."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from rewards.errors import ConfigError
from rewards.parsing import completion_text, extract_answer, parse_number
from rewards.registry import register

ANSWER_MODES = ("strict", "lenient")


def answer_value(text: str, mode: str = "strict") -> Fraction | None:
    """The number a completion answers with: its last ``<answer>`` block read by ``parse_number``;
    ``mode="lenient"`` falls back to the last number in the text when there is no block."""
    if mode not in ANSWER_MODES:
        raise ConfigError(f"answer mode must be 'strict' or 'lenient', got {mode!r}")
    answer = extract_answer(text, fallback="last_number" if mode == "lenient" else "none")
    return None if answer is None else parse_number(answer)


def gold_value(gold: Any) -> Fraction:
    """The gold number of a row (an int or the exact number as text, e.g. "1080"); ValueError otherwise."""
    if isinstance(gold, int) and not isinstance(gold, bool):
        return Fraction(gold)
    value = parse_number(gold, strict=True) if isinstance(gold, str) else None
    if value is None:
        raise ValueError(f"gold answer {gold!r} is not a number: the task's 'answer' column must hold the number")
    return value


def is_gsm8k_correct(text: str, gold: Any, mode: str = "strict") -> bool:
    """Whether the completion's answer equals the gold number exactly."""
    value = answer_value(text, mode)
    return value is not None and value == gold_value(gold)


@register("gsm8k_correct")
def gsm8k_correct(
    prompts: list,
    completions: list,
    *,
    answer: list[Any],
    correct: float = 2.0,
    mode: str = "strict",
    **kwargs: Any,
) -> list[float | None]:
    """``correct`` when the answer equals the gold number in column ``answer``, else 0.0.

    ``mode``: "strict" reads only the last ``<answer>`` block; "lenient" falls back to the last
    number in the text. Either way ``$1,080.00``, ``\\boxed{1080}`` or "The answer is 1080" count.
    """
    if mode not in ANSWER_MODES:
        raise ConfigError(f"reward parameter 'gsm8k_correct.mode' must be 'strict' or 'lenient', got {mode!r}")
    return [correct if is_gsm8k_correct(completion_text(c), a, mode) else 0.0 for c, a in zip(completions, answer, strict=True)]
