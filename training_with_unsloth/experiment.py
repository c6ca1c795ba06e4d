"""Run one experiment: plan (validate, resolve) -> assemble (data, model, trainer) -> record -> train."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from training_with_unsloth import distributed
from training_with_unsloth.config import ExperimentConfig
from training_with_unsloth.jobs import job_record
from training_with_unsloth.models import backends
from training_with_unsloth.plan import Prepared, check_new_run, check_resume, dry_run_text, keep_resumed_precision, prepare
from training_with_unsloth.rundir import RunDir, atomic_write_json, atomic_write_text, environment


@dataclass
class Plan:
    """A validated run, before any model is loaded."""

    prep: Prepared
    run: RunDir
    cuda: bool
    args: Any  # the GRPOConfig
    asked: set[str]  # GRPOConfig keys the run sets (the trainer must not change them)
    reward_funcs: list
    reward_weights: list[float]
    resume_from: str | None = None
    overwrite: bool = False

    @property
    def cfg(self) -> ExperimentConfig:
        return self.prep.cfg


@dataclass
class Assembled:
    """What `assemble` built: the trainer and what the run directory records about it."""

    trainer: Any
    loaded: Any  # backends.LoadedModel
    fresh: bool  # the run directory did not exist before


def plan(cfg: ExperimentConfig, *, resume: bool = False, overwrite: bool = False, dry_run: bool = False) -> Plan:
    """Validate everything that needs no model, resolve the backend and build the GRPO config."""
    backends.offline_environment(cfg.model.download or cfg.logging.wandb == "online")
    cuda = backends.cuda_available()
    prep = prepare(cfg, cuda=cuda)
    distributed.init()  # several processes join one group here, before any of them looks at the run directory
    if not dry_run and cfg.model.name != "embedded":  # fail fast, before the slow imports
        backends.resolve_model_path(cfg.model.name, allow_download=cfg.model.download)
    run = RunDir(cfg.run_dir)
    resume_from = check_resume(cfg, run) if resume else None
    if resume:
        pinned = keep_resumed_precision(cfg, run, cuda=cuda)
        if pinned and distributed.is_main():
            print(f"note: {pinned}", flush=True)
    if not dry_run:
        check_new_run(run, resume=resume, overwrite=overwrite)

    backends.prepare(prep.backend)  # before anything imports trl (Unsloth patches it on import)
    import rewards as reward_registry
    from training_with_unsloth.assembly import build_grpo_config, check_user_callbacks, grpo_config_kwargs

    check_user_callbacks(cfg)
    if cfg.model.init_adapter:
        from training_with_unsloth.checkpoints import init_adapter_ref

        init_adapter_ref(cfg.model)  # a wrong path or shape stops here, before any model loads
    funcs, weights = reward_registry.build(prep.reward_specs, on_error=cfg.rewards_on_error)
    args = build_grpo_config(cfg, run, weights, cuda=cuda, backend=prep.backend)
    asked = set(grpo_config_kwargs(cfg, run, weights, cuda=cuda, backend=prep.backend))
    return Plan(prep, run, cuda, args, asked, funcs, weights, resume_from, overwrite)


def assemble(p: Plan) -> Assembled:
    """The run directory, the data, the model and the trainer; a fresh run directory is removed again on failure."""
    from transformers import set_seed

    from training_with_unsloth.assembly import build_trainer, train_data
    from training_with_unsloth.lengths import check_sequence_lengths

    cfg, run = p.cfg, p.run
    main = distributed.is_main()  # only the main process writes the run directory
    if p.overwrite and not p.resume_from and main:
        kept = run.clear()
        if kept:
            print(f"note: --overwrite kept what is not the run's in {run.path}: {', '.join(kept[:5])}", flush=True)
    distributed.barrier()
    fresh = not run.path.exists()
    distributed.barrier()
    if main:
        run.create()
    distributed.barrier()
    try:
        set_seed(cfg.seed)
        train_ds, eval_ds, source = train_data(p.prep)
        check_sequence_lengths(cfg, p.args, backends.load_tokenizer(cfg.model), train_ds, eval_ds)  # before the model loads
        loaded = backends.load(
            cfg.model, p.prep.backend, seed=cfg.seed, gradient_checkpointing=bool(p.args.gradient_checkpointing)
        )
        trainer = build_trainer(
            p.prep,
            run,
            args=p.args,
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            peft_config=loaded.peft_config,
            train_ds=train_ds,
            eval_ds=eval_ds,
            source=source,
            reward_funcs=p.reward_funcs,
            reward_weights=p.reward_weights,
            asked=p.asked,
        )
        if cfg.model.init_adapter and not p.resume_from:  # a resumed run restores its own adapter weights
            from training_with_unsloth.checkpoints import apply_init_adapter

            ref = apply_init_adapter(trainer.model, cfg.model)
            at = f" (step {ref.step})" if ref.step is not None else ""
            if main:
                print(f"note: training starts from the LoRA weights of {ref.path}{at}")
    except BaseException:
        if fresh and main:  # nothing was trained: leave no half-made run directory behind
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    return Assembled(trainer, loaded, fresh)


def record(p: Plan, a: Assembled) -> None:
    """`config.yaml`, `env.json` (or, on resume, the resume record) and the GRPO config the trainer holds."""
    cfg, run, loaded = p.cfg, p.run, a.loaded
    if not distributed.is_main():
        distributed.barrier()  # until the main process has written (or, on resume, moved) the records
        return
    env = environment(backend=p.prep.backend, seed=cfg.seed, model_path=loaded.model_path, model=loaded.record)
    env["processes"] = distributed.world_size()
    env.update(job_record())  # the SLURM (or local submitit) job, when it runs as one
    if p.resume_from:
        from training_with_unsloth.resume import check_research_state, resume_run

        check_research_state(p.resume_from, a.trainer.stateful)  # refused before anything is moved
        resume_run(run, p.resume_from, config_text=cfg.to_yaml(), config=cfg.model_dump(mode="json"), env=env)
    else:
        atomic_write_text(run.config, cfg.to_yaml())
        atomic_write_json(run.env, env)
    if a.trainer.args_rewritten:
        changes = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in a.trainer.args_rewritten.items())
        print("note: the trainer set keys the YAML leaves unset: " + changes)
    atomic_write_json(run.trainer / "grpo_config.json", a.trainer.args.to_dict())  # what the trainer runs with
    distributed.barrier()


def train(p: Plan, a: Assembled) -> RunDir:
    """TRL's training loop (resumed from the planned checkpoint, if any)."""
    a.trainer.train(resume_from_checkpoint=p.resume_from)
    return p.run


def run_experiment(
    cfg: ExperimentConfig, *, resume: bool = False, overwrite: bool = False, dry_run: bool = False
) -> RunDir | None:
    """Train one experiment into `<output_dir>/<name>` (or only print the plan with `dry_run`)."""
    p = plan(cfg, resume=resume, overwrite=overwrite, dry_run=dry_run)
    if dry_run:
        if distributed.is_main():
            print(dry_run_text(p.prep, p.args, cuda=p.cuda, resume_from=p.resume_from))
        return None
    assembled = assemble(p)
    record(p, assembled)
    return train(p, assembled)
