"""Countdown (yuxuanwang2009/RL_GRPO): reach a target using each given number once.

Problems are generated as in the reference (or loaded from a TinyZero-style table); prompts come
in three formats (zero-shot, one-shot with a worked example, natural language without tags);
``mix_oneshot`` decays the share of one-shot training prompts from 100% to 0% over training.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from fractions import Fraction
from typing import Any, Literal

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.countdown import NATURAL, is_countdown_solution
from rewards.errors import ConfigError
from tasks.base import MAX_PROBLEMS, Task, int_list, one_int
from tasks.data import load_table
from tasks.registry import register
from tasks.sampling import Problem, draw_split, normalise_operators

log = logging.getLogger(__name__)

PromptFormat = Literal["zero_shot", "one_shot", "natural"]
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
TAG_INSTRUCTION = "Show your reasoning in <think>...</think>, then write your final expression in <answer>...</answer>."
_OPERATORS = "+-*/"
_DEFAULT_OPERATORS = "+-*"
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3
MAX_SOLVER_NUMBERS = 6
MAX_ABS = 10**12  # safe_eval's bound on every intermediate value: a solution must stay inside it
MAX_DATA_NUMBER = 10**6
_GENERATOR_PARAMS = ("num_count", "min_number", "max_number", "min_target", "max_target")
_DATA_PARAMS = ("data_split", "download")


class CountdownParams(BaseModel):
    """Problem generator (or data table) and prompt settings.

    Numbers and targets are bounded to stay inside the safe evaluator's limits. ``eval_size``
    counts problems: with ``eval_formats`` each eval problem appears once per format.
    """

    model_config = ConfigDict(extra="forbid")

    num_count: int = Field(3, ge=2, le=10, description="numbers given per problem, each to be used exactly once (generator only)")
    min_number: int = Field(1, ge=1, description="smallest given number (generator only)")
    max_number: int = Field(10, le=MAX_DATA_NUMBER, description="largest given number (generator only)")
    operators: str = Field(
        _DEFAULT_OPERATORS,
        description="allowed operations, a non-empty subset of `+-*/`: listed in the prompt and used to generate "
        "problems (or, with data, to keep only solvable rows); answers may divide only when `/` is listed, with exact "
        "rational arithmetic (targets stay integers)",
    )
    min_target: int = Field(
        1,
        ge=-MAX_DATA_NUMBER,
        description="smallest target (generator only): a drawn problem whose target is outside min_target..max_target "
        "or is one of its numbers is redrawn",
    )
    max_target: int = Field(100, le=MAX_DATA_NUMBER, description="largest target (generator only)")
    prompt_format: PromptFormat = Field(
        "zero_shot",
        description="`zero_shot`: the question with the `<think>`/`<answer>` tag instruction; `one_shot`: after a "
        "worked example turn; `natural`: no tags, the last expression in the reply is the answer",
    )
    mix_oneshot: bool = Field(
        False,
        description="training prompts start one-shot and turn zero-shot: the one-shot share decays linearly from "
        "100% to 0% over training (needs prompt_format zero_shot; eval prompts are not mixed)",
    )
    eval_formats: list[PromptFormat] | None = Field(
        None,
        description="distinct prompt formats to evaluate each eval problem in, once per format, reported per "
        "format as conditions; unset: prompt_format only",
    )
    data: str | None = Field(
        None,
        description="a local file, dataset directory or hub id with TinyZero-style `nums`/`target` rows, replacing "
        "the generator (malformed, duplicate and unsolvable rows are skipped); unset: generated problems",
    )
    data_split: str = Field(
        "train",
        description="split of data to read (a hub id or dataset directory; a single file is read whole); only with data",
    )
    download: bool = Field(
        False,
        description="allow downloading a hub data id; otherwise only the local cache is read; only with data",
    )
    train_size: int = Field(
        2000, ge=1, le=MAX_PROBLEMS, description="training problems (generated ones may repeat), never eval problems"
    )
    eval_size: int = Field(
        200,
        ge=1,
        le=MAX_PROBLEMS,
        description="distinct held-out eval problems, taken first (with eval_formats, each appears once per format)",
    )

    @field_validator("operators")
    @classmethod
    def _operators(cls, value: str) -> str:
        return normalise_operators(value, _OPERATORS)

    @field_validator("eval_formats")
    @classmethod
    def _eval_formats(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) < len(value)):
            raise ValueError("eval_formats must list distinct prompt formats, or be left out")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CountdownParams:
        if self.min_number > self.max_number:
            raise ValueError(f"min_number ({self.min_number}) is above max_number ({self.max_number})")
        if self.min_target > self.max_target:
            raise ValueError(f"min_target ({self.min_target}) is above max_target ({self.max_target})")
        if self.mix_oneshot and self.prompt_format != "zero_shot":
            raise ValueError(
                "mix_oneshot decays one-shot prompts into zero-shot ones: set prompt_format: zero_shot "
                f"(got {self.prompt_format})"
            )
        unused = _GENERATOR_PARAMS if self.data is not None else _DATA_PARAMS
        ignored = ", ".join(f"task.{k}" for k in unused if k in self.model_fields_set)
        if ignored and self.data is not None:
            raise ValueError(f"generator settings are unused with task.data (it holds the problems): remove {ignored}")
        if ignored:
            raise ValueError(f"data settings are unused without task.data: remove {ignored} or set task.data")
        return self


# ---------------------------------------------------------------------------------------------
# Prompts


def operations_text(operators: str) -> str:
    """The prompt's list of operations: "+, -, * (no division)" or "+, -, *, /"."""
    listed = ", ".join(operators)
    return listed if "/" in operators else f"{listed} (no division)"


