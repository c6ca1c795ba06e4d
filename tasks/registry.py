"""Task registry: a name (or a ``package.module:Class`` path) and a params dict (from YAML) to a validated Task."""

from __future__ import annotations

import inspect
from typing import Any

import pydantic

from rewards.discovery import import_user_module
from rewards.errors import ConfigError, unknown
from tasks.base import Task

_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: register a Task subclass under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task '{cls.name}' is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    """Registered task names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **params: Any) -> Task:
    """The task ``name`` (registered, or ``package.module:Class``) with ``params`` validated by its Params model.

    Errors are one-line ConfigErrors.
    """
    if ":" in name:
        cls = _import(name)
    elif name in _REGISTRY:
        cls = _REGISTRY[name]
    elif "." in name:
        raise ConfigError(f"unknown task '{name}': a task outside the registry is named 'package.module:Class'")
    else:
        raise unknown("task", name, names())
    try:
        validated = cls.Params.model_validate(params)
    except pydantic.ValidationError as exc:
        raise _config_error(cls, exc) from exc
    return cls(validated)


def _import(path: str) -> type[Task]:
    """The Task subclass at ``package.module:Class``; a one-line ConfigError naming what is wrong otherwise."""
    module_name, _, attr = path.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"task '{path}' must look like 'package.module:Class'")
    module = import_user_module(module_name, f"task '{path}'")
    if not hasattr(module, attr):
        raise ConfigError(f"cannot import task '{path}': module '{module_name}' has no attribute '{attr}'")
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"task '{path}' is not a Task: make '{attr}' a subclass of tasks.base.Task")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError(f"task '{path}' is abstract: implement {missing}")
    params_model = getattr(cls, "Params", None)
    if not (isinstance(params_model, type) and issubclass(params_model, pydantic.BaseModel)):
        raise ConfigError(f"task '{path}' needs a Params class (a pydantic BaseModel) declaring its parameters")
    if not isinstance(getattr(cls, "default_rewards", None), list):
        raise ConfigError(f"task '{path}' needs default_rewards: a list of reward specs used when the YAML gives none")
    return cls


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _config_error(cls: type[Task], exc: pydantic.ValidationError) -> ConfigError:
    """One line for the most useful error: an unknown key first, else the first one."""
    errors = exc.errors()
    extra = [e for e in errors if e["type"] == "extra_forbidden"]
    if extra:
        return unknown("task parameter", str(extra[0]["loc"][0]), cls.Params.model_fields, where="task")
    error = errors[0]
    where = ".".join(["task", *map(str, error["loc"])])
    message = " ".join(str(error["msg"]).split()).removeprefix("Value error, ")
    got = f" (got {error['input']!r})" if error["loc"] else ""
    return ConfigError(f"invalid {where}: {message}{got}")
