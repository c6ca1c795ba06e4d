"""Task registry: a name and a params dict (from YAML) to a validated Task."""

from __future__ import annotations

from typing import Any

import pydantic

from tasks.base import Task
from training_with_unsloth.errors import ConfigError, unknown

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
    """The task ``name`` with ``params`` validated by its Params model; errors are one-line ConfigErrors."""
    if name not in _REGISTRY:
        raise unknown("task", name, names())
    cls = _REGISTRY[name]
    try:
        validated = cls.Params.model_validate(params)
    except pydantic.ValidationError as exc:
        raise _config_error(cls, exc) from exc
    return cls(validated)


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
