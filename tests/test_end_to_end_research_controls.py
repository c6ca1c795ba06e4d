"""All research controls in one tiny GRPO run, and resume in the middle of a curriculum phase with adaptive KL."""

from __future__ import annotations

import json

import pytest

from training_with_unsloth.config import validate
from training_with_unsloth.controls import callbacks
from training_with_unsloth.experiment import run_experiment
from training_with_unsloth.rundir import RunDir

from .helpers import tiny_config

CONTROLS = {
    "curriculum": {
        "phases": [
            {"params": {"num_terms": 2}, "advance": {"window": 2, "threshold": 0.0}},  # moves on after two batches
            {"params": {"num_terms": 3}},
        ],
        "linear": [{"param": "max_operand", "start": 9, "end": 19}],
    },
    "replay": {"enabled": True, "capacity": 8, "mix": 0.5, "drop_solved": True},
    "kl": {"estimator": "k2", "coef": 0.1, "target": 1e-6, "horizon": 4},  # far below any KL: coef grows every step
    "trainer.entropy_coef": 0.01,
    "trainer.max_steps": 6,
    "trainer.per_device_train_batch_size": 8,
    "trainer.max_completion_length": 8,
    "logging.completions": 2,
    "checkpoints": {"every": 2},
    "eval.every": 3,
}


def train_records(run: RunDir) -> dict[int, dict]:
    return {r["step"]: r for r in run.read_metrics() if r["kind"] == "train"}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model_dir) -> RunDir:
    return run_experiment(validate(tiny_config(tmp_path_factory.mktemp("full"), tiny_model_dir, **CONTROLS)))


@pytest.mark.slow
def test_metrics_show_every_control(full_run):
    train = train_records(full_run)
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    for rec in train.values():
        for key in ("kl/k1", "kl/k2", "kl/k3", "kl/coef", "entropy", "entropy_coef", "curriculum/phase",
                    "curriculum/max_operand", "replay/buffer_size", "replay/zero_std_fresh"):  # fmt: skip
            assert key in rec, key
    coefs = [train[s]["kl/coef"] for s in sorted(train)]
    # step 1 samples from the untrained adapter (policy == reference, KL 0 < target): the coefficient falls once,
    # then the KL is above the tiny target and it rises every step
    assert coefs[1] < coefs[0] and all(b > a for a, b in zip(coefs[1:], coefs[2:], strict=False)), coefs
    assert train[1]["curriculum/phase"] == 0 and train[6]["curriculum/phase"] == 1
    assert train[6]["curriculum/max_operand"] > train[1]["curriculum/max_operand"]


@pytest.mark.slow
def test_run_directory_has_completions_and_best(full_run):
    files = sorted(p.name for p in (full_run.path / "completions").glob("*.jsonl"))
    assert files == ["1.jsonl", "2.jsonl", "4.jsonl", "6.jsonl"]
    line = json.loads((full_run.path / "completions" / "2.jsonl").read_text().splitlines()[0])
    assert {"prompt", "completion", "rewards", "advantage", "total"} <= line.keys()
    assert set(line["rewards"]) == {"last_number_correct", "brevity"}
    meta = json.loads((full_run.checkpoints / "best" / "meta.json").read_text())
    assert meta["metric"] == "eval/greedy_pass@1" and meta["step"] in (0, 3, 6)
    state = json.loads((full_run.trainer / "checkpoint-4" / "research_state.json").read_text())
    assert {"adaptive_kl", "train_source", "best_checkpoint"} <= state.keys()


@pytest.mark.slow
def test_resume_mid_phase_continues_phase_and_coefficient(full_run, tmp_path, tiny_model_dir, monkeypatch):
    raw = tiny_config(tmp_path, tiny_model_dir, **CONTROLS)
    original_on_log = callbacks.MetricsLogger.on_log

    def interrupt_after_step_5(self, args, state, control, logs=None, **kw):
        original_on_log(self, args, state, control, logs=logs, **kw)
        if state.global_step == 5 and logs and "loss" in logs:
            raise KeyboardInterrupt  # Ctrl-C after checkpoint-4, in phase 1, with the coefficient adapted 4 times

    monkeypatch.setattr(callbacks.MetricsLogger, "on_log", interrupt_after_step_5)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(validate(raw))
    run = RunDir(tmp_path / "runs" / "tiny")
    saved = json.loads((run.trainer / "checkpoint-4" / "research_state.json").read_text())
    assert saved["train_source"]["phase"] == 1

    monkeypatch.setattr(callbacks.MetricsLogger, "on_log", original_on_log)
    run_experiment(validate(raw), resume=True)
    resumed, full = train_records(run), train_records(full_run)
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    assert resumed[5]["curriculum/phase"] == 1  # not back to phase 0
    # the first resumed step uses the coefficient saved at step 4, adapted once more: the uninterrupted values
    assert resumed[5]["kl/coef"] == pytest.approx(full[5]["kl/coef"], rel=1e-9)
    assert resumed[6]["kl/coef"] > resumed[5]["kl/coef"]
