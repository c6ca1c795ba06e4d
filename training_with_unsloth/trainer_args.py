"""The trainer's arguments: TRL's `GRPOConfig` built from the `trainer:` section, checked to hold what was asked.

Under Unsloth, `trl.GRPOConfig` is Unsloth's subclass, whose `__init__` has defaults of its own
(learning rate 5e-5, batch 4, accumulation 2, warm-up 0.1, weight decay 0.001, `adamw_8bit`,
seed 3407, ...) and rewrites some values it is given (`dr_grpo` drops group reward scaling; an
explicit `loss_type: dapo` switches on `mask_truncated_completions` and `epsilon_high` 0.28). Its
trainer then rewrites `bf16`/`fp16` and raises a `TypeError` for a float16 model with `bf16`.
The run must be the run the YAML describes, with TRL's defaults where the YAML is silent, so:

* keys the YAML leaves unset are passed with TRL's default where Unsloth's differs;
* the built config is compared field by field with TRL's own `GRPOConfig` built from the same
  values: a difference on a key that was asked for is an error naming it; one on an unset key is
  set back to TRL's value;
* the trainer's arguments are compared again once the trainer is built;
* mixed precision follows the dtype the model is loaded in.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

from training_with_unsloth.errors import ConfigError

# Unsloth marks the config classes it generates with this attribute (unsloth/models/rl.py).
_UNSLOTH_FLAG = "_unsloth_patched_rl_config"

_HINTS = {
    "scale_rewards": (
        "Unsloth turns group reward scaling off for loss_type dr_grpo; write trainer.scale_rewards: null (group "
        "scaling on every backend, and the spelling Unsloth keeps), or trainer.scale_rewards: none as Dr. GRPO recommends"
    ),
    "bf16": "set model.dtype to the precision the card supports (auto picks it) and leave trainer.bf16/fp16 unset",
    "fp16": "set model.dtype to the precision the card supports (auto picks it) and leave trainer.bf16/fp16 unset",
}


def is_unsloth_config(cls: type) -> bool:
    """Whether `cls` is a config class Unsloth generated (it disguises their names as TRL's)."""
    return bool(vars(cls).get(_UNSLOTH_FLAG)) or cls.__name__.startswith("Unsloth")


def pristine_config_class(cls: type) -> type:
    """TRL's own GRPOConfig behind `cls` (Unsloth's subclass derives from it)."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass) and not is_unsloth_config(klass):
            return klass
    raise TypeError(f"{cls!r} has no dataclass base that is not Unsloth's")


def trl_field_defaults(cls: type) -> dict[str, Any]:
    """The dataclass defaults of TRL's GRPOConfig (before `__post_init__` derives values)."""
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def resolve_precision(cfg: Any, *, cuda: bool) -> tuple[str, dict[str, bool]]:
    """The dtype the model loads in and the `bf16`/`fp16` mixed-precision flags that go with it.

    `model.dtype: auto` is bfloat16 on a GPU that supports it, float16 on one that does not (T4,
    V100), float32 on a CPU. Unless the YAML sets them, `bf16`/`fp16` follow that dtype (a float32
    model on a GPU trains without autocast); an explicit pair that contradicts it is refused.
    """
    import torch

    requested = cfg.model.dtype
    trainer = cfg.trainer
    asked = {k: trainer[k] for k in ("bf16", "fp16") if k in trainer and trainer[k] is not None}
    if not cuda:
        if any(asked.values()):
            on = next(k for k, v in asked.items() if v)
            raise ConfigError(
                f"trainer.{on}: true is mixed precision on a CUDA GPU and none is visible: remove it (on the CPU the "
                "run is float32)"
            )
        dtype = "float32" if requested == "auto" else requested
        return dtype, {"bf16": False, "fp16": False}
    from training_with_unsloth.models.backends import bf16_supported

    bf16_ok = bf16_supported()
    card = torch.cuda.get_device_name(0) if torch.cuda.device_count() else "this GPU"
    dtype = ("bfloat16" if bf16_ok else "float16") if requested == "auto" else requested
    if dtype == "bfloat16" and not bf16_ok:
        raise ConfigError(f"model.dtype: bfloat16 is not supported by {card}: use model.dtype: auto (float16 there)")
    if asked.get("bf16") and asked.get("fp16"):
        raise ConfigError("trainer.bf16 and trainer.fp16 are both true: leave both unset, model.dtype decides")
    if asked.get("bf16") and not bf16_ok:
        raise ConfigError(f"trainer.bf16: true, but {card} has no bfloat16: remove it (model.dtype auto picks float16)")
    derived = {"bf16": dtype == "bfloat16", "fp16": dtype == "float16"}
    clash = {"bfloat16": "fp16", "float16": "bf16"}.get(dtype)
    if clash and asked.get(clash):
        raise ConfigError(
            f"trainer.{clash}: true contradicts the model's dtype {dtype}: remove trainer.{clash} "
            f"(bf16/fp16 follow model.dtype), or set model.dtype to match"
        )
    return dtype, {**derived, **asked}


def check_trainer_types(config_cls: type, values: dict[str, Any], *, allow_none: tuple[str, ...] = ()) -> None:
    """Check `trainer:` values against GRPOConfig's annotations (the dataclass itself does not)."""
    from pydantic import TypeAdapter, ValidationError
    from pydantic.errors import PydanticSchemaGenerationError

    hints = typing.get_type_hints(config_cls)
    for key, value in values.items():
        if value is None and key in allow_none:
            continue
        try:
            adapter = TypeAdapter(hints[key])
        except (PydanticSchemaGenerationError, KeyError, TypeError):
            continue  # a type pydantic cannot express; TRL checks it when used
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            msg = exc.errors(include_url=False)[0]["msg"]
            raise ConfigError(f"trainer.{key}: {msg} (got {value!r})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _build(cls: type, kw: dict[str, Any]) -> Any:
    try:
        return cls(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"trainer: {_first_line(exc)}") from None


def _values(args: Any, names: list[str]) -> dict[str, Any]:
    as_dict = args.to_dict()  # enums as their values, as grpo_config.json records them
    return {n: as_dict.get(n, getattr(args, n, None)) for n in names}


def build_checked(config_cls: type, kw: dict[str, Any], *, asked: set[str], unsloth_dr_grpo_none: bool = False) -> Any:
    """`config_cls(**kw)`, holding exactly what TRL's GRPOConfig holds for the same values.

    `asked` are the keys the YAML (or the toolkit) set. Under Unsloth, unset keys whose Unsloth
    default differs from TRL's are passed as TRL's; after building, every TRL field is compared
    with TRL's own config built from the same values.
    """
    pristine = pristine_config_class(config_cls)
    if pristine is config_cls:
        return _build(config_cls, kw)
    trl_defaults = trl_field_defaults(pristine)
    unsloth_params = inspect.signature(config_cls.__init__).parameters
    kw = dict(kw)
    for name, default in trl_defaults.items():
        param = unsloth_params.get(name)
        if name in kw or param is None or param.default is inspect.Parameter.empty:
            continue
        if param.default != default:
            kw[name] = default
    expected_kw = dict(kw)
    if unsloth_dr_grpo_none:  # `scale_rewards: null` is how Unsloth is told to keep group scaling with dr_grpo
        expected_kw["scale_rewards"] = "group"
    expected = _build(pristine, expected_kw)
    args = _build(config_cls, kw)
    names = [f.name for f in dataclasses.fields(pristine) if f.init]
    want, got = _values(expected, names), _values(args, names)
    for name in names:
        if got[name] == want[name]:
            continue
        if name in asked:
            hint = _HINTS.get(name, f"set trainer.{name}: {got[name]!r} to accept it, or use model.backend: transformers")
            raise ConfigError(f"trainer.{name}: Unsloth's GRPOConfig changes {want[name]!r} to {got[name]!r}: {hint}")
        setattr(args, name, getattr(expected, name))  # an unset key runs with TRL's default
    still = {n: (want[n], v) for n, v in _values(args, names).items() if v != want[n]}
    if still:
        raise RuntimeError(f"the trainer config still differs from TRL's after correction: {still}")
    return args


def trainer_changes(before: dict[str, Any], args: Any, *, asked: set[str]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value the trainer's constructor changed (from `before`, an earlier `args.to_dict()`).

    A change of a key that was asked for is an error; the others are returned (TRL's or Unsloth's own
    settings on keys the YAML left alone) so that the run can record them.
    """
    after = args.to_dict()
    changed = {k: (before[k], after.get(k)) for k in before if after.get(k) != before[k]}
    for key in sorted(changed):
        if key in asked:
            old, new = changed[key]
            hint = _HINTS.get(key, "the trainer would not run what the YAML says")
            raise ConfigError(f"trainer.{key}: the trainer changes {old!r} to {new!r}: {hint}")
    return changed
