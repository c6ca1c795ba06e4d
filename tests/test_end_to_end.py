"""Short GRPO runs on the CPU: the run directory contract, resume, and the embedded model."""

from __future__ import annotations

import json

import pytest
import yaml

from training_with_unsloth.config import validate
from training_with_unsloth.controls import callbacks
from training_with_unsloth.experiment import run_experiment
from training_with_unsloth.rundir import RunDir

from .helpers import REPO, tiny_config

TRAIN_KEYS = ("reward", "loss", "rewards/last_number_correct/mean", "rewards/brevity/mean", "completions/mean_length")


def records(run: RunDir, kind: str) -> dict[int, dict]:
    return {r["step"]: r for r in run.read_metrics() if r["kind"] == kind}


@pytest.fixture(scope="module")
def tiny_run(tiny_run_dir) -> RunDir:
    return RunDir(tiny_run_dir)


@pytest.mark.slow
def test_run_directory_is_complete(tiny_run: RunDir):
    run = tiny_run
    saved = yaml.safe_load(run.config.read_text())
    assert saved["name"] == "tiny" and saved["trainer"]["max_steps"] == 4 and saved["eval"]["k"] == [1, 2]

    env = json.loads(run.env.read_text())
    assert env["backend"] == "transformers" and env["seed"] == 7
    assert env["packages"]["trl"] == "1.15.0" and env["packages"]["transformers"] == "5.17.0"
    assert env["device"]["type"] in ("cpu", "cuda") and "commit" in env["git"]

    train = records(run, "train")
    assert sorted(train) == [1, 2, 3, 4]
    for rec in train.values():
        for key in TRAIN_KEYS:
            assert isinstance(rec[key], float | int), key
    assert any(r["kind"] == "summary" for r in run.read_metrics())
    # the KL diagnostics need a reference pass of their own here (beta 0): every second step by default
    assert [("kl/k3" in train[s]) for s in (1, 2, 3, 4)] == [True, False, True, False]

    evals = records(run, "eval")
    assert sorted(evals) == [0, 2, 4]
    for step, rec in evals.items():
        assert 0.0 <= rec["eval/pass@1"] <= rec["eval/pass@2"] <= 1.0
        assert 0.0 <= rec["eval/greedy_pass@1"] <= 1.0
        assert {"eval/rewards/last_number_correct", "eval/rewards/brevity", "eval/reward"} <= rec.keys()
        lines = [json.loads(x) for x in run.passk_file(step).read_text().splitlines()]
        assert len(lines) == 3
        for line in lines:
            assert len(line["samples"]) == 2 and len(line["correct"]) == 2 and "greedy" in line
            assert line["num_correct"] == sum(line["correct"])
            assert len(line["rewards"]["brevity"]) == 2 and line["prompt"][0]["role"] == "user"

    assert run.adapter_steps() == [2, 4]
    for step in (2, 4):
        d = run.adapter_dir(step)
        assert (d / "adapter_model.safetensors").is_file() and (d / "adapter_config.json").is_file()
        meta = json.loads((d / "meta.json").read_text())
        assert meta["step"] == step and "reward" in meta["train_metrics"] and meta["latest_eval"]["step"] == step
    assert not list(run.checkpoints.glob(".*")), "no temporary directories left behind"
    assert sorted(p.name for p in run.trainer.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert run.last_trainer_checkpoint().name == "checkpoint-4"
    topics = {"rewards", "kl", "passk", "entropy", "length", "time"}
    assert {p.name for p in run.plots.glob("*.png")} == {f"{t}.png" for t in topics}
    best = json.loads((run.checkpoints / "best" / "meta.json").read_text())
    assert best["metric"] == "eval/greedy_pass@1" and best["step"] in (0, 2, 4)

    # where the time went: per step in metrics.jsonl, over the run in timing.json; the phases add up to the wall time
    for rec in train.values():
        phases = {k: v for k, v in rec.items() if k.startswith("time/") and k != "time/step"}
        assert {"time/generation", "time/loss", "time/other"} <= phases.keys()
        assert sum(phases.values()) == pytest.approx(rec["time/step"], rel=1e-6)
    timing = json.loads((run.path / "timing.json").read_text())
    assert timing["steps"] == 4
    assert {"generation", "rewards", "loss", "optimizer", "eval", "checkpoint"} <= timing["seconds"].keys()
    assert sum(timing["seconds"].values()) == pytest.approx(timing["wall_s"], rel=0.05)
    assert sum(timing["share"].values()) == pytest.approx(1.0, rel=0.05)
    assert timing["timer"]["overhead_share"] < 0.001


@pytest.mark.slow
def test_adapter_snapshot_loads_on_the_base_model(tiny_run: RunDir, tiny_model_dir):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, tiny_run.adapter_dir(4))
    saved = load_file(tiny_run.adapter_dir(4) / "adapter_model.safetensors")
    lora_b = {k: v for k, v in saved.items() if "lora_B" in k}
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b.values()), "training moved the LoRA B matrices"
    params = dict(model.named_parameters())
    name = next(iter(lora_b))
    live = next(v for k, v in params.items() if k.replace(".default", "").endswith(name.removeprefix("base_model.model.")))
    torch.testing.assert_close(live, lora_b[name])


