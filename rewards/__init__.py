"""Reward functions with TRL's calling convention, composed by name from YAML.

Every public module of this package is imported on first import (sorted by name), so a new file here
whose functions use ``@register("name")`` is found with no other edit.
"""

from rewards.discovery import import_modules
from rewards.registry import build, get, names

# Infrastructure: imported by the reward modules themselves, never defining rewards.
_INFRASTRUCTURE = frozenset({"discovery", "errors", "parsing", "registry"})

import_modules(__name__, __path__, skip=_INFRASTRUCTURE)

__all__ = ["build", "get", "names"]
