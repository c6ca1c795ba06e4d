"""Tasks: seeded dataset builders and answer checkers, registered by name."""

from tasks import countdown, small_sums  # noqa: F401  (modules register their tasks)
from tasks import gsm8k  # noqa: F401
from tasks import arithmetic  # noqa: F401
from tasks import addition  # noqa: F401
from tasks import anomaly_free  # noqa: F401
from tasks.base import Task
from tasks.registry import get, names

__all__ = ["Task", "get", "names"]
