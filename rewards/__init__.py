"""Reward functions with TRL's calling convention, composed by name from YAML."""

from rewards import countdown, format, numbers  # noqa: F401  (modules register their rewards)
from rewards.registry import build, get, names

__all__ = ["build", "get", "names"]
