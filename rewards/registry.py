"""Reward registry: names (or ``package.module:function`` paths) to callables with TRL's convention.

A reward is a function ``f(prompts, completions, **kwargs) -> list[float | None]``; its
keyword-only parameters with defaults are its settings (bound from YAML ``params``), the
ones without defaults are dataset columns that TRL passes in per sample.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from training_with_unsloth.errors import ConfigError, unknown

RewardFn = Callable[..., list[float | None]]

_REGISTRY: dict[str, RewardFn] = {}
_SPEC_KEYS = ("name", "weight", "params")


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a reward function under ``name``."""

    def decorate(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            raise ValueError(f"reward '{name}' is registered twice")
        _REGISTRY[name] = fn
        return fn

    return decorate


def names() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **params: Any) -> RewardFn:
    """The reward ``name`` with ``params`` bound; its ``__name__`` is the name TRL logs."""
    if ":" in name:
        fn, label = _import(name), name.rpartition(":")[2]
    elif name in _REGISTRY:
        fn, label = _REGISTRY[name], name
    else:
        raise unknown("reward", name, names())
    settings = _settings(fn)
    for key, value in params.items():
        if key not in settings:
            if not settings:
                raise ConfigError(f"reward '{label}' takes no parameters, got '{key}'")
            raise unknown("reward parameter", key, settings, where=label)
        _check_type(label, key, settings[key], value)
    return _bind(fn, label, params)


def build(specs: list[dict]) -> tuple[list[RewardFn], list[float]]:
    """Reward callables and weights from ``[{"name", "weight", "params"}, ...]``; repeats get ``_2``, ``_3``."""
    funcs: list[RewardFn] = []
    weights: list[float] = []
    used: set[str] = set()
    for i, spec in enumerate(specs):
        for key in spec:
            if key not in _SPEC_KEYS:
                raise unknown("reward key", key, _SPEC_KEYS, where=f"rewards[{i}]")
        if "name" not in spec:
            raise ConfigError(f"rewards[{i}] needs a 'name'")
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ConfigError(f"rewards[{i}].weight must be a number, got {weight!r}")
        fn = get(spec["name"], **(spec.get("params") or {}))
        label, n = fn.__name__, 1
        while fn.__name__ in used:
            n += 1
            fn.__name__ = fn.__qualname__ = f"{label}_{n}"
        used.add(fn.__name__)
        funcs.append(fn)
        weights.append(float(weight))
    return funcs, weights


def _import(path: str) -> RewardFn:
    module_name, _, attr = path.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward '{path}' must look like 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import reward '{path}': {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"reward '{path}' is not callable")
    return fn


def _settings(fn: RewardFn) -> dict[str, Any]:
    """Keyword-only parameters with defaults: the reward's settings, mapped to their defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def _check_type(label: str, key: str, default: Any, value: Any) -> None:
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"reward parameter '{label}.{key}' must be a number, got {value!r}")


def _bind(fn: RewardFn, label: str, params: dict[str, Any]) -> RewardFn:
    parameters = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        if not takes_any:
            kwargs = {k: v for k, v in kwargs.items() if k in parameters}
        return fn(prompts, completions, **{**kwargs, **params})

    reward.__name__ = reward.__qualname__ = label
    reward.__doc__ = fn.__doc__
    return reward
