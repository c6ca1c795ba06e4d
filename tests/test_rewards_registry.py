"""rewards_on_error (raise | zero | skip), output checks, and settings that dataset columns cannot override."""

from __future__ import annotations

import warnings

import pytest

import rewards
from rewards.registry import RewardError, build, guard
from training_with_unsloth.config import validate
from training_with_unsloth.errors import ConfigError


def fragile(prompts, completions, *, answer, **kwargs):
    """Fails on a completion that says 'boom'; else 1.0 when it contains the answer."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        text = c if isinstance(c, str) else c[0]["content"]
        if "boom" in text:
            raise ZeroDivisionError("division by zero")
        out.append(1.0 if str(a) in text else 0.0)
    return out


COMPLETIONS = ["the answer is 4", "boom " + "x" * 500, [{"role": "assistant", "content": "5"}]]
COLUMNS = {"answer": [4, 4, 5], "trainer_state": object()}


def test_raise_names_the_reward_and_shows_the_completion():
    fn = guard(fragile, "raise")
    with pytest.raises(RewardError) as err:
        fn(["p"] * 3, COMPLETIONS, **COLUMNS)
    message = str(err.value)
    assert "reward 'fragile'" in message and "completion 1 of 3" in message
    assert "'boom xxx" in message and "505 chars" in message and "ZeroDivisionError" in message
    assert "rewards_on_error" in message and "\n" not in message


def test_zero_and_skip_score_only_the_failing_completion():
    logged = {}
    kwargs = {**COLUMNS, "log_metric": lambda name, value: logged.__setitem__(name, value)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert guard(fragile, "zero")(["p"] * 3, COMPLETIONS, **kwargs) == [1.0, 0.0, 1.0]
        assert guard(fragile, "skip")(["p"] * 3, COMPLETIONS, **kwargs) == [1.0, None, 1.0]
    assert logged == {"rewards/fragile/errors": 1.0}
    assert any("failed on 1 of 3" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "result, fragment",
    [([1.0], "list of 2 floats"), ("1.0", "got str"), ([1.0, "x"], "returned 'x'"), ([1.0, float("inf")], "inf")],
)
def test_malformed_output_is_an_error_whatever_on_error_says(result, fragment):
    def bad(prompts, completions, **kwargs):
        return result

    with pytest.raises(RewardError, match=fragment):
        guard(bad, "zero")(["p", "p"], ["a", "b"])


def test_none_and_ints_pass_through_as_floats():
    def mixed(prompts, completions, **kwargs):
        return [1, None]

    assert guard(mixed)(["p", "p"], ["a", "b"]) == [1.0, None]


def test_build_guards_every_reward_and_checks_the_mode():
    funcs, weights = build(
        [{"name": "format_tags"}, {"name": "tests.test_rewards_registry:fragile", "weight": 2}], on_error="skip"
    )
    assert [f.__name__ for f in funcs] == ["format_tags", "fragile"] and weights == [1.0, 2.0]
    assert funcs[1](["p"] * 3, COMPLETIONS, **COLUMNS) == [1.0, None, 1.0]
    with pytest.raises(ConfigError, match="rewards_on_error must be one of raise, zero, skip"):
        build([{"name": "format_tags"}], on_error="ignore")  # type: ignore[arg-type]


def test_config_key_is_validated():
    base = {"name": "x", "task": {"name": "small_sums"}}
    assert validate(base).rewards_on_error == "raise"
    assert validate({**base, "rewards_on_error": "skip"}).rewards_on_error == "skip"
    with pytest.raises(ConfigError, match="rewards_on_error"):
        validate({**base, "rewards_on_error": "ignore"})


def test_a_column_never_overrides_a_setting_of_the_same_name():
    """format_tags' `answer` weight keeps its default when the dataset has an `answer` column (GSM8K)."""
    fn = rewards.get("format_tags")
    text = "<think>x</think><answer>7</answer>"
    assert fn(["p"], [text], answer=["7"]) == pytest.approx([0.2])
    assert rewards.get("format_tags", answer=0.5)(["p"], [text], answer=["7"]) == pytest.approx([0.6])
