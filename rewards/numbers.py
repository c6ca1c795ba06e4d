"""Rewards for short numeric answers."""

from __future__ import annotations

from typing import Any

from rewards.errors import ConfigError
from rewards.parsing import completion_text, extract_answer, is_digits, last_number, parse_number
from rewards.registry import register

LENGTH_UNITS = ("char", "token")


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


@register("numeric")
def numeric(prompts: list, completions: list, *, bonus: float = 0.5, **kwargs: Any) -> list[float | None]:
    """``bonus`` when the last ``<answer>`` block is one number ("42", "-3", "$1,080.00", "1/2"), else 0.0."""
    return [bonus if _is_number(extract_answer(completion_text(c))) else 0.0 for c in completions]


@register("digits_only")
def digits_only(prompts: list, completions: list, *, bonus: float = 0.5, **kwargs: Any) -> list[float | None]:
    """``bonus`` when the last ``<answer>`` block is only ASCII digits (the GSM8K seed's digit reward), else 0.0."""
    return [bonus if _is_digits(extract_answer(completion_text(c))) else 0.0 for c in completions]


@register("length_penalty")
def length_penalty(
    prompts: list,
    completions: list,
    *,
    per_unit: float = -0.002,
    unit: str = "char",
    free: int = 0,
    **kwargs: Any,
) -> list[float | None]:
    """``per_unit`` (negative: a penalty) per character or token beyond the first ``free`` ones.

    ``unit: token`` counts the completion's token ids, which TRL passes as ``completion_ids``.
    """
    if unit not in LENGTH_UNITS:
        raise ConfigError(f"reward parameter 'length_penalty.unit' must be 'char' or 'token', got {unit!r}")
    if unit == "char":
        lengths = [len(completion_text(c)) for c in completions]
    else:
        ids = kwargs.get("completion_ids")
        if ids is None:
            raise ValueError("length_penalty with unit 'token' needs the completion_ids keyword (TRL passes it)")
        if len(ids) != len(completions):
            raise ValueError(f"length_penalty got {len(ids)} completion_ids for {len(completions)} completions")
        lengths = [len(i) for i in ids]
    return [per_unit * max(0, n - free) for n in lengths]


def _is_number(answer: str | None) -> bool:
    return answer is not None and parse_number(answer, strict=True) is not None


def _is_digits(answer: str | None) -> bool:
    return answer is not None and is_digits(answer)
