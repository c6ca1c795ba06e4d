"""Config validation: one-line errors with suggestions, overrides, TRL field snapshot, CLI behaviour."""

import subprocess
import sys

import pytest
import yaml

from training_with_unsloth.config import ExperimentConfig, load_config, validate
from training_with_unsloth.errors import ConfigError
from training_with_unsloth.grpo_fields import GRPO_CONFIG_FIELDS, installed_fields
from training_with_unsloth.yaml_reader import yaml_load

from .helpers import REPO, tiny_config


def err(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"trainer": {"learning_rat": 1e-5}}, "unknown key 'trainer.learning_rat': did you mean 'trainer.learning_rate'?"),
        ({"model": {"lora": {"alpah": 8}}}, "unknown key 'model.lora.alpah': did you mean 'model.lora.alpha'?"),
        ({"evl": {}}, "unknown key 'evl': did you mean 'eval'?"),
        ({"checkpoints": {"log_space": 4}}, "did you mean 'checkpoints.log_spaced'?"),
        ({"rewards": [{"name": "brevity", "wieght": 2}]}, "did you mean 'rewards.0.weight'?"),
        ({"logging": {"wandb": "yes"}}, "logging.wandb: Input should be 'offline', 'online' or 'disabled'"),
        ({"trainer": {"seed": 1}}, "trainer.seed is set by the toolkit: set the top-level `seed`"),
        ({"trainer": {"output_dir": "x"}}, "trainer.output_dir is set by the toolkit"),
        ({"eval": {"k": [1, 16], "num_samples": 8}}, "eval.k values [16] must lie in 1..eval.num_samples (8)"),
        ({"checkpoints": {"every": 5, "steps": [1]}}, "give only one of every, log_spaced, steps"),
        ({"trainer": {"max_steps": 0}}, "trainer.max_steps must be a positive number"),
    ],
)
def test_one_line_errors(raw, expected):
    assert expected in err({"name": "x", **raw})


def test_inconsistent_batch_settings():
    msg = err({"name": "x", "trainer": {"per_device_train_batch_size": 6, "num_generations": 4}})
    assert "per_device_train_batch_size 6" in msg and "num_generations 4" in msg
    assert "num_generations is 1" in err({"name": "x", "trainer": {"per_device_train_batch_size": 4, "num_generations": 1}})
    cfg = validate(
        {"name": "x", "trainer": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 4, "num_generations": 8}}
    )
    assert cfg.trainer["num_generations"] == 8


def test_defaults_and_shorthands():
    cfg = validate({"name": "x", "model": "embedded", "task": "countdown"})
    assert cfg.model.name == "embedded" and cfg.model.backend == "auto"
    assert cfg.task.name == "countdown" and cfg.task.params == {}
    assert cfg.trainer["max_steps"] == 200 and cfg.trainer["logging_steps"] == 1
    assert cfg.checkpoints.log_spaced == 8
    assert cfg.logging.wandb == "offline"
    assert str(cfg.run_dir) == "runs/x"


