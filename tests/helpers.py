"""Plain helpers the tests import (fixtures live in conftest.py): the repository root and tiny configs and runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def tiny_config(tmp_path: Path, model_dir: Path, **overrides) -> dict:
    """A raw experiment mapping that trains the tiny model for a few CPU steps."""
    raw = {
        "name": "tiny",
        "seed": 7,
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(model_dir), "lora": {"r": 4, "alpha": 8}},
        "task": {"name": "small_sums", "eval_size": 8},
        "trainer": {
            "max_steps": 4,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 6,
            "save_steps": 2,
            "save_total_limit": 3,
            "logging_steps": 1,
            "dataloader_num_workers": 0,
        },
        "eval": {"every": 2, "num_problems": 3, "num_samples": 2, "k": [1, 2], "batch_size": 16},
        "checkpoints": {"every": 2},
        "logging": {"wandb": "disabled", "plots": True},
    }
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


def write_untrained_run(path: Path, model_dir: Path, steps: tuple[int, ...] = (2, 4)) -> Path:
    """A run directory as analysis reads it, written without training: the resolved `tiny_config` and, for each
    step, an adapter snapshot (`checkpoints/adapter-<step>/` with `meta.json`) of the run's LoRA shape whose
    weights are random and non-zero (a different draw per step)."""
    import torch
    from peft import get_peft_model

    from training_with_unsloth.config import validate
    from training_with_unsloth.models import backends
    from training_with_unsloth.rundir import RunDir

    cfg = validate(tiny_config(path.parent, model_dir, name=path.name))
    run = RunDir(path)
    run.path.mkdir(parents=True)
    run.config.write_text(cfg.to_yaml())
    backends.prepare("transformers")
    loaded = backends.load(cfg.model, "transformers", seed=cfg.seed, gradient_checkpointing=False)
    model = get_peft_model(loaded.model, loaded.peft_config)
    for step in steps:
        gen = torch.Generator().manual_seed(step)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        out = run.adapter_dir(step)
        model.save_pretrained(out, selected_adapters=["default"])
        (out / "meta.json").write_text(json.dumps({"step": step, "train_metrics": {}, "latest_eval": {}}))
    return run.path


def tiny_trainer(tmp_path: Path, model_dir: Path, overrides: dict, **build: Any) -> tuple[Any, Any, Any]:
    """(trainer, its GRPOConfig, the training set) of `tiny_config` with `overrides`, on the transformers backend.

    `build` goes to `build_trainer` (e.g. `callbacks=[]`, `kl=...`); the trainer is built, never trained.
    """
    import rewards
    from training_with_unsloth.assembly import build_grpo_config, build_trainer
    from training_with_unsloth.config import validate
    from training_with_unsloth.models import backends
    from training_with_unsloth.plan import prepare
    from training_with_unsloth.rundir import RunDir

    cfg = validate(tiny_config(tmp_path, model_dir, **overrides))
    prep = prepare(cfg, cuda=False)
    backends.prepare("transformers")
    funcs, weights = rewards.build(prep.reward_specs)
    run = RunDir(tmp_path / "run")
    args = build_grpo_config(cfg, run, weights, cuda=False)
    loaded = backends.load(cfg.model, "transformers", seed=cfg.seed, gradient_checkpointing=False)
    train_ds, _ = prep.task.build(cfg.seed)
    trainer = build_trainer(
        prep, run, args=args, model=loaded.model, tokenizer=loaded.tokenizer, peft_config=loaded.peft_config,
        train_ds=train_ds, **build,
    )  # fmt: skip
    return trainer, args, train_ds


def unsloth_cpu_trainer(cfg: Any, *, pad_token: str | None = None, kl: Any = None) -> tuple[Any, Any]:
    """(trainer, run) of `cfg` under Unsloth's GRPOConfig and trainer, around a PEFT-wrapped transformers model.

    Only for a subprocess that set `UNSLOTH_ALLOW_CPU=1`, imported unsloth and ran `_patch_trl_rl_trainers`:
    Unsloth's loader needs a GPU, so the model gets no-op `for_training` / `for_inference` (the FastLanguageModel
    methods Unsloth's trainer calls) and everything else is Unsloth's trainer code.
    """
    from peft import get_peft_model

    import rewards
    from training_with_unsloth.assembly import build_grpo_config, build_trainer
    from training_with_unsloth.models import backends
    from training_with_unsloth.plan import prepare
    from training_with_unsloth.rundir import RunDir

    prep = prepare(cfg, cuda=False)
    funcs, weights = rewards.build(prep.reward_specs)
    run = RunDir(cfg.run_dir)
    run.create()
    args = build_grpo_config(cfg, run, weights, cuda=False, backend="unsloth")
    loaded = backends.load(cfg.model, "transformers", seed=cfg.seed, gradient_checkpointing=False)
    if pad_token is not None:
        loaded.tokenizer.pad_token = pad_token
    for name in ("for_training", "for_inference"):
        setattr(type(loaded.model), name, lambda self, *a, **k: self)
    model = get_peft_model(loaded.model, loaded.peft_config)
    train_ds, eval_ds = prep.task.build(cfg.seed)
    trainer = build_trainer(
        prep,
        run,
        args=args,
        model=model,
        tokenizer=loaded.tokenizer,
        train_ds=train_ds,
        eval_ds=eval_ds,
        reward_funcs=funcs,
        reward_weights=weights,
        kl=kl,
    )
    return trainer, run
