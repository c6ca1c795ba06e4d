"""The research-callback protocol: the base class of every research control, and loading the user's own.

A research control is a `transformers.TrainerCallback` (all of its events) that may also
  * `bind(trainer)`: get the `ResearchGRPOTrainer` before training starts;
  * `on_scored_batch(batch)`: see each generation batch after TRL (or Unsloth) scored it (a `ScoredBatch`);
  * `state_key`: keep `state_dict()` in every trainer checkpoint (`research_state.json`) and get it back
    through `load_state_dict()` on resume; `save_to_checkpoint(folder)` may add files to that checkpoint.
The trainer registers controls in the order `assembly.research_callbacks` declares.
Import after `backends.prepare()` (this module imports transformers).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, ClassVar

from transformers import TrainerCallback

from rewards.discovery import import_user_module
from training_with_unsloth.errors import ConfigError


class ResearchCallback(TrainerCallback):
    """Base of every research control; override only what the control needs."""

    state_key: ClassVar[str | None] = None  # set to save state_dict() with each checkpoint under this key
    trainer: Any = None

    def bind(self, trainer: Any) -> None:
        """Called once when the trainer is built, before any event."""
        self.trainer = trainer

    def on_scored_batch(self, batch: Any) -> None:
        """Called after each generation batch is scored (only for controls that override it)."""

    @property
    def wants_batches(self) -> bool:
        """Whether this control overrides `on_scored_batch`."""
        return type(self).on_scored_batch is not ResearchCallback.on_scored_batch

    def state_dict(self) -> dict[str, Any]:
        """State to keep in checkpoints (with `state_key` set)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, on resume."""

    def save_to_checkpoint(self, folder: Path) -> None:
        """Files to add to a trainer checkpoint being saved, before TRL marks it complete."""


_DUCK = ("bind", "on_scored_batch", "state_key", "state_dict")


def check_protocol(callback: Any) -> None:
    """A TypeError for a callback that looks like a research control but does not derive from the base."""
    if isinstance(callback, ResearchCallback):
        return
    found = [name for name in _DUCK if hasattr(callback, name)]
    if found:
        raise TypeError(
            f"{type(callback).__name__} has {', '.join(found)} but does not derive from "
            "training_with_unsloth.controls.ResearchCallback, so the trainer would not call them"
        )


def user_callback_class(path: str) -> type[ResearchCallback]:
    """The class `package.module:Class` names; a ConfigError unless it is a ResearchCallback."""
    module_name, _, attr = path.partition(":")
    module = import_user_module(module_name, f"'{module_name}'", where="callbacks: ")
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"callbacks: module '{module_name}' has no '{attr}'")
    if not (isinstance(cls, type) and issubclass(cls, ResearchCallback)):
        raise ConfigError(
            f"callbacks: {path} is not a subclass of training_with_unsloth.controls.ResearchCallback: derive from it"
        )
    return cls


def _takes_run(cls: type) -> bool:
    return "run" in inspect.signature(cls.__init__).parameters


def check_user_callback(path: str, params: dict[str, Any]) -> None:
    """Import the class and check its constructor takes ``params`` (without building it)."""
    cls = user_callback_class(path)
    try:
        inspect.signature(cls).bind(**params, **({"run": None} if _takes_run(cls) else {}))
    except TypeError as exc:
        raise ConfigError(f"callbacks: {path} params {sorted(params)}: {exc}") from None


def build_user_callback(path: str, params: dict[str, Any], run: Any) -> ResearchCallback:
    """An instance of the user's control; a constructor with a `run` parameter gets the run directory."""
    check_user_callback(path, params)
    cls = user_callback_class(path)
    return cls(**params, **({"run": run} if _takes_run(cls) else {}))
