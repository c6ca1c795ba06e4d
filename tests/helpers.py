"""Plain helpers the tests import (fixtures live in conftest.py): the repository root and tiny configs and runs."""

from __future__ import annotations

import json
from pathlib import Path

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
