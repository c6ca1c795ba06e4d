"""Assemble a run: the GRPO config, the training data, the research controls in their order, and the trainer.

`build_trainer` is the one place a `ResearchGRPOTrainer` is constructed: the runner, the tests and
the benches all go through it. Import after `backends.prepare()` for everything that builds the
config or the trainer (Unsloth patches TRL on import).
"""

from __future__ import annotations

import os
from typing import Any

from training_with_unsloth.config import ExperimentConfig
from training_with_unsloth.errors import ConfigError
from training_with_unsloth.plan import Prepared, check_eval_size
from training_with_unsloth.rundir import RunDir
from training_with_unsloth.trainer_args import build_checked, check_trainer_types, resolve_precision, trainer_changes

# ------------------------------------------------------------------ the GRPO config


def _setup_wandb(cfg: ExperimentConfig, run: RunDir) -> list[str]:
    if cfg.logging.wandb == "disabled":
        return []
    os.environ["WANDB_MODE"] = cfg.logging.wandb
    os.environ.setdefault("WANDB_DIR", str(run.path))
    os.environ.setdefault("WANDB_PROJECT", cfg.logging.project)
    os.environ.setdefault("WANDB_SILENT", "true")
    return ["wandb"]


def _unsloth_dr_grpo(kw: dict[str, Any], backend: str) -> bool:
    return backend == "unsloth" and kw.get("loss_type") == "dr_grpo"


def grpo_config_kwargs(
    cfg: ExperimentConfig, run: RunDir, reward_weights: list[float], *, cuda: bool, backend: str = "transformers"
) -> dict[str, Any]:
    """Every GRPOConfig value the run asks for: the `trainer` section plus what the toolkit owns."""
    kw: dict[str, Any] = dict(cfg.trainer)
    kw.update(
        output_dir=str(run.trainer),
        seed=cfg.seed,
        report_to=_setup_wandb(cfg, run) or "none",
        run_name=cfg.name,
        reward_weights=reward_weights,
    )
    _, precision = resolve_precision(cfg, cuda=cuda)
    kw.update(precision)
    if not cuda:
        kw.setdefault("use_cpu", True)
    if cfg.kl.coef and backend == "unsloth":
        kw["beta"] = cfg.kl.coef  # k3 (checked in prepare): Unsloth's own KL term
    if "scale_rewards" in kw and kw["scale_rewards"] is None and not _unsloth_dr_grpo(kw, backend):
        kw["scale_rewards"] = "group"  # `null` is group scaling, spelled so that Unsloth keeps it under dr_grpo
    return kw


def build_grpo_config(
    cfg: ExperimentConfig, run: RunDir, reward_weights: list[float], *, cuda: bool, backend: str = "transformers"
):
    """TRL's GRPOConfig (Unsloth's, under Unsloth) holding what the YAML asks and TRL's defaults elsewhere."""
    from trl import GRPOConfig

    kw = grpo_config_kwargs(cfg, run, reward_weights, cuda=cuda, backend=backend)
    check_trainer_types(GRPOConfig, cfg.trainer, allow_none=("scale_rewards",))
    dr_grpo_none = _unsloth_dr_grpo(kw, backend) and "scale_rewards" in kw and kw["scale_rewards"] is None
    return build_checked(GRPOConfig, kw, asked=set(kw), unsloth_dr_grpo_none=dr_grpo_none)


def kl_settings(cfg: ExperimentConfig, backend: str) -> Any:
    """The trainer's KL settings: the toolkit's loss term on transformers, Unsloth's own beta (k3) under Unsloth."""
    from training_with_unsloth.controls.kl import KLSettings

    in_loss = bool(cfg.kl.coef) and backend != "unsloth"
    native_estimator = "k3" if (cfg.trainer.get("beta") or backend == "unsloth") else cfg.kl.estimator
    return KLSettings(
        estimator=cfg.kl.estimator if in_loss else native_estimator,
        coef=cfg.kl.coef if in_loss else 0.0,
        in_loss=in_loss,
        diagnostics=cfg.kl.diagnostics,
        every=cfg.kl.diagnostics_every,
        target=cfg.kl.target,
        horizon=cfg.kl.horizon,
    )