@pytest.mark.slow
def test_existing_run_is_not_overwritten(tiny_run: RunDir, tiny_model_dir):
    from training_with_unsloth.errors import UserError

    raw = tiny_config(tiny_run.path.parent.parent, tiny_model_dir)
    with pytest.raises(UserError, match="already holds a run: pass --resume"):
        run_experiment(validate(raw))
    with pytest.raises(UserError, match="seed differ"):
        run_experiment(validate({**raw, "seed": 8}), resume=True)


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tiny_run: RunDir, tiny_model_dir, tmp_path, monkeypatch):
    raw = tiny_config(tmp_path, tiny_model_dir)  # same settings as tiny_run, another directory
    original_on_log = callbacks.MetricsLogger.on_log

    def interrupt_after_step_3(self, args, state, control, logs=None, **kw):
        original_on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step == 3:
            raise KeyboardInterrupt  # as Ctrl-C would, after checkpoint-2 and the step-3 log

    monkeypatch.setattr(callbacks.MetricsLogger, "on_log", interrupt_after_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate(raw))
    run = RunDir(tmp_path / "runs" / "tiny")
    assert run.last_trainer_checkpoint().name == "checkpoint-2" and 3 in records(run, "train")

    monkeypatch.setattr(callbacks.MetricsLogger, "on_log", original_on_log)
    run_experiment(validate(raw), resume=True)

    full, resumed = records(tiny_run, "train"), records(run, "train")
    assert sorted(resumed) == [1, 2, 3, 4]  # step 3 redone once, not duplicated
    for step in (1, 2, 3, 4):
        for key in TRAIN_KEYS:
            assert resumed[step][key] == pytest.approx(full[step][key], rel=1e-4, abs=1e-6), (step, key)
    assert records(run, "eval")[4]["eval/pass@1"] == records(tiny_run, "eval")[4]["eval/pass@1"]
    assert run.adapter_steps() == [2, 4]
    assert len(json.loads(run.env.read_text())["resumes"]) == 1


@pytest.mark.slow
def test_quickstart_config_runs_on_the_embedded_model(tmp_path):
    from training_with_unsloth.config import load_config

    cfg = load_config(
        REPO / "experiment_configs" / "quickstart.yaml",
        [f"output_dir={tmp_path}", "trainer.max_steps=2", "eval.num_problems=2", "eval.num_samples=2",
         "eval.k=[1, 2]", "checkpoints.log_spaced=2", "logging.wandb=disabled", "trainer.max_completion_length=12"],
    )  # fmt: skip
    run = run_experiment(cfg)
    assert json.loads(run.env.read_text())["model_path"].endswith("smollm2-135m-instruct.v2")
    assert run.adapter_steps() == [1, 2]
    assert sorted(records(run, "eval")) == [0, 2] and sorted(records(run, "train")) == [1, 2]
    first = json.loads(run.passk_file(0).read_text().splitlines()[0])
    assert first["prompt"][0]["content"].startswith("What is ") and all(isinstance(s, str) for s in first["samples"])