def question(nums: list[int], target: int, operators: str, prompt_format: str = "zero_shot") -> str:
    """The reference's user text; the natural format drops the tag instruction."""
    text = (
        f"Using the numbers {nums}, create an expression that equals {target}. "
        f"You must use all {len(nums)} numbers, each exactly once. "
        f"Available operations: {operations_text(operators)}."
    )
    return text if prompt_format == NATURAL else f"{text} {TAG_INSTRUCTION}"


def chat_prompt(nums: list[int], target: int, operators: str, prompt_format: str) -> list[dict[str, str]]:
    """The chat prompt for one problem, with the worked example turn when one-shot."""
    messages = [{"role": "system", "content": SYSTEM}]
    if prompt_format == "one_shot":
        example_ops = _DEFAULT_OPERATORS + ("/" if "/" in operators else "")
        messages += [
            {"role": "user", "content": question(EXAMPLE_NUMS, EXAMPLE_TARGET, example_ops)},
            {"role": "assistant", "content": EXAMPLE_ANSWER},
        ]
    messages.append({"role": "user", "content": question(nums, target, operators, prompt_format)})
    return messages


# ---------------------------------------------------------------------------------------------
# Expressions and the solver


def left_assoc_expression(nums: list[int], ops: str) -> str:
    """``((a op b) op c) ...`` written with only the parentheses it needs."""
    text, last_op = str(nums[0]), ""
    for op, num in zip(ops, nums[1:], strict=True):
        if op in "*/" and last_op in ("+", "-"):
            text = f"({text})"
        text, last_op = f"{text} {op} {num}", op
    return text


def problem_id(nums: list[int], target: int) -> str:
    """Canonical key: the sorted numbers and the target (order in the prompt does not matter)."""
    return f"{','.join(map(str, sorted(nums)))}:{target}"


Number = int | Fraction
Node = Any  # an int leaf, or (op, left node, right node)


def solve(nums: list[int], target: int, operators: str = _DEFAULT_OPERATORS) -> str | None:
    """An expression using each of ``nums`` once that equals ``target``, or None when there is none.

    Exhaustive over every binary tree, order and operator choice, with exact arithmetic: the
    values reachable from every proper subset of the numbers are built up by size, and a
    solution is the target split across a subset and its complement. Intermediate values stay
    within ``MAX_ABS``, so the answer passes the checker; for a non-negative target negative
    intermediate values are left out where any solution can be rewritten without them.
    Milliseconds for 3-4 numbers, about 0.1 s for 5 and seconds for ``MAX_SOLVER_NUMBERS`` = 6.
    """
    if not 1 <= len(nums) <= MAX_SOLVER_NUMBERS:
        raise ValueError(f"solve takes 1 to {MAX_SOLVER_NUMBERS} numbers, got {len(nums)}")
    if not operators or set(operators) - set(_OPERATORS):
        raise ValueError(f"operators must be a non-empty subset of '+-*/', got {operators!r}")
    if len(nums) == 1:
        return str(nums[0]) if nums[0] == target else None
    ops = [op for op in _OPERATORS if op in operators]
    # Leaving out negative values loses nothing when + and - can trade places (or no - is there).
    reach = _reachable(nums, ops, non_negative=target >= 0 and ("+" in ops or "-" not in ops))
    full = (1 << len(nums)) - 1
    for sub in _submasks(full):
        found = _complete(reach[sub], reach[full ^ sub], target, ops)
        if found is not None:
            return _format(found)[0]
    return None


