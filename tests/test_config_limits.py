"""What the config reader refuses in one line, fast and in little memory: hostile YAML, sizes that would
exhaust planning, and values no run can train with (issue: nothing nonsensical accepted, no traceback)."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from training_with_unsloth.config import CheckpointConfig, EvalConfig, load_config, validate
from training_with_unsloth.errors import ConfigError
from training_with_unsloth.schedule import Steps, checkpoint_steps, eval_steps
from training_with_unsloth.yaml_reader import MAX_YAML_BYTES, YAMLLimitError, read_yaml_file, yaml_load

from .helpers import REPO

QUICKSTART = REPO / "experiment_configs" / "quickstart.yaml"


def alias_bomb(indent: str = "") -> str:
    """Nine anchors, each a list of ten aliases of the one before: 10**9 values once expanded, 90 as written."""
    lines = [f"{indent}a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(8):
        prev, name = chr(97 + i), chr(98 + i)
        lines.append(f"{indent}{name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    return "\n".join(lines) + "\n"


def refused(tmp_path: Path, text: str | bytes, *overrides: str) -> str:
    path = tmp_path / "exp.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- the YAML reader (item 3)


@pytest.mark.parametrize("where", ["trainer:\n  model_init_kwargs:\n", "rewards:\n  - name: last_number_correct\n    params:\n"])
def test_an_alias_bomb_is_refused_without_expanding_it(tmp_path, where):
    indent = "    " if where.startswith("trainer") else "      "
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    message = refused(tmp_path, "name: bomb\n" + where + alias_bomb(indent))
    assert time.perf_counter() - start < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing was expanded
    assert "exp.yaml: refused" in message and "aliases" in message and "100,000" in message


def test_deep_nesting_recursive_aliases_and_repeated_keys_are_refused(tmp_path):
    assert "nested more than 64 levels deep" in refused(tmp_path, "name: x\ntask: " + "[" * 2000 + "]" * 2000 + "\n")
    assert "recursive alias" in refused(tmp_path, "name: x\ntrainer:\n  model_init_kwargs: &k {a: *k}\n")
    message = refused(tmp_path, "name: x\nseed: 1\ntrainer: {}\nseed: 2\n")
    assert "key 'seed' appears twice in one mapping (lines 2 and 4)" in message
    assert "key 'r' appears twice" in refused(tmp_path, "name: x\nmodel:\n  lora: {r: 4, r: 8}\n")
    # a merge key is not a repeat: YAML's `<<` lets explicit keys override merged ones
    assert yaml_load("base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  a: 3\n")["x"] == {"a": 3, "b": 2}


def test_bytes_that_are_not_utf8_and_oversized_files_are_one_line(tmp_path):
    message = refused(tmp_path, b"name: caf\xe9\n")
    assert "not UTF-8 text (byte 0xe9 on line 1): save the config as UTF-8" in message
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.truncate(MAX_YAML_BYTES + 1)  # sparse: the size is refused before anything is read
    with pytest.raises(ConfigError, match=r"big.yaml: 1,048,577 bytes, more than the 1,048,576"):
        read_yaml_file(big)


def test_an_empty_config_or_one_that_is_not_a_mapping_is_refused(tmp_path):
    for text in ("", "# only a comment\n", "{}\n"):
        assert "the config is empty: write its sections" in refused(tmp_path, text)
    assert "expected a mapping of sections at the top level, found a list" in refused(tmp_path, "- a\n- b\n")


def test_set_values_are_read_within_the_same_bounds(tmp_path):
    message = refused(tmp_path, "name: x\n", "trainer.model_init_kwargs=" + "[" * 3000 + "]" * 3000)
    assert message.startswith("--set trainer.model_init_kwargs: value '[[[[") and "nested more than 64" in message
    assert "..." in message and len(message) < 250  # the value is cut, not echoed whole
    with pytest.raises(YAMLLimitError):
        yaml_load("x" * (MAX_YAML_BYTES + 1))


# ---------------------------------------------------------------------------- planning does not grow (item 2)


def test_schedules_hold_their_rule_not_their_steps():
    huge = 10**9
    start = time.perf_counter()
    evals = eval_steps(EvalConfig(every=1), huge)
    ckpts = checkpoint_steps(CheckpointConfig(every=1), huge)
    assert len(evals) == huge + 1 and len(ckpts) == huge
    assert 0 in evals and 123_456_789 in evals and huge in evals and huge + 1 not in evals
    assert evals.head(4) == [0, 1, 2, 3] and evals.final() == huge
    assert time.perf_counter() - start < 0.1
    # the same values as the sets they replace, on small runs
    assert checkpoint_steps(CheckpointConfig(every=10), 35) == [10, 20, 30, 35]
    assert eval_steps(EvalConfig(every=7), 20) == [0, 7, 14, 20]
    assert not Steps() and Steps(every=5, last=3) == [] and not Steps(every=5, last=3)
    assert list(Steps(every=3, last=10, listed=frozenset({0, 6, 10}))) == [0, 3, 6, 9, 10]


def test_a_huge_max_steps_is_refused_and_a_large_one_plans_in_constant_memory():
    raw = {"name": "x", "trainer": {"max_steps": 10**15}}
    with pytest.raises(ConfigError, match=r"trainer.max_steps 1,000,000,000,000,000 is beyond 1,000,000,000"):
        validate(raw)
    from training_with_unsloth.plan import plan_text, prepare

    cfg = validate({"name": "x", "trainer": {"max_steps": 10**9}, "eval": {"every": 1}, "checkpoints": {"every": 1}})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    text = plan_text(prepare(cfg, cuda=False), cuda=False)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB
    assert "at steps 0, 1, 2" in text and "1000000000 (1000000001 in all)" in text


def test_sizes_that_would_exhaust_memory_are_bounded_where_they_are_read():
    import tasks

    for params, message in [
        ({"train_size": 10**12}, "task.train_size: Input should be less than or equal to 100000"),
        ({"eval_size": 10**12}, "task.eval_size: Input should be less than or equal to 100000"),
    ]:
        with pytest.raises(ConfigError, match=message):
            tasks.get("small_sums", **params)
    with pytest.raises(ConfigError, match="more than 100,000"):
        tasks.get("addition", digits=list(range(5, 31)), terms=list(range(2, 11)), per_condition=1000)
    for key, value in [
        ("checkpoints", {"log_spaced": 10**12}),
        ("model", {"lora": {"r": 10**12}}),
        ("model", {"max_seq_length": 10**12}),
        ("eval", {"num_samples": 10**12}),
        ("eval", {"batch_size": 10**12}),
        ("eval", {"num_problems": 10**12}),
        ("trainer", {"per_device_train_batch_size": 10**12, "num_generations": 2}),
        ("trainer", {"num_generations": 10**12}),
    ]:
        with pytest.raises(ConfigError):
            validate({"name": "x", key: value})


# ---------------------------------------------------------------------------- values that cannot train (item 6)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"trainer": {"learning_rate": float("nan")}}, "trainer.learning_rate: nan is not a finite number"),
        ({"trainer": {"learning_rate": float("inf")}}, "trainer.learning_rate: inf is not a finite number"),
        ({"trainer": {"learning_rate": -1e-4}}, "trainer.learning_rate: -0.0001 is out of range: it must be >= 0"),
        ({"trainer": {"per_device_train_batch_size": 0}}, "trainer.per_device_train_batch_size: 0 is out of range"),
        ({"trainer": {"gradient_accumulation_steps": 0}}, "trainer.gradient_accumulation_steps: 0 is out of range"),
        ({"trainer": {"max_completion_length": 0}}, "trainer.max_completion_length: 0 is out of range"),
        ({"trainer": {"temperature": 0}}, "trainer.temperature: 0 is out of range: it must be > 0"),
        ({"trainer": {"temperature": float("inf")}}, "trainer.temperature: inf is not a finite number"),
        ({"trainer": {"top_p": 1.5}}, r"trainer.top_p: 1.5 is out of range: it must be > 0 and <= 1"),
        ({"trainer": {"beta": -0.1}}, "trainer.beta: -0.1 is out of range: it must be >= 0"),
        ({"eval": {"temperature": 0}}, "eval.temperature: Input should be greater than 0"),
        ({"eval": {"temperature": float("inf")}}, "eval.temperature: inf is not a finite number"),
        ({"rewards": [{"name": "last_number_correct", "weight": float("nan")}]}, "rewards.0.weight: nan is not a finite"),
        ({"rewards": [{"name": "brevity", "params": {"max_bonus": float("nan")}}]}, "rewards.0.params.max_bonus: nan is not"),
        ({"seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"seed": 2**32}, "seed: Input should be less than or equal to 4294967295"),
        ({"name": "a" * 300}, "name: String should have at most 128 characters"),
        ({"checkpoints": {"steps": [5, 500]}, "trainer": {"max_steps": 20}}, r"checkpoints.steps \[500\] lie beyond"),
        ({"trainer": {"max_steps": 2.5}}, "trainer.max_steps must be a positive number of optimizer steps"),
    ],
)
def test_values_no_run_can_train_with_are_refused(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        validate({"name": "x", **override})
    assert "\n" not in str(info.value)


def test_a_reward_that_returns_nan_is_stopped_with_its_name():
    from rewards.registry import RewardError, guard

    def shaky(prompts, completions, **kwargs):
        return [1.0, float("nan")]

    with pytest.raises(RewardError, match=r"reward 'shaky' returned nan: rewards must be finite numbers or None"):
        guard(shaky)(["p", "p"], ["a", "b"])


def test_the_shipped_configs_stay_valid():
    for path in sorted((REPO / "experiment_configs").glob("*.yaml")):
        load_config(path)
