"""rewards/countdown.py: reading the last expression, and countdown_correct / _shaped / _tinyzero on tagged and natural text."""

import time

import pytest

import rewards
from rewards.countdown import countdown_correct, countdown_shaped, countdown_tinyzero, last_expression
from training_with_unsloth.errors import ConfigError

TRL_EXTRAS = {"completion_ids": [[1]], "trainer_state": None, "log_extra": None, "log_metric": None}


# -- natural-format extraction -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("So 5 * 2 + 3 = 13.", "5 * 2 + 3"),
        ("Try (3 + 5) * 2 = 16, too big. Then 5*2+3 = 13, done", "5*2+3"),
        ("First 5 * 2 + 3 = 13. Check: 10 + 3 = 13", "10 + 3"),  # the last one counts, as in the seed
        ("We get (5 * 2) + 3 - that is 13", "(5 * 2) + 3"),
        ("(final: 5 * 2 + 3)", "5 * 2 + 3"),
        ("((5 * 2) + 3 is it", "(5 * 2) + 3"),
        ("- 5 * 2 + 3", "5 * 2 + 3"),
        ("1. 5 * 2 + 3", "5 * 2 + 3"),
        ("5 * 2 + 3\n= 13\nThe answer is 13.", "5 * 2 + 3"),
        ("3 + 2 * 5 <answer></answer>", "3 + 2 * 5"),
        ("The answer is 13", None),
        ("I cannot find one.", None),
        ("", None),
        ("3.5 + 2", None),  # part of a decimal, not an expression
        ("1,000 + 3", None),
        ("26 / 2", None),  # no division unless allowed
        ("__import__('os').system('rm -rf /')", None),
        ("9**9**9", None),
        ("2 ** 100", None),
        ("(" * 30 + "1 + 2" + ")" * 30, None),  # deeper than safe_eval allows
        ("(" * 5000 + "1 + 2" + ")" * 5000, None),
        ("1 + " * 100_000 + "1", None),  # one run, too long to be an answer
    ],
)
def test_last_expression(text, expected):
    assert last_expression(text) == expected


def test_last_expression_with_division_and_on_huge_text():
    assert last_expression("13 = 26 / 2", allow_div=True) == "26 / 2"
    assert last_expression("1 / 0 + 2", allow_div=True) is None
    start = time.perf_counter()
    assert last_expression("word " * 1_000_000 + "so 5 * 2 + 3") == "5 * 2 + 3"
    assert last_expression("1 1 x " * 1_000_000) is None
    assert last_expression("1 + (2 x " * 1_000_000) is None  # every candidate fails: the scan gives up
    assert time.perf_counter() - start < 2.0


# -- rewards -------------------------------------------------------------------------------------

HUGE = "<think>" + "x" * 1_000_000 + "</think><answer>" + "1 + " * 100_000 + "1</answer>"


TAGGED = {  # text: (countdown_correct, countdown_shaped, countdown_tinyzero) for nums [3, 5, 2], target 13
    "<think>5 * 2 = 10</think>\n<answer>5 * 2 + 3</answer>": (1.0, 1.0, 1.0),
    "<answer>3 + 2 * 5</answer>": (1.0, 1.0, 1.0),
    "<think>x</think><answer>5 + 2 + 3</answer>": (0.0, 0.2, 0.1),
    "<think>x</think><answer>5 * 2 + 3 + 0</answer>": (0.0, 0.2, 0.1),
    "<answer>5 + 2</answer>": (0.0, 0.1, 0.1),
    "<answer></answer>": (0.0, 0.1, 0.1),
    "<think>x</think>": (0.0, 0.1, 0.0),
    "<think>hmm</think><answer>5 * 2 + 3": (0.0, 0.1, 0.0),
    "5 * 2 + 3": (0.0, 0.0, 0.0),
    "<think>x</think><answer>__import__('os').system('ls')</answer>": (0.0, 0.2, 0.1),
    "<answer>9**9**9**9</answer>": (0.0, 0.1, 0.1),
    "<answer>26 / 2 + 0 * 0</answer>": (0.0, 0.1, 0.1),
    "": (0.0, 0.0, 0.0),
    HUGE: (0.0, 0.2, 0.1),
}


NATURAL = {
    "Compute 5 * 2 + 3 = 13.": (1.0, 1.0, 1.0),
    "<think>x</think><answer>5 * 2 + 3</answer>": (1.0, 1.0, 1.0),
    "<think>x</think><answer>5 + 2 + 3</answer>": (0.0, 0.0, 0.1),
    "I give up, it is 13.": (0.0, 0.0, 0.0),
    "": (0.0, 0.0, 0.0),
    HUGE: (0.0, 0.0, 0.0),  # the huge run is no expression
}


REWARDS = (countdown_correct, countdown_shaped, countdown_tinyzero)


def call(fn, texts, **columns):
    n = len(texts)
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    return fn([None] * n, chats, nums=[[3, 5, 2]] * n, target=[13] * n, **columns, **TRL_EXTRAS)


@pytest.mark.parametrize("prompt_format", ["zero_shot", "one_shot", None])
def test_rewards_on_tagged_completions(prompt_format):
    texts = list(TAGGED)
    columns = {} if prompt_format is None else {"prompt_format": [prompt_format] * len(texts)}
    for k, fn in enumerate(REWARDS):
        assert call(fn, texts, **columns) == pytest.approx([v[k] for v in TAGGED.values()]), fn.__name__


def test_rewards_on_natural_completions():
    texts = list(NATURAL)
    for k, fn in enumerate(REWARDS):
        got = call(fn, texts, prompt_format=["natural"] * len(texts), allow_div=[False] * len(texts))
        assert got == pytest.approx([v[k] for v in NATURAL.values()]), fn.__name__


def test_rewards_follow_the_division_column():
    texts = ["<think>x</think><answer>26 / 2</answer>"] * 2
    kwargs = {"nums": [[26, 2]] * 2, "target": [13] * 2, "allow_div": [True, False], **TRL_EXTRAS}
    assert countdown_correct([None] * 2, texts, **kwargs) == [1.0, 0.0]
    assert countdown_shaped([None] * 2, texts, **kwargs) == pytest.approx([1.0, 0.2])
    assert countdown_tinyzero([None] * 2, texts, **kwargs) == pytest.approx([1.0, 0.1])


def test_reward_settings_bind_from_yaml():
    (shaped, tiny), _ = rewards.build(
        [
            {"name": "countdown_shaped", "params": {"think": 0.25, "answer": 0.5, "correct": 2.0}},
            {"name": "countdown_tinyzero", "params": {"format_score": 0.3, "correct": 3.0}},
        ]
    )
    texts = ["<think>a</think><answer>5 + 2</answer>", "<answer>5 * 2 + 3</answer>", "none"]
    assert call(shaped, texts) == pytest.approx([0.75, 2.0, 0.0])
    assert call(tiny, texts) == pytest.approx([0.3, 3.0, 0.0])
    with pytest.raises(ConfigError, match="did you mean 'countdown_tinyzero.format_score'"):
        rewards.get("countdown_tinyzero", format_scor=0.2)
