"""Reward functions (string and chat completions) and the reward registry."""

import pytest

import rewards
from rewards.countdown import countdown_correct, is_countdown_solution
from rewards.format import format_tags
from rewards.numbers import brevity, last_number_correct
from training_with_unsloth.errors import ConfigError

# Everything TRL passes besides prompts/completions; rewards must ignore what they do not use.
TRL_EXTRAS = {
    "completion_ids": [[1, 2]],
    "trainer_state": object(),
    "log_extra": lambda *a: None,
    "log_metric": lambda *a: None,
    "problem_id": ["x"],
}


def chat(text):
    return [{"role": "assistant", "content": text}]


def both_forms(texts):
    """The same completions as plain strings and as TRL chat completions."""
    return [list(texts), [chat(t) for t in texts]]


COUNTDOWN = {
    "correct": "<think>\n5 * 2 = 10, + 3 = 13\n</think>\n<answer>5 * 2 + 3</answer>",
    "wrong_value": "<think>x</think><answer>5 + 2 + 3</answer>",
    "reused_number": "<think>x</think><answer>5 * 2 + 3 + 0 * 5</answer>",
    "extra_number": "<think>x</think><answer>5 * 2 + 3 - 0</answer>",
    "dropped_number": "<think>x</think><answer>10 + 3</answer>",
    "answer_only": "<answer>(2 * 5) + 3</answer>",
    "earlier_correct": "<answer>5 * 2 + 3</answer> wait, <answer>5 + 2 + 3</answer>",
    "later_correct": "<answer>5 + 2</answer> no: <answer>3 + 2 * 5</answer>",
    "malformed": "<think>hmm</think><answer>5 * 2 + 3",
    "hostile": "<think>x</think><answer>__import__('os').system('echo hi')</answer>",
    "prose_answer": "<think>x</think><answer>5 times 2 plus 3</answer>",
    "empty": "",
}
COUNTDOWN_EXPECTED = {
    "correct": (1.0, 0.2),
    "wrong_value": (0.0, 0.2),
    "reused_number": (0.0, 0.2),
    "extra_number": (0.0, 0.2),
    "dropped_number": (0.0, 0.2),
    "answer_only": (1.0, 0.1),
    "earlier_correct": (0.0, 0.1),
    "later_correct": (1.0, 0.1),
    "malformed": (0.0, 0.1),
    "hostile": (0.0, 0.2),
    "prose_answer": (0.0, 0.2),
    "empty": (0.0, 0.0),
}


@pytest.mark.parametrize("completions", both_forms(COUNTDOWN.values()))
def test_countdown_and_format_rewards(completions):
    n = len(completions)
    columns = {"nums": [[3, 5, 2]] * n, "target": [13] * n}
    correct = countdown_correct([None] * n, completions, **columns, **TRL_EXTRAS)
    fmt = format_tags([None] * n, completions, **columns, **TRL_EXTRAS)
    expected = list(COUNTDOWN_EXPECTED.values())
    assert correct == [c for c, _ in expected]
    assert fmt == pytest.approx([f for _, f in expected])


def test_countdown_multiset_must_match_exactly():
    assert is_countdown_solution("<answer>3 * 3 + 4</answer>", [3, 3, 4], 13)
    assert not is_countdown_solution("<answer>3 * 3 + 4</answer>", [3, 4, 4], 13)
    assert not is_countdown_solution("<answer>3 * 3 + 4</answer>", [3, 4], 13)
    assert not is_countdown_solution("<answer>3 * 3 + 4 * 1</answer>", [3, 3, 4], 13)
    assert is_countdown_solution("<answer>-3 + 4 * 4</answer>", [3, 4, 4], 13)
    assert not is_countdown_solution("<answer>26 / 2</answer>", [26, 2], 13)
    assert is_countdown_solution("<answer>26 / 2</answer>", [26, 2], 13, allow_div=True)


def test_countdown_reward_is_per_sample():
    completions = ["<answer>1 + 2</answer>", "<answer>1 + 2</answer>"]
    assert countdown_correct([None, None], completions, nums=[[1, 2], [1, 2]], target=[3, 4]) == [1.0, 0.0]
    assert countdown_correct([None], completions[:1], nums=[[1, 2]], target=[3], correct=2.5) == [2.5]


def test_format_tags_weights():
    assert format_tags([None], ["<think>a</think><answer>b</answer>"], think=0.3, answer=0.5) == [pytest.approx(0.8)]
    assert format_tags([None], ["<think>a</think>"], think=0.3, answer=0.5) == [pytest.approx(0.3)]
    assert format_tags([None], ["<think>a<answer>b"]) == [0.0]


