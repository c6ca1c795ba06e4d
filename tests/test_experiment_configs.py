"""Every shipped experiment config trains two GRPO steps end to end, shrunk onto the tiny model on the CPU.

Only the model, the batch and the lengths are shrunk; the task, its parameters and the reward set
come from the config file unchanged, so a broken task/reward pairing in a config fails here.
"""

from __future__ import annotations

import json

import pytest

from training_with_unsloth.config import load_config
from training_with_unsloth.experiment import run_experiment
from training_with_unsloth.rundir import RunDir

from .helpers import REPO

CONFIGS = sorted(p.name for p in (REPO / "experiment_configs").glob("*.yaml"))

GSM8K_ROWS = [
    {"question": f"Ann has {a} apples and buys {b} more. How many apples does she have now?",
     "answer": f"She has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
    for a, b in [(3, 4), (10, 5), (7, 8), (12, 30), (2, 9), (6, 6), (21, 4), (9, 1)]
]  # fmt: skip


def shrink(tmp_path, model_dir) -> list[str]:
    """--set overrides that put any config on the tiny model, 2 steps, tiny batches, no GPU-only options."""
    return [
        f"output_dir={tmp_path / 'runs'}",
        f"model.name={model_dir}",
        "model.backend=transformers",
        "model.load_in_4bit=false",
        "model.dtype=float32",
        "model.lora={r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}",
        "trainer.max_steps=2",
        "trainer.per_device_train_batch_size=4",
        "trainer.gradient_accumulation_steps=1",
        "trainer.num_generations=2",
        "trainer.max_completion_length=8",
        "trainer.gradient_checkpointing=false",
        "trainer.bf16=false",
        "trainer.optim=adamw_torch",
        "trainer.save_steps=2",
        "trainer.dataloader_num_workers=0",
        "eval.every=0",
        "eval.num_problems=2",
        "eval.num_samples=2",
        "eval.k=[1, 2]",
        "eval.batch_size=8",
        "checkpoints={every: 1}",
        "logging.wandb=disabled",
        "logging.plots=false",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
def test_config_trains_two_steps(config, tmp_path, tiny_model_dir):
    overrides = shrink(tmp_path, tiny_model_dir)
    raw = (REPO / "experiment_configs" / config).read_text()
    if "name: gsm8k" in raw:  # the hub data set is not cached on test machines: a local file in its format
        data = tmp_path / "gsm8k.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in GSM8K_ROWS))
        overrides += [f"task.data={data}", "task.eval_samples=2", "task.train_samples=null"]
    cfg = load_config(REPO / "experiment_configs" / config, overrides)
    run = run_experiment(cfg)
    assert isinstance(run, RunDir)

    metrics = run.read_metrics()
    train = [r for r in metrics if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    names = [fn["name"] for fn in (cfg.model_dump()["rewards"] or [])] or None
    logged = {k.split("/")[1] for k in train[0] if k.startswith("rewards/") and k.endswith("/mean")}
    if names is not None:
        assert logged == {n.rpartition(":")[2] for n in names}
    assert logged, "no per-reward means were logged"
    evals = [r for r in metrics if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2] and all(0.0 <= r["eval/pass@1"] <= 1.0 for r in evals)
    assert run.adapter_steps() == [1, 2]


def test_dry_run_reports_unavailable_data_and_succeeds(tmp_path, capsys):
    cfg = load_config(
        REPO / "experiment_configs" / "gsm8k.yaml", [f"output_dir={tmp_path}", f"task.data={tmp_path / 'missing.jsonl'}"]
    )
    assert run_experiment(cfg, dry_run=True) is None
    out = capsys.readouterr().out
    assert "note       task 'gsm8k': data file" in out and "does not exist" in out
    assert not (tmp_path / "gsm8k").exists()


def test_dry_run_shows_data_sizes_and_conditions(tmp_path, capsys):
    cfg = load_config(REPO / "experiment_configs" / "addition.yaml", [f"output_dir={tmp_path}"])
    run_experiment(cfg, dry_run=True)
    assert "data       456 training prompts, 24 held-out problems in 12 conditions (5d-2t," in capsys.readouterr().out
