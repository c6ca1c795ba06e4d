"""User-facing errors (the lowest leaf: tasks, rewards and the trainer all raise these): one line, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input (config, command line, missing model); printed as one line."""


class ConfigError(UserError):
    """An invalid experiment configuration."""


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The valid name closest to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return matches[0] if matches else None


def unknown(kind: str, name: str, choices: Iterable[str], where: str = "") -> ConfigError:
    """A ConfigError for an unknown key/name, suggesting the closest valid one."""
    choices = sorted(set(choices))
    best = closest(name, choices)
    loc = f"{where}." if where else ""
    hint = f"did you mean '{loc}{best}'?" if best else f"valid: {', '.join(choices)}"
    return ConfigError(f"unknown {kind} '{loc}{name}': {hint}")
