"""Anomaly-free U(1) charges (after TheoryGPT, seed 003): charges for N chiral fermions, no gauge anomaly.

A problem is (N, bound, given): find N integer charges within +-bound, not all zero, that start with
the ``num_given`` charges the prompt fixes and cancel both the cubic anomaly sum(q^3) and the mixed
gravitational anomaly sum(q). The fixed leading charges are what makes prompts differ, so eval
problems (N and given charges) are held out from training; ``condition`` is "N=<n>".
There is no single gold answer: ``is_correct`` verifies. ``gold`` searches (boundedly) for a chiral
solution -- no zero charge, no pair q, -q -- and falls back to the vector-like one that negates the
given charges and pads with zeros, which always exists because num_given <= N / 2.
"""

from __future__ import annotations

import functools
import random
from typing import Any

import datasets
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rewards.anomaly import anomalies, is_anomaly_free
from tasks.base import MAX_PROBLEMS, Task
from tasks.registry import register
from tasks.sampling import Problem, draw_split

SYSTEM = "You are a theoretical physicist who builds anomaly-free gauge theories."
MIN_TRAIN_PROBLEMS = 8
SEARCH_BUDGET = 20_000  # search nodes per problem for a chiral gold answer (~20 ms); then vector-like


class AnomalyFreeParams(BaseModel):
    """Fermion counts, charge bound, how many leading charges the prompt fixes, and split sizes."""

    model_config = ConfigDict(extra="forbid")

    num_fermions: list[int] = Field(
        default_factory=lambda: [5],
        description="fermion count N (3..12): one count, or a list to mix (each problem draws N uniformly from it; "
        "eval accuracy is reported per condition N=<n>)",
    )
    max_charge: int = Field(10, ge=1, le=30, description="charge bound: every charge is an integer in -max_charge..max_charge")
    num_given: int = Field(
        2,
        ge=0,
        le=6,
        description="leading charges the prompt fixes, each drawn from the nonzero charges within the bound; at most "
        "half the fewest fermions",
    )
    train_size: int = Field(
        2000, ge=1, le=MAX_PROBLEMS, description="training problems (they may repeat, but are never eval problems)"
    )
    eval_size: int = Field(
        40, ge=1, le=MAX_PROBLEMS, description="distinct held-out eval problems (fermion count and given charges), drawn first"
    )

    @field_validator("num_fermions", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("num_fermions")
    @classmethod
    def _fermions(cls, value: list[int]) -> list[int]:
        if not value or any(not 3 <= n <= 12 for n in value):
            raise ValueError(f"num_fermions must be one or more counts in 3..12, got {value}")
        return sorted(set(value))

    @model_validator(mode="after")
    def _solvable(self) -> AnomalyFreeParams:
        fewest = min(self.num_fermions)
        if 2 * self.num_given > fewest:
            raise ValueError(
                f"num_given={self.num_given} needs num_fermions >= {2 * self.num_given} (the other charges must be "
                f"able to cancel the given ones), got {fewest}: lower num_given or raise num_fermions"
            )
        space = len(self.num_fermions) * (2 * self.max_charge) ** self.num_given
        if space - self.eval_size < MIN_TRAIN_PROBLEMS:
            raise ValueError(
                f"eval_size={self.eval_size} leaves {max(space - self.eval_size, 0)} of {space} distinct problems "
                f"for training, fewer than {MIN_TRAIN_PROBLEMS}: lower eval_size, raise num_given or max_charge, "
                "or list more num_fermions"
            )
        return self


def question(n: int, bound: int, given: list[int]) -> str:
    """The user text for one problem."""
    start = ", ".join(f"q{i + 1} = {q}" for i, q in enumerate(given))
    fixed = f"The charges must start with {start}. " if given else ""
    names = ", ".join(f"q{i + 1}" for i in range(n))
    return (
        f"Assign integer U(1) charges {names} to {n} left-handed (chiral) fermions. Every charge must be an integer "
        f"from -{bound} to {bound}, and not all charges may be zero. {fixed}The theory must be free of gauge "
        f"anomalies: the cubic anomaly q1^3 + ... + q{n}^3 and the mixed gravitational anomaly q1 + ... + q{n} "
        f"must both be zero. Show your reasoning in <think>...</think>, then write the {n} charges in order as a "
        f"comma-separated list in <answer>...</answer>, like <answer>{names}</answer>."
    )


def problem_id(n: int, bound: int, given: list[int]) -> str:
    """Canonical key: fermion count, charge bound and the given leading charges."""
    return f"N={n};Q={bound};given={','.join(map(str, given))}"


@functools.lru_cache(maxsize=4096)
def solution(n: int, bound: int, given: tuple[int, ...]) -> tuple[int, ...]:
    """Anomaly-free charges starting with ``given``: chiral when a bounded search finds one, else vector-like."""
    chiral = _chiral_completion(n - len(given), bound, given)
    if chiral is not None:
        return given + chiral
    if not given:
        return (1, -1) + (0,) * (n - 2)
    return given + tuple(-q for q in given) + (0,) * (n - 2 * len(given))


def _chiral_completion(m: int, bound: int, given: tuple[int, ...]) -> tuple[int, ...] | None:
    """``m`` nonzero charges (ascending) that cancel both anomalies of ``given`` with no pair q, -q anywhere."""
    if 0 in given or any(-q in given for q in given):
        return None
    values = [v for v in range(-bound, bound + 1) if v != 0 and -v not in given]
    cubic, linear = anomalies(given)
    nodes = [0]

    def search(start: int, left: int, s: int, c: int, chosen: list[int]) -> list[int] | None:
        # ``left`` charges, each >= values[start], must sum to s with cubes summing to c.
        nodes[0] += 1
        if nodes[0] > SEARCH_BUDGET:
            return None
        if left == 1:
            ok = values[start] <= s <= bound and s != 0 and -s not in given and -s not in chosen and s**3 == c
            return [*chosen, s] if ok else None
        for i in range(start, len(values)):
            v = values[i]
            rest = left - 1
            if s - v < rest * v or c - v**3 < rest * v**3:
                break  # every later (larger) v overshoots too
            if -v in chosen or s - v > rest * bound or c - v**3 > rest * bound**3:
                continue
            found = search(i, rest, s - v, c - v**3, [*chosen, v])
            if found is not None or nodes[0] > SEARCH_BUDGET:
                return found
        return None

    found = search(0, m, -linear, -cubic, [])
    return tuple(found) if found is not None else None


@register
class AnomalyFree(Task):
    """Problems drawn uniformly: N from num_fermions, each given charge from the nonzero charges in the bound."""

    name = "anomaly_free"
    Params = AnomalyFreeParams
    default_rewards = [
        {"name": "anomaly_free", "weight": 1.0, "params": {"bonus": 5.0, "invalid": -20.0}},
        # the seed penalises over-long theories; here -0.005 per character past 400
        {"name": "length_penalty", "weight": 1.0, "params": {"per_unit": -0.005, "unit": "char", "free": 400}},
    ]
    params: AnomalyFreeParams

    def build(self, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        p = self.params
        train, eval_ = draw_split(self.name, self._draw, seed, p.eval_size, p.train_size)
        return self._dataset(train), self._dataset(eval_)

    def is_correct(self, completion: str, row: dict[str, Any]) -> bool:
        return is_anomaly_free(completion, row["num_fermions"], row["max_charge"], row["given_charges"])

    def gold(self, row: dict[str, Any]) -> str:
        charges = solution(row["num_fermions"], row["max_charge"], tuple(row["given_charges"]))
        cubic, linear = anomalies(charges)
        listed = ", ".join(map(str, charges))
        return f"<think>\nCharges {listed}: sum of cubes = {cubic}, sum = {linear}.\n</think>\n<answer>{listed}</answer>"

    def _draw(self, rng: random.Random) -> Problem:
        p = self.params
        n = rng.choice(p.num_fermions)
        charges = [q for q in range(-p.max_charge, p.max_charge + 1) if q != 0]
        given = [rng.choice(charges) for _ in range(p.num_given)]
        return {
            "num_fermions": n,
            "max_charge": p.max_charge,
            "given_charges": given,
            "condition": f"N={n}",
            "problem_id": problem_id(n, p.max_charge, given),
        }

    def _dataset(self, problems: list[Problem]) -> datasets.Dataset:
        rows = [{"prompt": self._prompt(q), **q} for q in problems]
        features = datasets.Features(
            {
                "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
                "num_fermions": datasets.Value("int64"),
                "max_charge": datasets.Value("int64"),
                "given_charges": datasets.Sequence(datasets.Value("int64")),  # typed even when always empty
                "condition": datasets.Value("string"),
                "problem_id": datasets.Value("string"),
            }
        )
        return datasets.Dataset.from_list(rows, features=features)

    def _prompt(self, problem: Problem) -> list[dict[str, str]]:
        n, bound, given = problem["num_fermions"], problem["max_charge"], problem["given_charges"]
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question(n, bound, given)}]
