"""Tasks: seeded dataset builders and answer checkers, registered by name.

Every public module of this package is imported on first import (sorted by name), so a new file here
with a ``@register``-ed Task subclass is found with no other edit.
"""

from rewards.discovery import import_modules
from tasks.base import Task
from tasks.registry import get, names

# Infrastructure: the interface, the registry and shared helpers, never defining tasks.
_INFRASTRUCTURE = frozenset({"base", "data", "registry", "sampling"})

import_modules(__name__, __path__, skip=_INFRASTRUCTURE)

__all__ = ["Task", "get", "names"]