def test_overrides_and_resolved_round_trip(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"model": "embedded", "rewards": [{"name": "brevity"}], "trainer": {"max_steps": 5}}))
    cfg = load_config(
        path,
        ["trainer.learning_rate=2e-4", "model.lora.r=8", "rewards.0.weight=0.5", "task.num_terms=3", "eval.k=[1, 2]"],
    )
    assert cfg.name == "exp"  # defaults to the file name
    assert cfg.trainer["learning_rate"] == 2e-4 and cfg.trainer["max_steps"] == 5
    assert cfg.model.lora.r == 8 and cfg.model.name == "embedded"
    assert cfg.rewards[0].weight == 0.5 and cfg.task.params == {"num_terms": 3}
    assert cfg.eval.k == [1, 2]
    again = validate(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["trainer.learning_rate"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config(path, ["rewards.3.weight=1"])
    with pytest.raises(ConfigError, match="did you mean 'trainer.max_steps'"):
        load_config(path, ["trainer.max_step=3"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_grpo_field_snapshot_matches_installed_trl():
    assert set(GRPO_CONFIG_FIELDS) == installed_fields()


def test_all_sections_documented_defaults_are_valid():
    # Every default must itself validate (docs/configuration.md is generated from these).
    cfg = ExperimentConfig(name="x")
    assert validate(cfg.model_dump(mode="json")) == validate({"name": "x"})


def test_cli_typo_is_one_line_without_traceback():
    proc = subprocess.run(
        [sys.executable, "experiments/run_experiment.py", "experiment_configs/countdown.yaml", "--set", "trainer.learning_rat=1"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown key 'trainer.learning_rat': did you mean 'trainer.learning_rate'?"
    assert "Traceback" not in proc.stdout + proc.stderr


def test_scientific_notation_without_dot_is_a_float(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("trainer:\n  learning_rate: 1e-5\n  max_steps: 10\n")
    cfg = load_config(path, ["trainer.beta=4e-2"])
    assert cfg.trainer["learning_rate"] == 1e-5 and cfg.trainer["beta"] == 0.04
    assert yaml_load("a: 1e3\nb: 7\nc: 1.5\nd: name") == {"a": 1000.0, "b": 7, "c": 1.5, "d": "name"}


def test_yaml_12_booleans():
    assert yaml_load("a: no\nb: yes\nc: true\nd: False\ne: off") == {"a": "no", "b": "yes", "c": True, "d": False, "e": "off"}


def _keys(model, prefix=""):
    """Every key of the schema, dotted; `a[].b` for key b of each entry of the list a."""
    from typing import get_args

    from pydantic import BaseModel

    def models(ann, in_list=False):
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield ann, in_list
        for arg in get_args(ann):
            yield from models(arg, in_list or getattr(ann, "__origin__", None) is list)

    for name, field in model.model_fields.items():
        yield f"{prefix}{name}"
        for sub, in_list in models(field.annotation):
            yield from _keys(sub, f"{prefix}{name}{'[]' if in_list else ''}.")


def test_configuration_docs_are_current_and_document_every_config_key():
    from training_with_unsloth.config_docs import render

    text = (REPO / "docs" / "configuration.md").read_text()
    assert text == render(), "docs/configuration.md is stale: run `uv run python -m training_with_unsloth.config_docs`"
    keys = list(_keys(ExperimentConfig))
    assert {"checkpoints.log_spaced", "rewards[].weight", "curriculum.phases[].advance.window", "callbacks[].name"} <= set(keys)
    missing = [k for k in keys if f"| `{k}` |" not in text]
    assert not missing, f"docs/configuration.md lacks {missing}"


def test_trainer_values_checked_up_front():
    assert (
        err({"name": "x", "trainer": {"loss_type": "dr-grpo"}})
        == "trainer.loss_type: unknown value 'dr-grpo': did you mean 'dr_grpo'?"
    )


def test_trainer_value_types_checked_against_grpo_config(tmp_path):
    from training_with_unsloth.assembly import build_grpo_config
    from training_with_unsloth.rundir import RunDir

    cfg = validate({"name": "x", "trainer": {"learning_rate": "fast"}})
    with pytest.raises(ConfigError, match=r"trainer.learning_rate: Input should be a valid number.*'fast'"):
        build_grpo_config(cfg, RunDir(tmp_path), [1.0], cuda=False)
    args = build_grpo_config(validate({"name": "x", "trainer": {"learning_rate": 3e-4}}), RunDir(tmp_path), [1.0], cuda=False)
    assert args.learning_rate == 3e-4 and args.use_cpu and args.seed == 42 and args.output_dir == str(tmp_path / "trainer")


def test_use_vllm_is_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"trainer.use_vllm: not supported yet") as info:
        validate({"name": "x", "trainer": {"use_vllm": True}})
    assert "\n" not in str(info.value)
    assert validate({"name": "x", "trainer": {"use_vllm": False}}).trainer["use_vllm"] is False


def test_best_checkpoint_metric_cannot_be_an_interval(tmp_path):
    raw = tiny_config(tmp_path, tmp_path, **{"checkpoints.best": "eval/pass@1_ci"})
    with pytest.raises(ConfigError, match="is an interval, not a value: use eval/pass@1"):
        validate(raw)