# ------------------------------------------------------------------ data


def train_data(prep: Prepared) -> tuple[Any, Any, Any]:
    """(train set, eval set, TrainSource or None): with a curriculum or replay, the train set is served at
    fetch time by the TrainSource control."""
    cfg = prep.cfg
    train_ds, eval_ds = prep.task.build(cfg.seed)
    check_eval_size(cfg, eval_ds)
    if not cfg.prompts_change:
        return train_ds, eval_ds, None
    from training_with_unsloth.controls.train_source import build_train_source

    train_ds, source = build_train_source(
        cfg.task.name, cfg.task.params, cfg.curriculum, cfg.replay, seed=cfg.seed, max_steps=cfg.max_steps, eval_ds=eval_ds
    )
    return train_ds, eval_ds, source


# ------------------------------------------------------------------ research controls, in order


def check_user_callbacks(cfg: ExperimentConfig) -> None:
    """Import each `callbacks:` class and check its params (after `backends.prepare()`: they import transformers)."""
    from training_with_unsloth.controls import check_user_callback

    for spec in cfg.callbacks:
        check_user_callback(spec.name, spec.params)


def research_callbacks(
    prep: Prepared,
    run: RunDir,
    eval_ds: Any,
    funcs: list,
    weights: list[float],
    max_completion_length: int,
    *,
    source: Any = None,
) -> list[Any]:
    """The run's research controls, in the order they run within every trainer event:

    0. `TimingLog`: adds this step's `time/<phase>` to the log before anything writes it.
    1. KL (`AdaptiveKL`, or `KLMeter` for diagnostics only): puts the step's kl/* (and kl/coef) into
       TRL's metrics at step end, before TRL logs them.
    2. `MetricsLogger`: appends each log to metrics.jsonl.
    3. `TrainSource` (curriculum/replay), else `TaskProgress`: tells the task(s) the training progress.
    4. `CompactProgress`: the progress bar, one line per log (a display, not a control).
    5. `PassKCallback`: Pass@K on its schedule.
    6. `AdapterCheckpoints`: adapter snapshots; after Pass@K, so a snapshot's meta.json holds that step's eval.
    7. `BestCheckpoint`: reads Pass@K's latest result, so after it.
    8. `CompletionLog`: completions/<step>.jsonl from scored batches.
    9. The user's `callbacks:`, in YAML order: after the built-in controls, so they see this step's eval,
       snapshot and best.
    10. `LivePlots`: redraws plots/ from metrics.jsonl, once everything else has logged.
    11. `TimingSummary`: timing.json and the console's time line at the end, last, so it counts everything.
    """
    from training_with_unsloth.controls import build_user_callback
    from training_with_unsloth.controls.callbacks import (
        AdapterCheckpoints,
        BestCheckpoint,
        CompactProgress,
        LivePlots,
        MetricsLogger,
        PassKCallback,
        TaskProgress,
        TimingLog,
        TimingSummary,
    )
    from training_with_unsloth.controls.kl import AdaptiveKL, KLMeter
    from training_with_unsloth.evaluation import PassKEvaluator

    cfg = prep.cfg
    timing = TimingLog()
    callbacks: list[Any] = [timing]
    if cfg.kl.coef or cfg.trainer.get("beta") or cfg.kl.target is not None:
        callbacks.append(AdaptiveKL())
    elif cfg.kl.diagnostics:
        callbacks.append(KLMeter())
    callbacks.append(MetricsLogger(run))
    callbacks.append(source if source is not None else TaskProgress(prep.task))
    if not cfg.trainer.get("disable_tqdm", False):
        callbacks.append(CompactProgress())
    passk = None
    if prep.eval_steps:
        evaluator = PassKEvaluator(
            task=prep.task,
            eval_rows=list(eval_ds),
            reward_funcs=funcs,
            reward_weights=weights,
            cfg=cfg.eval,
            max_new_tokens=max_completion_length,
            run=run,
        )
        passk = PassKCallback(evaluator, prep.eval_steps, run, cfg.seed)
        callbacks.append(passk)
    callbacks.append(AdapterCheckpoints(run, prep.checkpoint_steps, passk))
    if passk is not None and cfg.best_metric:
        callbacks.append(BestCheckpoint(run, cfg.best_metric, cfg.checkpoints.best_mode, passk))
    if passk is not None:
        from training_with_unsloth.controls.sweep_report import from_environment

        report = from_environment(run, passk)  # a sweep trial's first run reports its evaluations to the study
        if report is not None:
            callbacks.append(report)
    if cfg.logging.completions:
        from training_with_unsloth.controls.completion_log import CompletionLog

        callbacks.append(CompletionLog(run, cfg.logging.completions, cfg.logging.completions_max_chars))
    callbacks += [build_user_callback(spec.name, spec.params, run) for spec in cfg.callbacks]
    if cfg.logging.plots:
        callbacks.append(LivePlots(run, every=max(1, cfg.eval.every or 10)))
    callbacks.append(TimingSummary(run, timing))
    return callbacks


