"""apart-physics addition (seed 000): "t0 + t1 = " in 12 conditions of digit count x term count.

The seed (ilijalichkovski/apart-physics, generate_dataset.py) draws every term uniformly from
1..10^d - 1 (d is the *maximum* digit count), makes ``per_condition`` problems per condition and
splits each condition on its own: 38 train / 2 validation of 40, so 456 / 24 over 12 conditions.
Here each condition has its own seeded stream; every condition's eval problems are drawn first,
then its train problems, all problem ids distinct across splits and conditions. Eval rows are
interleaved (one per condition, then the next), so any prefix of them stays stratified. The
train set is this fixed list (not resampled), as in the seed.
"""

from __future__ import annotations

import random
from typing import Any

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.addition import answer_text, is_exact
from tasks.base import MAX_PROBLEMS, Task
from tasks.registry import register

SYSTEM = (
    "\nRespond ONLY with the answer to the question in the following format:\n"
    "<answer>\nnumerical_answer\n</answer>\nDon't overthink it.\n"
)  # the seed's system prompt, verbatim


class AdditionParams(BaseModel):
    """Conditions (digit counts x term counts), problems per condition and the eval fraction of each."""

    model_config = ConfigDict(extra="forbid")

    digits: list[int] = Field(
        default_factory=lambda: [5, 6, 7, 8],
        min_length=1,
        description="distinct maximum digit counts d (each 1..30), one condition per term count: every term is "
        "drawn uniformly from 1..10^d - 1",
    )
    terms: list[int] = Field(
        default_factory=lambda: [2, 3, 4],
        min_length=1,
        description="distinct term counts (each 2..10), one condition per digit count",
    )
    per_condition: int = Field(
        40,
        ge=2,
        le=100_000,
        description="distinct problems per condition, eval and train together; the train set is this fixed list",
    )
    eval_fraction: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="share of each condition held out for eval: round(per_condition x eval_fraction) problems, "
        "at least 1 and leaving at least 1 for training",
    )

    @field_validator("digits")
    @classmethod
    def _digits(cls, value: list[int]) -> list[int]:
        if any(not 1 <= d <= 30 for d in value) or len(set(value)) != len(value):
            raise ValueError(f"digits must be distinct digit counts in 1..30, got {value}")
        return value

    @field_validator("terms")
    @classmethod
    def _terms(cls, value: list[int]) -> list[int]:
        if any(not 2 <= t <= 10 for t in value) or len(set(value)) != len(value):
            raise ValueError(f"terms must be distinct term counts in 2..10, got {value}")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> AdditionParams:
        n_eval = self.eval_per_condition
        if not 1 <= n_eval < self.per_condition:
            raise ValueError(
                f"eval_fraction={self.eval_fraction} of per_condition={self.per_condition} gives {n_eval} eval "
                "problems per condition: it must give at least 1 and leave at least 1 for training"
            )
        total = self.per_condition * len(self.digits) * len(self.terms)
        if total > MAX_PROBLEMS:
            raise ValueError(
                f"per_condition x len(digits) x len(terms) = {total:,} problems, more than {MAX_PROBLEMS:,}: lower "
                "per_condition or use fewer conditions"
            )
        # Conditions with the same term count overlap (a 6-digit draw may have 5 digits): the smallest
        # must hold its own problems even after every other digit count took as many from it.
        smallest = (10 ** min(self.digits) - 1) ** min(self.terms)
        needed = self.per_condition * len(self.digits)
        if smallest < needed:
            raise ValueError(
                f"condition {min(self.digits)}d-{min(self.terms)}t has only {smallest} distinct problems, fewer than "
                f"per_condition x len(digits) = {needed}: lower per_condition or raise the digit counts"
            )
        return self

    @property
    def eval_per_condition(self) -> int:
        """Eval problems per condition: ``round(per_condition * eval_fraction)`` (40 x 0.05 = 2)."""
        return round(self.per_condition * self.eval_fraction)

    @property
    def conditions(self) -> list[tuple[int, int]]:
        """(digits, terms) pairs in the seed's order."""
        return [(d, t) for d in self.digits for t in self.terms]


def condition_name(digits: int, terms: int) -> str:
    """The condition label, e.g. "5d-2t"."""
    return f"{digits}d-{terms}t"


@register
class Addition(Task):
    """Stratified split: every condition gives the same number of eval problems (2 of 40 by default)."""

    name = "addition"
    Params = AdditionParams
    default_rewards = [  # the seed's four rewards, summed
        {"name": "addition_correct", "weight": 1.0, "params": {"correct": 5.0}},
        {"name": "numeric", "weight": 1.0, "params": {"bonus": 0.5}},
        {"name": "xml_count", "weight": 1.0, "params": {"per_tag": 0.125, "trailing": 0.001, "tags": "answer"}},
        {"name": "length_penalty", "weight": 1.0, "params": {"per_unit": -0.002, "unit": "char"}},
    ]
    params: AdditionParams

    def build(self, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        p = self.params
        n_eval = p.eval_per_condition
        # One stream per condition (str seeds hash stably); eval problems of every condition come first.
        rngs = {c: random.Random(f"addition:{seed}:{condition_name(*c)}") for c in p.conditions}
        taken: set[str] = set()  # problem ids are unique across both splits and all conditions
        eval_by_condition = [self._draw_distinct(rngs[c], *c, n_eval, taken) for c in p.conditions]
        n_train = p.per_condition - n_eval
        train = [row for c in p.conditions for row in self._draw_distinct(rngs[c], *c, n_train, taken)]
        # Round-robin across conditions, so any prefix of the eval set (eval.num_problems) stays stratified.
        eval_ = [group[i] for i in range(n_eval) for group in eval_by_condition]
        return datasets.Dataset.from_list(train), datasets.Dataset.from_list(eval_)

    def is_correct(self, completion: str, row: dict[str, Any]) -> bool:
        return is_exact(completion, row["answer"])

    def gold(self, row: dict[str, Any]) -> str:
        return f"<answer>\n{row['answer']}\n</answer>"

    def answer_key(self, completion: str, row: dict[str, Any]) -> str | None:
        return answer_text(completion)  # the task compares this exact string with the gold

    @classmethod
    def _draw_distinct(cls, rng: random.Random, digits: int, terms: int, count: int, taken: set[str]) -> list[dict[str, Any]]:
        """``count`` problems whose ids are not in ``taken`` (which they join); the params guarantee enough exist."""
        rows: list[dict[str, Any]] = []
        while len(rows) < count:
            row = cls._draw(rng, digits, terms)
            if row["problem_id"] not in taken:
                taken.add(row["problem_id"])
                rows.append(row)
        return rows

    @staticmethod
    def _draw(rng: random.Random, digits: int, terms: int) -> dict[str, Any]:
        values = [rng.randint(1, 10**digits - 1) for _ in range(terms)]
        return {
            "prompt": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": " + ".join(map(str, values)) + " = "},
            ],
            "answer": str(sum(values)),
            "condition": condition_name(digits, terms),
            "problem_id": "+".join(map(str, values)),
        }
