"""Anomaly-free U(1) charges (after TheoryGPT, seed 003): a verifier, not a gold-answer match.

A reply lists ``n`` integer charges in ``<answer>...</answer>``. It is *valid* when it parses as
exactly ``n`` comma-separated integers, each within ``[-bound, bound]``, starting with the charges the
prompt fixed, and not all zero; it is *correct* when, in addition, the cubic gauge anomaly
``sum(q^3)`` and the mixed gravitational anomaly ``sum(q)`` both vanish.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from rewards.parsing import completion_text, extract_tag
from rewards.registry import register

MAX_ANSWER_CHARS = 512  # 12 charges of 2-3 characters need far less; longer answer blocks are not parsed
_CHARGE = re.compile(r"[+-]?[0-9]{1,6}")
_BRACKETS = {"[": "]", "(": ")", "{": "}"}


def anomalies(charges: Sequence[int]) -> tuple[int, int]:
    """(cubic, linear): ``sum(q^3)`` (the U(1)^3 anomaly) and ``sum(q)`` (the mixed U(1)-gravity anomaly)."""
    return sum(q**3 for q in charges), sum(charges)


def parse_charges(text: str, count: int, bound: int) -> list[int] | None:
    """Exactly ``count`` integers within ``[-bound, bound]`` listed in the last ``<answer>`` block, else None.

    Accepts "1, -2, 3", optionally inside one pair of brackets, and the Unicode minus sign; nothing
    is evaluated, and answer blocks over MAX_ANSWER_CHARS characters are rejected unread.
    """
    inside = extract_tag(text, "answer")
    if inside is None or len(inside) > MAX_ANSWER_CHARS:
        return None
    if inside[:1] in _BRACKETS and inside[-1:] == _BRACKETS[inside[:1]]:
        inside = inside[1:-1]
    parts = inside.replace("\u2212", "-").split(",")
    if len(parts) != count:
        return None
    charges: list[int] = []
    for part in parts:
        token = part.strip()
        if not _CHARGE.fullmatch(token):
            return None
        charge = int(token)
        if abs(charge) > bound:
            return None
        charges.append(charge)
    return charges


def valid_charges(text: str, count: int, bound: int, given: Sequence[int] = ()) -> list[int] | None:
    """The parsed charges when they are valid: the right count, within the bound, starting with ``given``
    and not all zero; else None."""
    charges = parse_charges(text, count, bound)
    if charges is None or not any(charges) or charges[: len(given)] != list(given):
        return None
    return charges


def is_anomaly_free(text: str, count: int, bound: int, given: Sequence[int] = ()) -> bool:
    """Whether the reply gives valid charges whose cubic and gravitational anomalies both vanish."""
    charges = valid_charges(text, count, bound, given)
    return charges is not None and anomalies(charges) == (0, 0)


@register("anomaly_free")
def anomaly_free(
    prompts: list,
    completions: list,
    *,
    num_fermions: list[int],
    max_charge: list[int],
    given_charges: list[list[int]],
    bonus: float = 5.0,
    invalid: float = -20.0,
    **kwargs: Any,
) -> list[float | None]:
    """TheoryGPT's anomaly reward: for each anomaly a in (sum q^3, sum q), ``-ln(1 + |a|)``, plus ``bonus``
    when a == 0; so 2 x ``bonus`` for an anomaly-free answer.

    Unparseable or invalid answers (wrong count, out of bound, all zero, not starting with the given
    charges) score ``invalid``. A valid answer always scores more: its score is floored at
    ``invalid + 1``. At the defaults the floor never binds: with 12 charges within +-30 the worst
    valid answer scores -ln(1 + 12 * 30^3) - ln(1 + 12 * 30) = -18.6 > -19.
    """
    rewards: list[float | None] = []
    for completion, n, bound, given in zip(completions, num_fermions, max_charge, given_charges, strict=True):
        charges = valid_charges(completion_text(completion), n, bound, given or ())
        if charges is None:
            rewards.append(invalid)
            continue
        score = sum(-math.log1p(abs(a)) + (bonus if a == 0 else 0.0) for a in anomalies(charges))
        rewards.append(max(score, invalid + 1.0))
    return rewards
