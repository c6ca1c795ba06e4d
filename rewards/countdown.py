"""Countdown: build an expression from given numbers, each used exactly once, that hits a target.

Rows may carry two optional columns that change how a completion is read: ``prompt_format``
("zero_shot" / "one_shot" read the last ``<answer>`` block, "natural" reads the last expression
in the text) and ``allow_div`` (whether ``/`` is allowed). Rows without them are tag-format
problems without division.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from rewards.parsing import completion_text, extract_tag, safe_eval
from rewards.registry import register

NATURAL = "natural"
MAX_SCAN_CHARS = 20_000  # natural format: only the tail of a longer text is searched
MAX_EXPRESSION_CHARS = 200  # safe_eval's own limit: a longer run cannot be an answer
MAX_CANDIDATES = 256  # natural format: candidate expressions parsed before giving up

# Maximal runs of expression characters on one line (newlines end a run).
_RUN = re.compile(r"[0-9+\-*() \t]+")
_RUN_DIV = re.compile(r"[0-9+\-*/() \t]+")
_OPS = frozenset("+-*/")
_DIGITS = frozenset("0123456789")


def last_expression(text: str, *, allow_div: bool = False) -> str | None:
    """The last arithmetic expression in ``text`` that ``safe_eval`` accepts and that combines two or more numbers.

    Candidates are maximal runs of expression characters within a line, trimmed of leading
    and trailing operators and of unmatched outer parentheses, so "So (5 * 2) + 3 = 13."
    gives "(5 * 2) + 3". A leading minus sign is dropped as a bullet would be; a run glued to
    a decimal or digit-grouped number ("3.5 + 2", "1,000 + 3") is no candidate. Only the last
    ``MAX_SCAN_CHARS`` characters are searched and at most ``MAX_CANDIDATES`` candidates
    parsed, so any text is handled in bounded time. Whether the numbers are the problem's is
    for the caller to check.
    """
    tail = text[-MAX_SCAN_CHARS:]
    runs = list((_RUN_DIV if allow_div else _RUN).finditer(tail))
    tried = 0
    for run in reversed(runs):
        candidate = _trim(run.group())
        if candidate is None or _glued(tail, run.start(), run.end()):
            continue
        tried += 1
        if tried > MAX_CANDIDATES:
            return None
        parsed = safe_eval(candidate, allow_div=allow_div)
        if parsed is not None and len(parsed[1]) >= 2:
            return candidate
    return None


def _glued(text: str, start: int, end: int) -> bool:
    """Whether the run ``text[start:end]`` continues a number across a "." or "," ("3.5", "1,000")."""
    before, after = text[max(start - 2, 0) : start], text[end : end + 2]
    glued_before = len(before) == 2 and before[0] in _DIGITS and before[1] in ".," and text[start] in _DIGITS
    glued_after = len(after) == 2 and after[0] in ".," and after[1] in _DIGITS and text[end - 1] in _DIGITS
    return glued_before or glued_after


def _trim(run: str) -> str | None:
    """``run`` without edge operators and unmatched outer parentheses, or None when it cannot be an answer."""
    text = _strip_edges(run)
    if len(text) > MAX_EXPRESSION_CHARS or not _OPS.intersection(text):
        return None
    surplus = text.count("(") - text.count(")")
    while surplus > 0 and text.startswith("("):
        text, surplus = _strip_edges(text[1:]), surplus - 1
    while surplus < 0 and text.endswith(")"):
        text, surplus = _strip_edges(text[:-1]), surplus + 1
    return text or None


def _strip_edges(text: str) -> str:
    """An expression starts with a digit or "(" and ends with a digit or ")"."""
    return text.lstrip(" \t+-*/)").rstrip(" \t+-*/(")


def countdown_expression(text: str, *, prompt_format: str = "zero_shot", allow_div: bool = False) -> str | None:
    """The answer a completion gives: the last ``<answer>`` block, or for ``natural`` the last expression."""
    if prompt_format == NATURAL:
        return last_expression(text, allow_div=allow_div)
    return extract_tag(text, "answer")


def is_countdown_expression(expression: str, nums: list[int], target: int, *, allow_div: bool = False) -> bool:
    """Whether ``expression`` uses exactly the multiset ``nums`` and equals ``target``."""
    parsed = safe_eval(expression, allow_div=allow_div)
    if parsed is None:
        return False
    value, used = parsed
    return value == target and Counter(used) == Counter(nums)


def is_countdown_solution(
    text: str, nums: list[int], target: int, *, allow_div: bool = False, prompt_format: str = "zero_shot"
) -> bool:
    """Whether the completion's answer (see ``countdown_expression``) solves the problem."""
    expression = countdown_expression(text, prompt_format=prompt_format, allow_div=allow_div)
    return expression is not None and is_countdown_expression(expression, nums, target, allow_div=allow_div)


def _row_options(kwargs: dict[str, Any], n: int) -> list[tuple[str, bool]]:
    """(prompt_format, allow_div) per completion, from the optional columns TRL passes in ``kwargs``."""
    formats = kwargs.get("prompt_format") or ["zero_shot"] * n
    divs = kwargs.get("allow_div") or [False] * n
    return [(str(f), bool(d)) for f, d in zip(formats, divs, strict=True)]


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
    options = _row_options(kwargs, len(completions))
    return [
        correct if is_countdown_solution(completion_text(c), n, t, allow_div=d, prompt_format=f) else 0.0
        for c, n, t, (f, d) in zip(completions, nums, target, options, strict=True)
    ]


@register("countdown_shaped")
def countdown_shaped(
    prompts: list,
    completions: list,
    *,
    nums: list[list[int]],
    target: list[int],
    think: float = 0.1,
    answer: float = 0.1,
    correct: float = 1.0,
    **kwargs: Any,
) -> list[float | None]:
    """The seed's reward: ``think`` for a ``<think>`` block plus ``answer`` for an ``<answer>`` block,
    replaced by ``correct`` when the answer solves the problem. Natural-format rows earn only ``correct``."""
    rewards: list[float | None] = []
    for c, n, t, (f, d) in zip(completions, nums, target, _row_options(kwargs, len(completions)), strict=True):
        text = completion_text(c)
        if is_countdown_solution(text, n, t, allow_div=d, prompt_format=f):
            rewards.append(correct)
        elif f == NATURAL:
            rewards.append(0.0)
        else:
            has_think = extract_tag(text, "think") is not None
            has_answer = extract_tag(text, "answer") is not None
            rewards.append(think * has_think + answer * has_answer)
    return rewards


@register("countdown_tinyzero")
def countdown_tinyzero(
    prompts: list,
    completions: list,
    *,
    nums: list[list[int]],
    target: list[int],
    format_score: float = 0.1,
    correct: float = 1.0,
    **kwargs: Any,
) -> list[float | None]:
    """TinyZero's reward: ``correct`` for a solving answer, ``format_score`` for an answer that is
    present but wrong or unreadable, 0.0 for none (for natural rows: no expression found)."""
    rewards: list[float | None] = []
    for c, n, t, (f, d) in zip(completions, nums, target, _row_options(kwargs, len(completions)), strict=True):
        expression = countdown_expression(completion_text(c), prompt_format=f, allow_div=d)
        if expression is None:
            rewards.append(0.0)
        elif is_countdown_expression(expression, n, t, allow_div=d):
            rewards.append(correct)
        else:
            rewards.append(format_score)
    return rewards