# ------------------------------------------------------------------ the trainer


def build_trainer(
    prep: Prepared,
    run: RunDir,
    *,
    args: Any,
    model: Any,
    tokenizer: Any,
    train_ds: Any,
    eval_ds: Any = None,
    peft_config: Any = None,
    reward_funcs: list | None = None,
    reward_weights: list[float] | None = None,
    source: Any = None,
    callbacks: list[Any] | None = None,
    kl: Any = None,
    asked: set[str] | None = None,
    trainer_cls: type | None = None,
) -> Any:
    """The `ResearchGRPOTrainer` of a run.

    By default its rewards are built from `prep.reward_specs`, its research controls are
    `research_callbacks(...)` (pass `callbacks` to use others, `[]` for none) and its KL settings
    `kl_settings(cfg, prep.backend)`. Errors TRL and Unsloth raise on settings become one-line
    ConfigErrors. With `asked` (the GRPOConfig keys the run set), a key the trainer's constructor
    changes is a ConfigError if asked for; the unasked ones are kept in `trainer.args_rewritten`.
    `trainer_cls` (a plain parent class, given only the TRL arguments) is for benches comparing with it.
    """
    import rewards as reward_registry
    from training_with_unsloth.research_trainer import ResearchGRPOTrainer

    cfg = prep.cfg
    if reward_funcs is None:
        reward_funcs, reward_weights = reward_registry.build(prep.reward_specs, on_error=cfg.rewards_on_error)
    if callbacks is None:
        callbacks = research_callbacks(
            prep, run, eval_ds, reward_funcs, reward_weights or [], args.max_completion_length, source=source
        )
    before = args.to_dict()
    common = dict(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    try:
        if trainer_cls is not None:
            trainer = trainer_cls(**common)
        else:
            kl = kl if kl is not None else kl_settings(cfg, prep.backend)
            fast = cfg.model.fast_generation and prep.backend == "transformers"
            trainer = ResearchGRPOTrainer(**common, research_callbacks=callbacks, kl=kl, fast_generation=fast)
    except (TypeError, ValueError) as exc:  # TRL and Unsloth validate settings when the trainer is built
        text = str(exc).strip()
        raise ConfigError(f"trainer: {text.splitlines()[0] if text else type(exc).__name__}") from None
    rewritten = trainer_changes(before, trainer.args, asked=asked or set())  # an asked-for key changed: ConfigError
    if isinstance(trainer, ResearchGRPOTrainer):
        trainer.args_rewritten = rewritten
    return trainer