def _submasks(mask: int) -> list[int]:
    """The non-empty proper submasks of ``mask``, largest first."""
    subs, sub = [], (mask - 1) & mask
    while sub:
        subs.append(sub)
        sub = (sub - 1) & mask
    return subs


def _reachable(nums: list[int], ops: list[str], *, non_negative: bool) -> dict[int, dict[Number, Node]]:
    """For every proper subset (a bit mask) of ``nums``: each value its numbers can make, with one tree making it."""
    full = (1 << len(nums)) - 1
    reach: dict[int, dict[Number, Node]] = {}
    for mask in range(1, full):  # a submask is numerically smaller than its mask: it is already done
        if mask & (mask - 1) == 0:
            num = nums[mask.bit_length() - 1]
            reach[mask] = {num: num}
            continue
        values: dict[Number, Node] = {}
        for sub in _submasks(mask):
            other = mask ^ sub
            for op in ops:
                if op in "+*" and sub > other:  # commutative: one order is enough
                    continue
                for a, left in reach[sub].items():
                    for b, right in reach[other].items():
                        value = _apply(op, a, b)
                        if value is None or value in values or abs(value) > MAX_ABS or (non_negative and value < 0):
                            continue
                        values[value] = (op, left, right)
        reach[mask] = values
    return reach


def _complete(left: dict[Number, Node], right: dict[Number, Node], goal: int, ops: list[str]) -> Node | None:
    """A tree ``a op b == goal``, ``a`` from ``left``, ``b`` from ``right``: ``b`` is solved for, then looked up."""
    for a, left_node in left.items():
        for op in ops:
            if op == "+":
                b: Number | None = goal - a
            elif op == "-":
                b = a - goal
            elif op == "*":
                b = (next(iter(right)) if goal == 0 else None) if a == 0 else Fraction(goal) / a
            elif goal == 0:  # a / b == 0 needs a == 0 and any b but 0
                b = next((x for x in right if x != 0), None) if a == 0 else None
            else:
                b = Fraction(a) / goal
            if b is not None and b in right and not (op == "/" and b == 0):
                return (op, left_node, right[b])
    return None


