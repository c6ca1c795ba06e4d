"""Generic rewards: format_tags partial credit, xml_count, numeric, digits_only, length_penalty."""

import time

import pytest

import rewards
from rewards.format import format_tags, xml_count
from rewards.numbers import digits_only, length_penalty, numeric
from training_with_unsloth.errors import ConfigError

TRL_EXTRAS = {
    "trainer_state": object(),
    "log_extra": lambda *a: None,
    "log_metric": lambda *a: None,
    "problem_id": ["x"],
}
HUGE = "<think>\n" + "blah " * 200_000 + "\n</think>\n<answer>\n42\n</answer>"  # about 1 MB


def chat(text):
    return [{"role": "assistant", "content": text}]


def both_forms(texts):
    """The same completions as plain strings and as TRL chat completions."""
    texts = list(texts)
    return [texts, [chat(t) for t in texts]]


def call(fn, texts, **params):
    return fn([None] * len(texts), texts, **TRL_EXTRAS, **params)


SEED_FORMAT = {"think": 0.0, "answer": 0.25, "both": 0.25}  # the GSM8K seed's partial credit
FORMAT_CASES = {
    "both": ("<think>a</think><answer>b</answer>", 0.5, 0.2),
    "answer_only": ("<answer>b</answer>", 0.25, 0.1),
    "think_only": ("<think>a</think>", 0.0, 0.1),
    "unclosed": ("<think>a<answer>b", 0.0, 0.0),
    "empty": ("", 0.0, 0.0),
    "huge": (HUGE, 0.5, 0.2),
}


@pytest.mark.parametrize("completions", both_forms(c[0] for c in FORMAT_CASES.values()))
def test_format_tags_partial_credit(completions):
    assert call(format_tags, completions, **SEED_FORMAT) == pytest.approx([c[1] for c in FORMAT_CASES.values()])
    assert call(format_tags, completions) == pytest.approx([c[2] for c in FORMAT_CASES.values()])  # old defaults


XML_ANSWER = {
    "own_lines": ("<answer>\n42\n</answer>", 0.25),
    "final_newline": ("<answer>\n42\n</answer>\n", 0.25),
    "after_prose": ("Adding up.\n<answer>\n42\n</answer>", 0.25),
    "trailing_text": ("<answer>\n42\n</answer>\nextra", 0.25 - 5 * 0.001),
    "glued_tail": ("<answer>\n42\n</answer>tail", 0.125),  # closing tag not on its own line: no credit, no penalty
    "inline": ("<answer>42</answer>", 0.0),
    "opening_only": ("<answer>\n42\n", 0.125),
    "two_blocks": ("<answer>\n1\n</answer>\n<answer>\n2\n</answer>", 0.0),
    "empty": ("", 0.0),
}


@pytest.mark.parametrize("completions", both_forms(c[0] for c in XML_ANSWER.values()))
def test_xml_count_answer_lines(completions):
    assert call(xml_count, completions) == pytest.approx([c[1] for c in XML_ANSWER.values()])


XML_THINK_ANSWER = {
    "gold": ("<think>\nwork\n</think>\n<answer>\n42\n</answer>", 0.5),
    "tail": ("<think>\nwork\n</think>\n<answer>\n42\n</answer>\n\nbye", 0.5 - 4 * 0.001),
    "inline_think": ("<think>work</think>\n<answer>\n42\n</answer>", 0.25),
    "answer_only": ("<answer>\n42\n</answer>", 0.25),
    "huge": (HUGE, 0.5),
}


@pytest.mark.parametrize("completions", both_forms(c[0] for c in XML_THINK_ANSWER.values()))
def test_xml_count_think_and_answer(completions):
    result = call(xml_count, completions, tags="think, answer")
    assert result == pytest.approx([c[1] for c in XML_THINK_ANSWER.values()])


def test_xml_count_settings_and_uncapped_tail():
    text = "<answer>\n42\n</answer>\n" + "x" * 1_000_000
    assert call(xml_count, [text]) == pytest.approx([0.25 - 1_000_000 * 0.001])  # as the seeds: not capped
    assert call(xml_count, ["<answer>\n1\n</answer>\nab"], per_tag=1.0, trailing=0.5) == pytest.approx([1.0])
    for bad in ("", " , ", "<answer>", "a b"):
        with pytest.raises(ConfigError, match="xml_count.tags"):
            call(xml_count, ["x"], tags=bad)


