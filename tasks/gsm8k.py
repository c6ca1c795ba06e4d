"""GSM8K (seed learning_llm): grade-school word problems; the gold number follows ``####`` in the solution."""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any, Literal

import datasets
from pydantic import BaseModel, ConfigDict, Field

from rewards.errors import ConfigError
from rewards.gsm8k import answer_value, is_gsm8k_correct
from rewards.parsing import format_number, parse_number
from tasks.base import MAX_PROBLEMS, Task
from tasks.data import BUILDERS, load_table
from tasks.registry import register
from tasks.sampling import Problem

SYSTEM = (
    "Solve the math word problem. Reason step by step inside <think> and </think>, then give only the "
    "final number inside <answer> and </answer>, with no units or other words. Use this format:\n"
    "<think>\n...\n</think>\n<answer>\n...\n</answer>"
)
COLUMNS = ("question", "answer")
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations, "<<48/2=24>>"


class GSM8KParams(BaseModel):
    """Where the problems come from and how many to use; at most ``eval_samples`` eval problems.

    ``data`` is a hub id (``train_split``/``eval_split`` of ``subset``), a local dataset directory
    (its splits) or one local file, which the task splits itself: eval rows first, train from
    the rest. ``eval_data`` takes eval problems from another source instead. ``answer_mode``
    picks how ``is_correct`` (Pass@K) reads answers: "strict" only the ``<answer>`` block,
    "lenient" also the last number of an untagged reply.
    """

    model_config = ConfigDict(extra="forbid")

    data: str = Field(
        "openai/gsm8k",
        description="the problems: a hub dataset id, a local dataset directory or one local "
        "`.jsonl`/`.json`/`.parquet`/`.csv` file with `question`/`answer` columns (a file is split into eval and "
        "train by the task)",
    )
    subset: str | None = Field("main", description="subset (configuration) of a hub dataset id; null for none")
    train_split: str = Field("train", description="split of data the training problems come from (a hub id or dataset directory)")
    eval_split: str = Field(
        "test",
        description="split the eval problems come from: of eval_data, or of data when eval_data is unset (a hub id "
        "or dataset directory)",
    )
    eval_data: str | None = Field(
        None,
        description="another source of eval problems, in any form data takes; unset: eval problems come from data "
        "(its eval_split, or the rows of a single file drawn before the training ones)",
    )
    train_samples: int | None = Field(
        None, ge=1, le=MAX_PROBLEMS, description="training problems used at most (distinct, none an eval problem); null: all"
    )
    eval_samples: int = Field(200, ge=1, le=MAX_PROBLEMS, description="eval problems used at most (distinct, drawn first)")
    download: bool = Field(False, description="allow downloading hub datasets; otherwise only the local cache is read")
    answer_mode: Literal["strict", "lenient"] = Field(
        "strict",
        description="how Pass@K checks an answer: `strict` reads only the last `<answer>` block, `lenient` also the "
        "last number of a reply without one (the gsm8k_correct reward has its own mode)",
    )
    system_prompt: str = Field(
        SYSTEM,
        description="the system message of every prompt (default: reason in `<think>` tags, then only the final "
        "number in `<answer>` tags)",
    )


def problem_id(question: str) -> str:
    """Canonical key: a hash of the question with its whitespace normalised."""
    return hashlib.sha1(" ".join(question.split()).encode()).hexdigest()[:16]


def gold_number(answer: Any) -> str | None:
    """The exact gold number of a GSM8K ``answer`` field (the text after the last ``####``, or a bare
    number) in canonical form ("1080", "-3"), or None when there is none."""
    if isinstance(answer, bool):
        return None
    text = str(answer)
    if "####" in text:
        text = text.rpartition("####")[2]
    value = parse_number(text.strip().replace(",", ""), strict=True)
    return None if value is None else format_number(value)


