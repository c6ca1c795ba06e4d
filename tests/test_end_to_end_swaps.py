"""YAML-only swaps on a real (tiny) GRPO run: a user's module:function reward, reward weights, mix_oneshot, eval formats."""

from __future__ import annotations

from collections import defaultdict

import pytest

from training_with_unsloth.config import validate
from training_with_unsloth.experiment import run_experiment

from .helpers import tiny_config

SEEN: dict[int, list[int]] = defaultdict(list)  # global step -> number of messages of each prompt scored


def record_prompts(prompts, completions, *, trainer_state=None, **kwargs):
    """A user-written reward (referenced as tests.test_end_to_end_swaps:record_prompts): logs prompt sizes, scores 0."""
    if "log_metric" in kwargs:  # only TRL's training calls pass it, not Pass@K evaluation
        SEEN[trainer_state.global_step + 1].extend(len(p) for p in prompts)
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def countdown_run(tmp_path_factory, tiny_model_dir):
    SEEN.clear()
    tmp = tmp_path_factory.mktemp("swap")
    raw = tiny_config(
        tmp,
        tiny_model_dir,
        **{
            "task": {
                "name": "countdown",
                "mix_oneshot": True,
                "eval_formats": ["zero_shot", "one_shot"],
                "train_size": 200,
                "eval_size": 4,
            },
            "rewards": [
                {"name": "countdown_shaped", "weight": 1.0},
                {"name": "tests.test_end_to_end_swaps:record_prompts", "weight": 0.5},
            ],
            "trainer.per_device_train_batch_size": 16,
            "eval.num_problems": 4,
        },
    )
    return run_experiment(validate(raw))


@pytest.mark.slow
def test_user_reward_is_called_and_logged(countdown_run):
    train = [r for r in countdown_run.read_metrics() if r["kind"] == "train"]
    assert all("rewards/record_prompts/mean" in r and "rewards/countdown_shaped/mean" in r for r in train)
    assert sorted(SEEN) == [1, 2, 3, 4] and all(len(v) == 16 for v in SEEN.values())


@pytest.mark.slow
def test_one_shot_share_decays_during_training(countdown_run):
    share = {step: sum(n == 4 for n in sizes) / len(sizes) for step, sizes in SEEN.items()}  # 4 messages: one-shot
    assert share[1] == 1.0  # progress 0: every prompt carries the worked example
    assert share[4] < 1.0  # progress has moved on by the last step
    assert set(n for sizes in SEEN.values() for n in sizes) <= {2, 4}


@pytest.mark.slow
def test_eval_reports_each_prompt_format(countdown_run):
    evals = [r for r in countdown_run.read_metrics() if r["kind"] == "eval"]
    for rec in evals:
        assert {"eval/condition/zero_shot/sample_accuracy", "eval/condition/one_shot/sample_accuracy"} <= rec.keys()


@pytest.mark.slow
def test_reward_weight_swap_changes_the_logged_total(tmp_path, tiny_model_dir):
    """The same run with a reward weighted 0 logs the same per-reward mean but a different total."""
    totals = {}
    for weight in (1.0, 0.0):
        raw = tiny_config(
            tmp_path / str(weight),
            tiny_model_dir,
            **{
                "rewards": [{"name": "brevity", "weight": weight}, {"name": "last_number_correct", "weight": 1.0}],
                "trainer.max_steps": 1,
                "eval.enabled": False,
                "checkpoints": {"steps": [1]},
                "logging.plots": False,
            },
        )
        rec = next(r for r in run_experiment(validate(raw)).read_metrics() if r["kind"] == "train")
        totals[weight] = rec
    brevity = totals[1.0]["rewards/brevity/mean"]
    assert brevity == pytest.approx(totals[0.0]["rewards/brevity/mean"]) and brevity > 0
    assert totals[1.0]["reward"] - totals[0.0]["reward"] == pytest.approx(brevity, rel=1e-4)