NUMERIC_CASES = {
    "integer": ("<answer>42</answer>", 0.5, 0.5),
    "padded": ("<answer>\n 42 \n</answer>", 0.5, 0.5),
    "money": ("<answer>$1,080.00</answer>", 0.5, 0.0),
    "negative": ("<answer>-3</answer>", 0.5, 0.0),
    "fraction": ("<answer>1/2</answer>", 0.5, 0.0),
    "decimal": ("<answer>2.5</answer>", 0.5, 0.0),
    "boxed": ("<answer>\\boxed{7}</answer>", 0.5, 0.0),
    "sentence": ("<answer>The answer is 42</answer>", 0.0, 0.0),
    "two_numbers": ("<answer>4 2</answer>", 0.0, 0.0),
    "words": ("<answer>forty-two</answer>", 0.0, 0.0),
    "no_tags": ("42", 0.0, 0.0),
    "unclosed": ("<answer>42", 0.0, 0.0),
    "empty_block": ("<answer></answer>", 0.0, 0.0),
    "empty": ("", 0.0, 0.0),
    "later_block_counts": ("<answer>x</answer> <answer>5</answer>", 0.5, 0.5),
    "huge_answer": ("<answer>" + "9" * 1_000_000 + "</answer>", 0.0, 0.0),
    "huge": (HUGE, 0.5, 0.5),
}


@pytest.mark.parametrize("completions", both_forms(c[0] for c in NUMERIC_CASES.values()))
def test_numeric_and_digits_only(completions):
    assert call(numeric, completions) == [c[1] for c in NUMERIC_CASES.values()]
    assert call(digits_only, completions) == [c[2] for c in NUMERIC_CASES.values()]
    assert call(numeric, completions[:1], bonus=2.0) == [2.0]
    assert call(digits_only, completions[:1], bonus=1.5) == [1.5]


@pytest.mark.parametrize("completions", both_forms(["abcd", "", "a" * 10]))
def test_length_penalty_chars(completions):
    assert call(length_penalty, completions) == pytest.approx([-0.008, 0.0, -0.02])
    assert call(length_penalty, completions, free=5, per_unit=-1.0) == pytest.approx([0.0, 0.0, -5.0])


def test_length_penalty_tokens():
    ids = [[1, 2, 3], [], [7] * 10]
    texts = ["one", "", "ten tokens"]
    result = call(length_penalty, texts, unit="token", completion_ids=ids)
    assert result == pytest.approx([-0.006, 0.0, -0.02])
    assert call(length_penalty, texts, unit="token", free=3, completion_ids=ids) == pytest.approx([0.0, 0.0, -0.014])
    with pytest.raises(ValueError, match="completion_ids"):
        call(length_penalty, texts, unit="token")
    with pytest.raises(ValueError, match="2 completion_ids for 3 completions"):
        call(length_penalty, texts, unit="token", completion_ids=ids[:2])


def test_length_penalty_from_registry():
    fn = rewards.get("length_penalty", unit="token", per_unit=-0.5, free=1)
    assert fn([None], [chat("whatever")], completion_ids=[[5, 6, 7]], **TRL_EXTRAS) == [-1.0]
    with pytest.raises(ConfigError, match="'length_penalty.unit' must be 'char' or 'token', got 'chars'") as info:
        rewards.get("length_penalty", unit="chars")([None], ["x"])
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="must be a number"):
        rewards.get("length_penalty", free="lots")


def test_new_rewards_are_registered():
    assert {"xml_count", "numeric", "digits_only", "length_penalty", "gsm8k_correct"} <= set(rewards.names())
    fn = rewards.get("xml_count", tags="think,answer")
    assert fn([None], ["<think>\na\n</think>\n<answer>\n1\n</answer>"], **TRL_EXTRAS) == [0.5]


HOSTILE = [
    "",
    " ",
    "<answer>",
    "</answer>",
    "</answer><answer>",
    "<answer>\n</answer>",
    "<answer>" * 10_000,
    "<think>" * 10_000 + "</answer>" * 10_000,
    "<answer>__import__('os').system('echo hi')</answer>",
    "<answer>9**9**9</answer>",
    "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>",
    "<answer>1" + ",111" * 100_000 + "</answer>",
    "<answer>$-" * 50_000 + "</answer>",
    "<answer>\\boxed{" * 50_000 + "</answer>",
    "\x00\ud800\uffff\u202e",
    "x" * 1_000_000,
    "9" * 1_000_000,
    HUGE,
]


@pytest.mark.parametrize("name", ["format_tags", "xml_count", "numeric", "digits_only", "length_penalty", "gsm8k_correct"])
@pytest.mark.parametrize("completions", both_forms(HOSTILE))
def test_rewards_never_raise_and_stay_fast(name, completions):
    fn = rewards.get(name)
    n = len(completions)
    columns = {"answer": ["42"] * n} if name == "gsm8k_correct" else {}
    start = time.perf_counter()
    result = fn([None] * n, completions, **columns, completion_ids=[[1]] * n, **TRL_EXTRAS)
    assert time.perf_counter() - start < 5.0
    assert len(result) == n
    assert all(isinstance(r, float) for r in result)
