"""Small sums: "What is a + b?" -- the easy task a 135M model can learn on a CPU."""

from __future__ import annotations

import random
from typing import Any, Literal

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.parsing import last_number
from tasks.base import MAX_PROBLEMS, Task, int_list
from tasks.registry import register
from tasks.sampling import Problem, draw_split

MIN_TRAIN_PROBLEMS = 8
INSTRUCTIONS = {"number": "Reply with just the number.", "answer_is": "End your reply with 'The answer is N.'"}


class SmallSumsParams(BaseModel):
    """Operand range and term count; eval_size must leave at least 8 distinct training problems."""

    model_config = ConfigDict(extra="forbid")

    min_operand: int = Field(1, ge=0, description="smallest operand: each term is drawn uniformly from min_operand..max_operand")
    max_operand: int = Field(9, le=10**6, description="largest operand")
    num_terms: int = Field(2, ge=2, le=10, description="terms summed in each problem")
    train_size: int = Field(
        2000, ge=1, le=MAX_PROBLEMS, description="training problems (they may repeat, but are never eval problems)"
    )
    eval_size: int = Field(24, ge=1, le=MAX_PROBLEMS, description="distinct held-out eval problems, drawn first")
    instruction: Literal["number", "answer_is"] = Field(
        "number",
        description="the prompt's last sentence: 'Reply with just the number.' (`number`) or \"End your reply with "
        "'The answer is N.'\" (`answer_is`, where a model that writes the sum out first answers more often right)",
    )
    eval_instructions: list[Literal["number", "answer_is"]] | None = Field(
        None,
        description="distinct instructions to evaluate each eval problem under, once per instruction, reported per "
        "instruction as conditions (training keeps `instruction`); unset: `instruction` only",
    )

    @field_validator("eval_instructions")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) < len(value)):
            raise ValueError("eval_instructions must list distinct instructions, or be left out")
        return value

    @model_validator(mode="after")
    def _space(self) -> SmallSumsParams:
        if self.min_operand > self.max_operand:
            raise ValueError(f"min_operand ({self.min_operand}) is above max_operand ({self.max_operand})")
        space = (self.max_operand - self.min_operand + 1) ** self.num_terms
        if space - self.eval_size < MIN_TRAIN_PROBLEMS:
            raise ValueError(
                f"eval_size={self.eval_size} leaves {max(space - self.eval_size, 0)} of {space} distinct problems "
                f"for training, fewer than {MIN_TRAIN_PROBLEMS}: lower eval_size or widen the operand range"
            )
        return self


@register
class SmallSums(Task):
    """Ordered sums of small integers; the reply should be just the number."""

    name = "small_sums"
    Params = SmallSumsParams
    default_rewards = [
        {"name": "last_number_correct", "weight": 1.0, "params": {}},
        {"name": "brevity", "weight": 1.0, "params": {}},
    ]
    params: SmallSumsParams

    def build(self, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        p = self.params
        train, eval_ = draw_split(self.name, self._draw, seed, p.eval_size, p.train_size)
        if p.eval_instructions is not None:  # problem-major, so the first N rows keep every instruction
            eval_ = [
                {**row, "prompt": _prompt(_terms(row), ins), "condition": ins, "problem_id": f"{row['problem_id']}/{ins}"}
                for row in eval_
                for ins in p.eval_instructions
            ]
        return datasets.Dataset.from_list(train), datasets.Dataset.from_list(eval_)

    def is_correct(self, completion: str, row: dict[str, Any]) -> bool:
        return last_number(completion) == row["answer"]

    def gold(self, row: dict[str, Any]) -> str:
        return str(row["answer"])

    def answer_key(self, completion: str, row: dict[str, Any]) -> str | None:
        value = last_number(completion)
        if value is None:
            return None
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)

    def _draw(self, rng: random.Random) -> Problem:
        p = self.params
        terms = [rng.randint(p.min_operand, p.max_operand) for _ in range(p.num_terms)]
        return {
            "prompt": _prompt(terms, p.instruction),
            "answer": sum(terms),
            "problem_id": "+".join(map(str, terms)),
        }

    def row_from_fields(self, fields: dict[str, str]) -> dict[str, Any]:
        """A problem from the command line: `--terms 4,7,3` (under the task's `instruction`)."""
        terms = int_list(fields, "terms", self.name)
        return {"prompt": _prompt(terms, self.params.instruction), "answer": sum(terms), "problem_id": "+".join(map(str, terms))}


def _terms(row: dict[str, Any]) -> list[int]:
    return [int(t) for t in str(row["problem_id"]).split("+")]


def _prompt(terms: list[int], instruction: str) -> list[dict[str, str]]:
    text = " + ".join(map(str, terms))
    return [{"role": "user", "content": f"What is {text}? {INSTRUCTIONS[instruction]}"}]
