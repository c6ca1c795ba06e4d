"""Reward functions with TRL's calling convention, composed by name from YAML."""

from rewards import countdown, format, numbers  # noqa: F401  (modules register their rewards)
from rewards import gsm8k  # noqa: F401
from rewards import arithmetic  # noqa: F401
from rewards import addition  # noqa: F401
from rewards import anomaly  # noqa: F401
from rewards.registry import build, get, names

__all__ = ["build", "get", "names"]