def _apply(op: str, a: Number, b: Number) -> Number | None:
    """``a op b`` exactly (an int when integral); None for a division by zero."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b
    return Fraction(a) / b


def _format(node: Node) -> tuple[str, int]:
    """Text of an expression tree with only the parentheses it needs, and its top precedence."""
    if not isinstance(node, tuple):
        return str(node), _ATOM
    op, left, right = node
    (left_text, left_prec), (right_text, right_prec) = _format(left), _format(right)
    precedence = _PRECEDENCE[op]
    if left_prec < precedence:
        left_text = f"({left_text})"
    if right_prec < precedence or (op in "-/" and right_prec == precedence):
        right_text = f"({right_text})"
    return f"{left_text} {op} {right_text}", precedence


# ---------------------------------------------------------------------------------------------
# The task


@register
class Countdown(Task):
    """Reference generation: draw numbers and operators, keep integer in-range targets not among the numbers."""

    name = "countdown"
    Params = CountdownParams
    default_rewards = [{"name": "countdown_shaped", "weight": 1.0, "params": {}}]
    params: CountdownParams

    def __init__(self, params: CountdownParams):
        super().__init__(params)
        self._progress = 0.0
        self.data_report: dict[str, Any] | None = None  # what loading ``data`` used and skipped

    @property
    def allow_div(self) -> bool:
        """Whether the task's operators include division."""
        return "/" in self.params.operators

    def build(self, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        p = self.params
        if p.data is None:
            train, eval_ = draw_split(self.name, self._draw, seed, p.eval_size, p.train_size)
        else:
            train, eval_ = self._load(seed)
        return self._train_dataset(train, seed), self._eval_dataset(eval_)

    def is_correct(self, completion: str, row: dict[str, Any]) -> bool:
        return is_countdown_solution(
            completion,
            row["nums"],
            row["target"],
            allow_div=bool(row.get("allow_div", self.allow_div)),
            prompt_format=row.get("prompt_format", self.params.prompt_format),
        )

    def gold(self, row: dict[str, Any]) -> str:
        """The row's ``solution`` (or the solver's) as a completion in the row's format."""
        nums, target = row["nums"], row["target"]
        solution = row.get("solution") or solve(nums, target, self.params.operators)
        if solution is None:
            raise ValueError(f"countdown problem {nums} -> {target} has no solution with '{self.params.operators}'")
        if row.get("prompt_format", self.params.prompt_format) == NATURAL:
            return f"{solution} = {target}"
        return f"<think>\nUsing {nums}: {solution} = {target}.\n</think>\n<answer>{solution}</answer>"

    def row_from_fields(self, fields: dict[str, str]) -> dict[str, Any]:
        """A problem from the command line: `--nums 4,7,3 --target 25`, in the task's `prompt_format`."""
        nums, target = int_list(fields, "nums", self.name), one_int(fields, "target", self.name)
        solution = solve(nums, target, self.params.operators)  # None: no solution exists (the answer is then never right)
        problem = {"nums": nums, "target": target, "solution": solution, "problem_id": problem_id(nums, target)}
        return self._row(problem, self.params.prompt_format)

    @property
    def uses_progress(self) -> bool:
        return self.params.mix_oneshot

    def set_progress(self, fraction: float) -> None:
        """With ``mix_oneshot``, a train row is one-shot iff its ``u`` is below ``1 - fraction``."""
        self._progress = min(max(float(fraction), 0.0), 1.0)

    def prompt(self, nums: list[int], target: int, prompt_format: str | None = None) -> list[dict[str, str]]:
        """The chat prompt for one problem in ``prompt_format`` (default: the task's)."""
        return chat_prompt(nums, target, self.params.operators, prompt_format or self.params.prompt_format)

    # -- generation ----------------------------------------------------------------------------

    def _draw(self, rng: random.Random) -> Problem | None:
        p = self.params
        nums = [rng.randint(p.min_number, p.max_number) for _ in range(p.num_count)]
        ops = "".join(rng.choice(p.operators) for _ in range(p.num_count - 1))
        value: Number | None = nums[0]
        for op, num in zip(ops, nums[1:], strict=True):
            value = _apply(op, value, num)
            if value is None:  # a division by zero
                return None
        if Fraction(value).denominator != 1:
            return None
        target = int(value)
        if not p.min_target <= target <= p.max_target or target in nums:
            return None
        solution = left_assoc_expression(nums, ops)
        rng.shuffle(nums)
        return {"nums": nums, "target": target, "solution": solution, "problem_id": problem_id(nums, target)}

    # -- datasets ------------------------------------------------------------------------------

    def _row(self, problem: Problem, prompt_format: str) -> dict[str, Any]:
        return {
            "prompt": self.prompt(problem["nums"], problem["target"], prompt_format),
            **problem,
            "prompt_format": prompt_format,
            "allow_div": self.allow_div,
        }

    def _train_dataset(self, problems: list[Problem], seed: int) -> datasets.Dataset:
        if not self.params.mix_oneshot:
            return datasets.Dataset.from_list([self._row(q, self.params.prompt_format) for q in problems])
        rng = random.Random(f"countdown-mix-oneshot-{seed}")
        ds = datasets.Dataset.from_list([{**self._row(q, "one_shot"), "u": rng.random()} for q in problems])
        ds.set_transform(self._mix_prompts)
        return ds

    def _mix_prompts(self, batch: dict[str, list]) -> dict[str, list]:
        """Fetch-time prompts: one-shot iff ``u < 1 - progress``; every other column is passed through."""
        one_shot_share = 1.0 - self._progress
        formats = ["one_shot" if u < one_shot_share else "zero_shot" for u in batch["u"]]
        prompts = [self.prompt(n, t, f) for n, t, f in zip(batch["nums"], batch["target"], formats, strict=True)]
        return {**batch, "prompt": prompts, "prompt_format": formats}

    def _eval_dataset(self, problems: list[Problem]) -> datasets.Dataset:
        formats = self.params.eval_formats
        if formats is None:
            return datasets.Dataset.from_list([self._row(q, self.params.prompt_format) for q in problems])
        rows = []
        for q in problems:  # problem-major, so truncating to the first N rows keeps every format
            for fmt in formats:
                pid = q["problem_id"] if len(formats) == 1 else f"{q['problem_id']}/{fmt}"
                rows.append({**self._row({**q, "problem_id": pid}, fmt), "condition": fmt})
        return datasets.Dataset.from_list(rows)

    # -- loaded data ---------------------------------------------------------------------------

    def _load(self, seed: int) -> tuple[list[Problem], list[Problem]]:
        """Eval then train problems from the ``data`` table: seeded order, distinct ids, solvable rows only."""
        p = self.params
        assert p.data is not None
        table = load_table(p.data, split=p.data_split, download=p.download, task=self.name, columns=["nums", "target"])
        table = table.select_columns(["nums", "target"])
        order = list(range(len(table)))
        random.Random(seed).shuffle(order)
        eval_: list[Problem] = []
        train: list[Problem] = []
        seen: set[str] = set()
        skipped: Counter[str] = Counter()
        examined = 0
        for index in order:
            if len(train) >= p.train_size:
                break
            examined += 1
            problem = self._loaded_problem(table[index], seen, skipped)
            if problem is not None:
                (eval_ if len(eval_) < p.eval_size else train).append(problem)
        self.data_report = {"source": p.data, "rows": len(table), "examined": examined, "skipped": dict(skipped)}
        log.info("countdown data %s: %s", p.data, self.data_report)
        why = f"({', '.join(f'{n} {k}' for k, n in sorted(skipped.items())) or 'none'} skipped)"
        if len(eval_) < p.eval_size:
            raise ConfigError(
                f"task data '{p.data}' has only {len(eval_)} usable distinct problems {why}, fewer than "
                f"task.eval_size={p.eval_size}: lower eval_size or use a larger table"
            )
        if len(train) < p.train_size:
            raise ConfigError(
                f"task data '{p.data}' has only {len(train)} usable problems outside its {p.eval_size} eval problems "
                f"{why}, fewer than task.train_size={p.train_size}: lower train_size or eval_size"
            )
        return train, eval_

    def _loaded_problem(self, record: dict[str, Any], seen: set[str], skipped: Counter[str]) -> Problem | None:
        """One table row as a problem; None (counted in ``skipped``) when malformed, repeated or unsolvable."""
        nums, target = _as_nums(record.get("nums")), _as_int(record.get("target"))
        if nums is None or target is None:
            skipped["malformed"] += 1
            return None
        pid = problem_id(nums, target)
        if pid in seen:
            skipped["duplicate"] += 1
            return None
        seen.add(pid)
        solution = solve(nums, target, self.params.operators)
        if solution is None:
            skipped["unsolvable"] += 1
            return None
        return {"nums": nums, "target": target, "solution": solution, "problem_id": pid}


def _as_int(value: Any) -> int | None:
    """An integer within the checker's bounds (integral floats accepted), else None."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) is not int or abs(value) > MAX_DATA_NUMBER:
        return None
    return value


def _as_nums(value: Any) -> list[int] | None:
    """2..MAX_SOLVER_NUMBERS non-negative integers; a JSON list string (from CSV) is parsed."""
    if isinstance(value, str):
        if len(value) > 1000:
            return None
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if not isinstance(value, (list, tuple)) or not 2 <= len(value) <= MAX_SOLVER_NUMBERS:
        return None
    nums = [_as_int(v) for v in value]
    if any(n is None or n < 0 for n in nums):
        return None
    return nums  # type: ignore[return-value]
