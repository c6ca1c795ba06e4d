"""The task interface: a named, parameterised builder of (train, eval) datasets and an answer checker."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import datasets
from pydantic import BaseModel


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

    @property
    def uses_progress(self) -> bool:
        """Whether training prompts depend on ``set_progress`` (then data loading must stay in-process)."""
        return False

    def set_progress(self, fraction: float) -> None:  # noqa: B027  (an optional hook: the default ignores progress)
        """Training progress in [0, 1], set before every optimizer step (and on resume).

        Tasks whose training prompts follow a schedule (Countdown's ``mix_oneshot``) override this
        and read it in a ``Dataset.set_transform`` of their train set; the default ignores it.
        """
