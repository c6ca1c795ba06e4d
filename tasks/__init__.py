"""Tasks: seeded dataset builders and answer checkers, registered by name."""

from tasks import countdown, small_sums  # noqa: F401  (modules register their tasks)
from tasks.base import Task
from tasks.registry import get, names

__all__ = ["Task", "get", "names"]
