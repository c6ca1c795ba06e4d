"""training_with_unsloth/lengths.py: prompt and completion lengths are measured with the chat template, before the model loads."""

from __future__ import annotations

import types

import pytest

from training_with_unsloth.config import validate
from training_with_unsloth.errors import ConfigError

from .helpers import REPO, tiny_config

CONFIGS = REPO / "experiment_configs"


def _tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_lengths_are_measured_with_the_chat_template_and_refused_in_one_line(tiny_model_dir, tmp_path):
    import tasks
    from training_with_unsloth.lengths import check_sequence_lengths

    tok = _tokenizer(tiny_model_dir)
    raw = tiny_config(tmp_path, tiny_model_dir, **{"model.max_seq_length": 64, "trainer.max_completion_length": 40})
    raw["task"] = {"name": "countdown", "train_size": 50, "eval_size": 10}
    raw["eval"]["max_new_tokens"] = 48
    cfg = validate(raw)
    train, eval_ = tasks.get("countdown", train_size=50, eval_size=10).build(cfg.seed)
    longest = max(
        len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for p in list(train["prompt"]) + list(eval_["prompt"])
    )
    args = types.SimpleNamespace(max_completion_length=40, chat_template_kwargs=None)
    with pytest.raises(ConfigError) as info:
        check_sequence_lengths(cfg, args, tok, train, eval_)
    msg = str(info.value)
    assert "\n" not in msg and f"is {longest} tokens" in msg and "up to 48" in msg and "model.max_seq_length is 64" in msg
    assert f"at least {longest + 48}" in msg
    fits = validate({**raw, "model": {**raw["model"], "max_seq_length": longest + 48}})
    assert check_sequence_lengths(fits, args, tok, train, eval_).needed == longest + 48


def test_lengths_cover_the_longest_variant_a_schedule_serves(tiny_model_dir, tmp_path):
    """mix_oneshot serves one-shot prompts (the longest) early; a curriculum's later phases may be longer."""
    import tasks
    from training_with_unsloth.lengths import prompt_sets

    raw = tiny_config(tmp_path, tiny_model_dir)
    raw["task"] = {"name": "countdown", "train_size": 30, "eval_size": 6, "mix_oneshot": True}
    cfg = validate(raw)
    task = tasks.get("countdown", **cfg.task.params)
    train, eval_ = task.build(cfg.seed)
    task.set_progress(1.0)  # fetched now, every prompt would be zero-shot
    assert all(len(p) == 2 for p in train["prompt"])
    sets = prompt_sets(cfg, train, eval_)
    assert all(len(p) > 2 for p in sets["train set"]), "the stored one-shot prompts must be measured"

    raw = tiny_config(tmp_path, tiny_model_dir)
    raw["curriculum"] = {"phases": [{"params": {"max_operand": 9}, "advance": {"window": 2}}, {"params": {"max_operand": 900}}]}
    sets = prompt_sets(validate(raw), None, tasks.get("small_sums").build(7)[1])
    assert [k for k in sets if k.startswith("train set")] == [
        "train set, curriculum.phases[0]",
        "train set, curriculum.phases[1]",
    ]
    longest = {k: max(len(p[-1]["content"]) for p in v) for k, v in sets.items()}
    assert longest["train set, curriculum.phases[1]"] > longest["train set, curriculum.phases[0]"]


def test_dry_run_refuses_a_max_seq_length_that_cannot_hold_the_completions(capsys):
    """countdown.yaml on a machine without its tokenizer: estimated with the embedded one, certain from the budget."""
    from experiments.run_experiment import main

    assert main([str(CONFIGS / "countdown.yaml"), "--dry-run", "--set", "model.max_seq_length=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the longest prompt (train set) is ") and "\n" not in err
    assert "completions take up to 160" in err and "model.max_seq_length is 64" in err