@pytest.mark.parametrize("completions", both_forms(["12", "The answer is 12.", "-12", "1 + 11 = 12.0", "13", "", "twelve"]))
def test_last_number_correct(completions):
    n = len(completions)
    result = last_number_correct([None] * n, completions, answer=[12] * n, **TRL_EXTRAS)
    assert result == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("completions", both_forms(["", "12", "one two three four five", "word " * 40]))
def test_brevity(completions):
    result = brevity([None] * len(completions), completions, **TRL_EXTRAS)
    assert result == pytest.approx([0.5, 0.48, 0.4, 0.0])
    assert brevity([None], completions[:1], max_bonus=1.0, per_word=0.1) == [1.0]


def test_registry_names_and_binding():
    required = {
        "format_tags", "countdown_correct", "arithmetic_shaped", "addition_correct", "gsm8k_correct", "numeric",
        "digits_only", "xml_count", "length_penalty", "anomaly_free", "last_number_correct", "brevity",
    }  # fmt: skip
    assert required <= set(rewards.names())
    fn = rewards.get("format_tags", think=0.5)
    assert fn.__name__ == "format_tags"
    assert fn(prompts=[None], completions=[chat("<think>x</think><answer>y</answer>")], **TRL_EXTRAS) == [pytest.approx(0.6)]
    fn = rewards.get("countdown_correct", correct=2.0)
    assert fn(prompts=[None], completions=["<answer>2 * 3</answer>"], nums=[[3, 2]], target=[6], correct=[9]) == [2.0]


def test_registry_build_suffixes_duplicates():
    funcs, weights = rewards.build(
        [
            {"name": "format_tags", "weight": 1.0, "params": {}},
            {"name": "countdown_correct", "weight": 2, "params": {"correct": 1.0}},
            {"name": "format_tags", "weight": 0.5, "params": {"think": 1.0}},
            {"name": "format_tags"},
        ]
    )
    assert [f.__name__ for f in funcs] == ["format_tags", "countdown_correct", "format_tags_2", "format_tags_3"]
    assert weights == [1.0, 2.0, 0.5, 1.0]
    assert all(type(w) is float for w in weights)
    assert funcs[2]([None], ["<think>a</think>"]) == [1.0]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: rewards.get("countdown_corect"),
            "unknown reward 'countdown_corect': did you mean 'countdown_correct'?",
        ),
        (
            lambda: rewards.get("format_tags", thnk=0.2),
            "unknown reward parameter 'format_tags.thnk': did you mean 'format_tags.think'?",
        ),
        (lambda: rewards.get("format_tags", think="lots"), "reward parameter 'format_tags.think' must be a number"),
        (lambda: rewards.get("countdown_correct", nums=[1]), "unknown reward parameter 'countdown_correct.nums'"),
        (lambda: rewards.get("rewards.nope:format_tags"), "cannot import reward 'rewards.nope:format_tags'"),
        (lambda: rewards.get("rewards.format:nope"), "cannot import reward 'rewards.format:nope'"),
        (lambda: rewards.get(":format_tags"), "must look like 'package.module:function'"),
        (lambda: rewards.get("rewards.format:annotations"), "is not callable"),
        (lambda: rewards.build([{"name": "format_tags", "wieght": 1}]), "did you mean 'rewards[0].weight'?"),
        (lambda: rewards.build([{"weight": 1}]), "rewards[0] needs a 'name'"),
        (lambda: rewards.build([{"name": "brevity", "weight": "x"}]), "rewards[0].weight must be a number"),
    ],
)
def test_registry_errors_are_one_line_config_errors(call, message):
    with pytest.raises(ConfigError) as info:
        call()
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_import_path_reward():
    fn = rewards.get("rewards.format:format_tags", answer=1.0)
    assert fn.__name__ == "format_tags"
    assert fn([None, None], ["<answer>1</answer>", chat("<think></think>")]) == [1.0, pytest.approx(0.1)]


STRICT_REWARD = """
def strict_reward(prompts, completions, *, answer, bonus=1.0):
    return [len(c) + bonus if len(c) == a else 0.0 for c, a in zip(completions, answer)]


def bare(prompts, completions, **kwargs):
    return [0.0 for _ in completions]
"""


def test_import_path_reward_without_var_kwargs_gets_only_its_arguments(tmp_path, monkeypatch):
    (tmp_path / "user_rewards_mod.py").write_text(STRICT_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = rewards.get("user_rewards_mod:strict_reward", bonus=2.0)
    assert fn.__name__ == "strict_reward"
    assert fn(prompts=["p"], completions=["abc"], answer=[3], **TRL_EXTRAS) == [5.0]
    with pytest.raises(ConfigError, match="reward 'bare' takes no parameters, got 'scale'"):
        rewards.get("user_rewards_mod:bare", scale=2)
