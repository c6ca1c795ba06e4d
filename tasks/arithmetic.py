"""Multi-step arithmetic (seed 002): "What is (a op1 b) op2 c?", the integer answer in <answer> tags."""

from __future__ import annotations

import operator
import random
from typing import Any

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.arithmetic import answer_integer
from tasks.base import MAX_PROBLEMS, Task
from tasks.registry import register
from tasks.sampling import Problem, draw_split, normalise_operators

SYSTEM = "You are a careful calculator. Give the final integer answer inside <answer>...</answer>."
_OPERATORS = "+-*"
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}
MIN_TRAIN_PROBLEMS = 8


class ArithmeticParams(BaseModel):
    """Operand range and operators of ``(a op1 b) op2 c``; eval_size must leave 8 problems for training."""

    model_config = ConfigDict(extra="forbid")

    min_operand: int = Field(
        0, ge=0, description="smallest value of a, b and c, each drawn uniformly from min_operand..max_operand"
    )
    max_operand: int = Field(10, le=10**4, description="largest value of a, b and c")
    operators: str = Field(
        _OPERATORS, description="the operators op1 and op2 are drawn from uniformly: a non-empty subset of `+-*`"
    )
    train_size: int = Field(
        2000, ge=1, le=MAX_PROBLEMS, description="training problems (they may repeat, but are never eval problems)"
    )
    eval_size: int = Field(200, ge=1, le=MAX_PROBLEMS, description="distinct held-out eval problems, drawn first")

    @field_validator("operators")
    @classmethod
    def _operators(cls, value: str) -> str:
        return normalise_operators(value, _OPERATORS)

    @model_validator(mode="after")
    def _space(self) -> ArithmeticParams:
        if self.min_operand > self.max_operand:
            raise ValueError(f"min_operand ({self.min_operand}) is above max_operand ({self.max_operand})")
        space = (self.max_operand - self.min_operand + 1) ** 3 * len(self.operators) ** 2
        if space - self.eval_size < MIN_TRAIN_PROBLEMS:
            raise ValueError(
                f"eval_size={self.eval_size} leaves {max(space - self.eval_size, 0)} of {space} distinct problems "
                f"for training, fewer than {MIN_TRAIN_PROBLEMS}: lower eval_size or widen the operand range"
            )
        return self


def question(expression: str) -> str:
    """The seed's user text."""
    return f"What is {expression}? Answer in <answer>...</answer>."


@register
class Arithmetic(Task):
    """Seed generation: a, b, c uniform in the operand range, op1 and op2 uniform over the operators."""

    name = "arithmetic"
    Params = ArithmeticParams
    default_rewards = [{"name": "arithmetic_shaped", "weight": 1.0, "params": {}}]
    params: ArithmeticParams

    def build(self, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        p = self.params
        train, eval_ = draw_split(self.name, self._draw, seed, p.eval_size, p.train_size)
        return datasets.Dataset.from_list(train), datasets.Dataset.from_list(eval_)

    def is_correct(self, completion: str, row: dict[str, Any]) -> bool:
        return answer_integer(completion) == row["answer"]

    def gold(self, row: dict[str, Any]) -> str:
        return f"<answer>{row['answer']}</answer>"

    def answer_key(self, completion: str, row: dict[str, Any]) -> str | None:
        value = answer_integer(completion)
        return None if value is None else str(value)

    def _draw(self, rng: random.Random) -> Problem:
        p = self.params
        a, b = rng.randint(p.min_operand, p.max_operand), rng.randint(p.min_operand, p.max_operand)
        op1 = rng.choice(p.operators)
        c = rng.randint(p.min_operand, p.max_operand)
        op2 = rng.choice(p.operators)
        expression = f"({a} {op1} {b}) {op2} {c}"  # the seed's text; it is also the canonical id
        return {
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(expression)}],
            "answer": _APPLY[op2](_APPLY[op1](a, b), c),
            "problem_id": expression,
        }