@register
class GSM8K(Task):
    """Seeded eval-first samples of GSM8K-style rows (``question``, ``answer`` ending "#### <number>")."""

    name = "gsm8k"
    Params = GSM8KParams
    default_rewards = [  # the seed's set: correct 2.0, digits 0.5, 0.25/0.5 for the tags, 0.125 per tag line
        {"name": "gsm8k_correct", "weight": 1.0, "params": {"correct": 2.0}},
        {"name": "digits_only", "weight": 1.0, "params": {"bonus": 0.5}},
        {"name": "format_tags", "weight": 1.0, "params": {"think": 0.0, "answer": 0.25, "both": 0.25}},
        {"name": "xml_count", "weight": 1.0, "params": {"per_tag": 0.125, "tags": "think,answer"}},
    ]
    params: GSM8KParams

    def build(self, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        p = self.params
        if p.eval_data is None and _is_file(p.data):
            problems = self._problems(self._load(p.data, "train"), p.data)
            eval_pool, train_pool = problems, problems
        else:
            train_pool = self._problems(self._load(p.data, p.train_split), p.data)
            eval_source, param = (p.eval_data, "eval_data") if p.eval_data else (p.data, "data")
            eval_pool = self._problems(self._load(eval_source, p.eval_split, param), eval_source)
        rng = random.Random(seed)
        eval_ = _shuffled_distinct(eval_pool, rng, set())[: p.eval_samples]
        train = _shuffled_distinct(train_pool, rng, {q["problem_id"] for q in eval_})[: p.train_samples]
        if not train:
            raise ConfigError(
                f"task 'gsm8k': no training problems are left outside the {len(eval_)} eval problems: "
                "lower task.eval_samples or give task.eval_data"
            )
        return datasets.Dataset.from_list(train), datasets.Dataset.from_list(eval_)

    def is_correct(self, completion: str, row: dict[str, Any]) -> bool:
        return is_gsm8k_correct(completion, row["answer"], self.params.answer_mode)

    def answer_key(self, completion: str, row: dict[str, Any]) -> str | None:
        value = answer_value(completion, self.params.answer_mode)
        return None if value is None else format_number(value)

    def gold(self, row: dict[str, Any]) -> str:
        solution = row["solution"]
        reasoning = _CALCULATOR.sub("", solution.rpartition("####")[0] if "####" in solution else solution).strip()
        reasoning = reasoning or f"The answer is {row['answer']}."
        return f"<think>\n{reasoning}\n</think>\n<answer>\n{row['answer']}\n</answer>"

    def prompt(self, question: str) -> list[dict[str, str]]:
        """The chat prompt for one question."""
        return [{"role": "system", "content": self.params.system_prompt}, {"role": "user", "content": question}]

    def _load(self, source: str, split: str, param: str = "data") -> datasets.Dataset:
        p = self.params
        return load_table(source, split=split, subset=p.subset, download=p.download, task=self.name, columns=COLUMNS, param=param)

    def _problems(self, table: datasets.Dataset, source: str) -> list[Problem]:
        """Rows with prompt, question, canonical gold ``answer``, worked ``solution`` and ``problem_id``."""
        columns = table.select_columns([c for c in (*COLUMNS, "solution") if c in table.column_names]).to_dict()
        solutions = columns.get("solution") or [None] * len(table)
        problems = []
        for i, (question, answer, solution) in enumerate(zip(columns["question"], columns["answer"], solutions)):
            gold = gold_number(answer)
            if not isinstance(question, str) or not question.strip() or gold is None:
                raise ConfigError(
                    f"task 'gsm8k': row {i} of '{source}' needs a question and an answer ending '#### <number>' "
                    f"(got answer {str(answer)[-60:]!r})"
                )
            if not isinstance(solution, str):  # GSM8K's answer field is the worked solution
                solution = answer if isinstance(answer, str) and "####" in answer else ""
            problems.append(
                {
                    "prompt": self.prompt(question),
                    "question": question,
                    "answer": gold,
                    "solution": solution,
                    "problem_id": problem_id(question),
                }
            )
        return problems


def _is_file(source: str) -> bool:
    """Whether ``source`` names one local data file (which the task splits into eval and train)."""
    return source.lower().endswith(tuple(BUILDERS))


def _shuffled_distinct(problems: list[Problem], rng: random.Random, taken: set[str]) -> list[Problem]:
    """The problems whose ids are new (first occurrence kept, ``taken`` ids dropped), in a seeded order."""
    seen = set(taken)
    kept = []
    for problem in problems:
        if problem["problem_id"] not in seen:
            seen.add(problem["problem_id"])
            kept.append(problem)
    rng.shuffle(kept)
    return kept
