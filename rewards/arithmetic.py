"""Multi-step arithmetic (seed 002): shaped credit for the tags, a close answer and the exact answer."""

from __future__ import annotations

import re
from typing import Any

from rewards.parsing import completion_text, extract_tag
from rewards.registry import register

_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")  # ASCII only: int() would also take "1_0" and non-ASCII digits


def answer_integer(text: str) -> int | None:
    """The integer written alone in the first ``<answer>...</answer>`` block, or None.

    As the seed: the first block, accepted only when all of it is one integer (ASCII digits, optional
    sign, blanks around). Unlike the seed's regex, the block may span lines.
    """
    inside = extract_tag(text, "answer", which="first")
    if inside is None or not _INTEGER.fullmatch(inside):
        return None
    return int(inside)


@register("arithmetic_shaped")
def arithmetic_shaped(
    prompts: list,
    completions: list,
    *,
    answer: list[int],
    format: float = 0.2,
    close: float = 0.2,
    exact: float = 0.6,
    tolerance: int = 1,
    **kwargs: Any,
) -> list[float | None]:
    """The seed's shaped reward, summed: ``format`` for an ``<answer>...</answer>`` block, ``close`` when
    its integer is within ``tolerance`` of ``answer`` and ``exact`` when it equals it.

    An exact answer also earns ``close`` (it is within any tolerance), as in the seed: 0.2 + 0.2 + 0.6 = 1.0.
    """
    rewards: list[float | None] = []
    for completion, truth in zip(completions, answer, strict=True):
        text = completion_text(completion)
        if extract_tag(text, "answer", which="first") is None:
            rewards.append(0.0)
            continue
        value = answer_integer(text)
        score = format
        if value is not None and abs(value - truth) <= tolerance:
            score += close
        if value == truth:
            score += exact
        rewards.append(score)
    return rewards
