"""The task interface: a named, parameterised builder of (train, eval) datasets and an answer checker."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import datasets
from pydantic import BaseModel

# The most problems a task builds for one split: every split is built in memory (and by --dry-run), so a
# mistyped size must be refused, not allocated. 100,000 prompts take seconds and well under a GB.
MAX_PROBLEMS = 100_000


class Task(ABC):
    """A task: ``build`` makes seeded, disjoint train/eval sets; ``is_correct`` and ``gold`` judge rows.

    Rows hold a chat ``prompt`` (list of role/content dicts), a canonical ``problem_id`` and the
    columns the task's rewards read. Eval rows may carry a ``condition`` string (e.g. "5d-3t" or
    "one_shot"): evaluation then also reports accuracy per condition.
    """

    name: ClassVar[str]
    Params: ClassVar[type[BaseModel]]
    default_rewards: ClassVar[list[dict[str, Any]]]

    def __init__(self, params: BaseModel):
        self.params = params

    @abstractmethod
    def build(self, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
        """(train, eval) for ``seed``: eval is drawn first; train holds no eval problem."""

    @abstractmethod
    def is_correct(self, completion: str, row: dict[str, Any]) -> bool:
        """Whether ``completion`` answers the problem in ``row``."""

    @abstractmethod
    def gold(self, row: dict[str, Any]) -> str:
        """A correct completion for ``row`` in the format the prompt asks for."""

    def answer_key(self, completion: str, row: dict[str, Any]) -> str | None:
        """The completion's answer in canonical text (equal answers, equal keys), for majority vote (maj@k).

        None when the completion states no answer; tasks without one canonical answer form (the default)
        return None always, and evaluation then reports no ``eval/maj@k``.
        """
        return None

    def row_from_fields(self, fields: dict[str, str]) -> dict[str, Any]:
        """One problem built from named fields given on a command line (`infer.py --task countdown --nums 4,7,3
        --target 25`), as an eval row: the task's own prompt and the columns its checker and rewards read."""
        from rewards.errors import UserError

        raise UserError(f"task '{self.name}' cannot build a problem from --field values: ask a QUESTION instead")

    @property
    def uses_progress(self) -> bool:
        """Whether training prompts depend on ``set_progress`` (then data loading must stay in-process)."""
        return False

    def set_progress(self, fraction: float) -> None:  # noqa: B027  (an optional hook: the default ignores progress)
        """Training progress in [0, 1], set before every optimizer step (and on resume).

        Tasks whose training prompts follow a schedule (Countdown's ``mix_oneshot``) override this
        and read it in a ``Dataset.set_transform`` of their train set; the default ignores it.
        """


def int_list(fields: dict[str, str], key: str, task: str) -> list[int]:
    """`fields[key]` as comma-separated integers (a command-line problem field), or a one-line error."""
    from rewards.errors import UserError

    text = fields.get(key)
    if text is None:
        raise UserError(f"task '{task}' needs --{key} (comma-separated integers, e.g. --{key} 4,7,3)")
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--{key} '{text}': give comma-separated integers, e.g. --{key} 4,7,3") from None
    if not values or len(values) > 20 or any(abs(v) > 10**9 for v in values):
        raise UserError(f"--{key} '{text}': give 1 to 20 integers of at most 10^9")
    return values


def one_int(fields: dict[str, str], key: str, task: str) -> int:
    """`fields[key]` as one integer, or a one-line error."""
    from rewards.errors import UserError

    text = fields.get(key)
    if text is None:
        raise UserError(f"task '{task}' needs --{key} (an integer)")
    try:
        return int(text)
    except ValueError:
        raise UserError(f"--{key} '{text}' is not an integer") from None
