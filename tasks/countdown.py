"""Countdown (yuxuanwang2009/RL_GRPO): reach a target with + - * using each given number once."""

from __future__ import annotations

import operator
import random
from typing import Any, Literal

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.countdown import is_countdown_solution
from tasks.base import Task
from tasks.registry import register
from tasks.sampling import Problem, draw_split

SYSTEM = "You are a mathematical puzzle solver."
EXAMPLE_NUMS, EXAMPLE_TARGET = [3, 5, 2], 13
EXAMPLE_ANSWER = (
    "<think>\n"
    "I need to reach 13 using [3, 5, 2].\n"
    "Try 3 + 5 + 2 = 10. Too small, need multiplication.\n"
    "Try 3 * 5 + 2 = 17. Too large.\n"
    "Try 5 * 2 + 3 = 13. Yes!\n"
    "</think>\n"
    "<answer>5 * 2 + 3</answer>"
)
_OPERATORS = "+-*"
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul}


class CountdownParams(BaseModel):
    """Problem generator settings; numbers and targets are bounded to stay inside the safe evaluator's limits."""

    model_config = ConfigDict(extra="forbid")

    num_count: int = Field(3, ge=2, le=10)
    min_number: int = Field(1, ge=1)
    max_number: int = Field(10, le=10**6)
    operators: str = _OPERATORS
    min_target: int = Field(1, ge=-(10**6))
    max_target: int = Field(100, le=10**6)
    prompt_format: Literal["zero_shot", "one_shot"] = "zero_shot"
    train_size: int = Field(2000, ge=1)
    eval_size: int = Field(200, ge=1)

    @field_validator("operators")
    @classmethod
    def _operators(cls, value: str) -> str:
        if "/" in value:
            raise ValueError("division ('/') is not supported yet: use a subset of '+-*'")
        if not value or set(value) - set(_OPERATORS):
            raise ValueError("operators must be a non-empty subset of '+-*'")
        return "".join(op for op in _OPERATORS if op in value)

    @model_validator(mode="after")
    def _ranges(self) -> CountdownParams:
        if self.min_number > self.max_number:
            raise ValueError(f"min_number ({self.min_number}) is above max_number ({self.max_number})")
        if self.min_target > self.max_target:
            raise ValueError(f"min_target ({self.min_target}) is above max_target ({self.max_target})")
        return self


def question(nums: list[int], target: int, operators: str) -> str:
    """The reference's zero-shot user text."""
    return (
        f"Using the numbers {nums}, create an expression that equals {target}. "
        f"You must use all {len(nums)} numbers, each exactly once. "
        f"Available operations: {', '.join(operators)} (no division). "
        "Show your reasoning in <think>...</think>, then write your final expression in <answer>...</answer>."
    )


def left_assoc_expression(nums: list[int], ops: str) -> str:
    """``((a op b) op c) ...`` written with only the parentheses it needs."""
    text, last_op = str(nums[0]), ""
    for op, num in zip(ops, nums[1:], strict=True):
        if op == "*" and last_op in ("+", "-"):
            text = f"({text})"
        text, last_op = f"{text} {op} {num}", op
    return text


def problem_id(nums: list[int], target: int) -> str:
    """Canonical key: the sorted numbers and the target (order in the prompt does not matter)."""
    return f"{','.join(map(str, sorted(nums)))}:{target}"


@register
class Countdown(Task):
    """Reference generation: draw numbers and operators, keep in-range targets not among the numbers, shuffle."""

    name = "countdown"
    Params = CountdownParams
    default_rewards = [
        {"name": "format_tags", "weight": 1.0, "params": {}},
        {"name": "countdown_correct", "weight": 1.0, "params": {}},
    ]
    params: CountdownParams

    def build(self, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        p = self.params
        train, eval_ = draw_split(self.name, self._draw, seed, p.eval_size, p.train_size)
        return self._dataset(train), self._dataset(eval_)

    def is_correct(self, completion: str, row: dict[str, Any]) -> bool:
        return is_countdown_solution(completion, row["nums"], row["target"])

    def gold(self, row: dict[str, Any]) -> str:
        solution, target = row["solution"], row["target"]
        return f"<think>\nUsing {row['nums']}: {solution} = {target}.\n</think>\n<answer>{solution}</answer>"

    def prompt(self, nums: list[int], target: int) -> list[dict[str, str]]:
        """The chat prompt for one problem, with the worked example turn when one-shot."""
        messages = [{"role": "system", "content": SYSTEM}]
        if self.params.prompt_format == "one_shot":
            messages += [
                {"role": "user", "content": question(EXAMPLE_NUMS, EXAMPLE_TARGET, _OPERATORS)},
                {"role": "assistant", "content": EXAMPLE_ANSWER},
            ]
        messages.append({"role": "user", "content": question(nums, target, self.params.operators)})
        return messages

    def _draw(self, rng: random.Random) -> Problem | None:
        p = self.params
        nums = [rng.randint(p.min_number, p.max_number) for _ in range(p.num_count)]
        ops = "".join(rng.choice(p.operators) for _ in range(p.num_count - 1))
        target = nums[0]
        for op, num in zip(ops, nums[1:], strict=True):
            target = _APPLY[op](target, num)
        if not p.min_target <= target <= p.max_target or target in nums:
            return None
        solution = left_assoc_expression(nums, ops)
        rng.shuffle(nums)
        return {"nums": nums, "target": target, "solution": solution, "problem_id": problem_id(nums, target)}

    def _dataset(self, problems: list[Problem]) -> datasets.Dataset:
        return datasets.Dataset.from_list([{"prompt": self.prompt(q["nums"], q["target"]), **q} for q in problems])
