"""Reward registry: names (or ``package.module:function`` paths) to callables with TRL's convention.

A reward is a function ``f(prompts, completions, **kwargs) -> list[float | None]``; its
keyword-only parameters with defaults are its settings (bound from YAML ``params``), the
ones without defaults are dataset columns that TRL passes in per sample.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any, Literal

from rewards.discovery import import_user_module
from rewards.errors import ConfigError, UserError, unknown

RewardFn = Callable[..., list[float | None]]
OnError = Literal["raise", "zero", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("raise", "zero", "skip")

_REGISTRY: dict[str, RewardFn] = {}
_SPEC_KEYS = ("name", "weight", "params")
_SHOWN_CHARS = 200  # of an offending completion in an error message
_WARNED: set[str] = set()  # rewards already warned about failing (once per process)


class RewardError(UserError):
    """A reward function failed on a completion (the message names both) or returned a malformed list."""


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


def build(specs: list[dict], *, on_error: OnError = "raise") -> tuple[list[RewardFn], list[float]]:
    """Reward callables and weights from ``[{"name", "weight", "params"}, ...]``; repeats get ``_2``, ``_3``.

    Each callable is guarded: on an exception, ``on_error`` "raise" stops with a RewardError naming
    the reward and the offending completion, "zero" scores the failing completions 0.0 and "skip"
    returns None for them (TRL then ignores that reward for those samples).
    """
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"rewards_on_error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")
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
        funcs.append(guard(fn, on_error))
        weights.append(float(weight))
    return funcs, weights


def _import(path: str) -> RewardFn:
    module_name, _, attr = path.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"reward '{path}' must look like 'package.module:function'")
    module = import_user_module(module_name, f"reward '{path}'")
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"cannot import reward '{path}': module '{module_name}' has no attribute '{attr}'")
    if not callable(fn):
        raise ConfigError(f"reward '{path}' is not callable")
    return fn


# Keyword arguments TRL itself passes to every reward: never settings, even when declared with a default.
TRL_KWARGS = frozenset({"completion_ids", "trainer_state", "log_extra", "log_metric", "environments"})


def _settings(fn: RewardFn) -> dict[str, Any]:
    """Keyword-only parameters with defaults (other than TRL's own kwargs): the reward's settings and defaults."""
    return {
        p.name: p.default
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty and p.name not in TRL_KWARGS
    }


def _check_type(label: str, key: str, default: Any, value: Any) -> None:
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"reward parameter '{label}.{key}' must be a number, got {value!r}")


def _bind(fn: RewardFn, label: str, params: dict[str, Any]) -> RewardFn:
    parameters = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    # Settings come from the YAML or their defaults, never from a dataset column of the same name
    # (format_tags' `answer` weight must not receive GSM8K's `answer` column).
    settings = {**_settings(fn), **params}

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        if not takes_any:
            kwargs = {k: v for k, v in kwargs.items() if k in parameters}
        return fn(prompts, completions, **{**kwargs, **settings})

    reward.__name__ = reward.__qualname__ = label
    reward.__doc__ = fn.__doc__
    return reward


def guard(fn: RewardFn, on_error: OnError = "raise") -> RewardFn:
    """``fn`` with its output checked (one float or None per completion) and exceptions handled per ``on_error``."""
    label = fn.__name__

    def reward(prompts: list, completions: list, **kwargs: Any) -> list[float | None]:
        n = len(completions)
        try:
            values = fn(prompts, completions, **kwargs)
        except Exception as exc:  # noqa: BLE001  (any failure of user code is reported or handled below)
            return _per_sample(fn, label, on_error, prompts, completions, kwargs, exc)
        return _checked(label, values, n)

    reward.__name__ = reward.__qualname__ = label
    reward.__doc__ = fn.__doc__
    reward.__wrapped__ = fn  # type: ignore[attr-defined]
    return reward


def _checked(label: str, values: Any, n: int) -> list[float | None]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
        raise RewardError(f"reward '{label}' must return a list of {n} floats (one per completion), got {got}")
    out: list[float | None] = []
    for v in values:
        if v is None:
            out.append(None)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise RewardError(f"reward '{label}' returned {v!r}: rewards must be finite numbers or None")
        else:
            out.append(float(v))
    return out


def _row(kwargs: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    """The keyword arguments for sample ``i``: per-sample lists sliced, everything else passed as is."""
    return {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in kwargs.items()}


def _per_sample(
    fn: RewardFn, label: str, on_error: OnError, prompts: list, completions: list, kwargs: dict, batch_exc: Exception
) -> list[float | None]:
    """Score one completion at a time to find the failing ones; raise on the first, or zero/skip them."""
    n = len(completions)
    out: list[float | None] = []
    failed = 0
    for i in range(n):
        try:
            value = _checked(label, fn(prompts[i : i + 1], completions[i : i + 1], **_row(kwargs, i, n)), 1)[0]
        except RewardError:
            raise
        except Exception as exc:  # noqa: BLE001
            if on_error == "raise":
                raise RewardError(
                    f"reward '{label}' failed on completion {i} of {n} ({_shown(completions[i])}): "
                    f"{type(exc).__name__}: {exc}; fix the reward or set rewards_on_error: zero | skip"
                ) from exc
            failed += 1
            value = 0.0 if on_error == "zero" else None
        out.append(value)
    if not failed:  # the batch call failed but every single call worked: not a per-completion problem
        raise RewardError(f"reward '{label}' failed on a batch of {n}: {type(batch_exc).__name__}: {batch_exc}") from batch_exc
    if label not in _WARNED:
        _WARNED.add(label)
        warnings.warn(
            f"reward '{label}' failed on {failed} of {n} completions, scored as {on_error} "
            f"(rewards_on_error: {on_error}); counts are logged as rewards/{label}/errors",
            stacklevel=2,
        )
    log_metric = kwargs.get("log_metric")
    if callable(log_metric):
        log_metric(f"rewards/{label}/errors", float(failed))
    return out


def _shown(completion: Any) -> str:
    from rewards.parsing import completion_text

    try:
        text = completion_text(completion)
    except TypeError:
        text = repr(completion)
    cut = text[:_SHOWN_CHARS]
    return repr(cut) + (f" ... {len(text)} chars" if len(text) > _SHOWN_CHARS else "")
