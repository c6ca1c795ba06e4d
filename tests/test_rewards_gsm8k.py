"""rewards/gsm8k.py: gsm8k_correct, strict and lenient, on hostile and huge text; its gold forms and settings."""

import pytest

import rewards
from rewards.gsm8k import gsm8k_correct
from training_with_unsloth.errors import ConfigError

CORRECT_1080 = "<think>\n1200 - 120 = 1080\n</think>\n<answer>\n1080\n</answer>"


def chat(text):
    return [{"role": "assistant", "content": text}]


COMPLETIONS = {  # text: (strict, lenient) reward for gold 1080
    "correct": (CORRECT_1080, 2.0, 2.0),
    "money": ("<answer>$1,080.00</answer>", 2.0, 2.0),
    "trailing_period": ("<answer>1080.</answer>", 2.0, 2.0),
    "boxed": ("<answer>\\boxed{1080}</answer>", 2.0, 2.0),
    "sentence": ("<answer>The answer is 1080 dollars</answer>", 2.0, 2.0),
    "wrong": ("<think>\nx\n</think>\n<answer>\n1081\n</answer>", 0.0, 0.0),
    "untagged": ("1200 - 120 leaves 1080.", 0.0, 2.0),
    "untagged_boxed": ("The answer is \\boxed{1080}", 0.0, 2.0),
    "unclosed": ("<answer>1080", 0.0, 2.0),
    "later_block_wrong": ("<answer>1080</answer> hmm <answer>1000</answer>", 0.0, 0.0),
    "empty_block": ("<answer></answer> 1080", 0.0, 0.0),
    "hostile": ("<answer>__import__('os').system('echo hi')</answer>", 0.0, 0.0),
    "words": ("<answer>one thousand eighty</answer>", 0.0, 0.0),
    "empty": ("", 0.0, 0.0),
    "huge": ("blah 7 " * 150_000 + "<answer>1080</answer>", 2.0, 2.0),
    "huge_untagged": ("blah 7 " * 150_000 + "1080", 0.0, 2.0),
    "huge_answer": ("<answer>" + "1" * 1_000_000 + "</answer>", 0.0, 0.0),
}


@pytest.mark.parametrize("form", ["plain", "chat"])
def test_gsm8k_correct_strict_and_lenient(form):
    texts = [c[0] for c in COMPLETIONS.values()]
    completions = texts if form == "plain" else [chat(t) for t in texts]
    n = len(completions)
    strict = gsm8k_correct([None] * n, completions, answer=["1080"] * n, completion_ids=[[1]] * n)
    lenient = rewards.get("gsm8k_correct", mode="lenient")([None] * n, completions, answer=["1080"] * n)
    assert strict == [c[1] for c in COMPLETIONS.values()]
    assert lenient == [c[2] for c in COMPLETIONS.values()]


def test_gsm8k_correct_gold_forms_and_settings():
    texts = ["<answer>-3</answer>", "<answer>5/2</answer>", "<answer>72</answer>", "<answer>72</answer>"]
    assert gsm8k_correct([None] * 4, texts, answer=["-3", "2.5", 72, "71"], correct=3.0) == [3.0, 3.0, 3.0, 0.0]
    with pytest.raises(ValueError, match="gold answer 'n/a' is not a number"):
        gsm8k_correct([None], ["<answer>1</answer>"], answer=["n/a"])
    with pytest.raises(ConfigError, match="'gsm8k_correct.mode' must be 'strict' or 'lenient', got 'loose'"):
        rewards.get("gsm8k_correct", mode="loose")([None], ["x"], answer=["1"])
    with pytest.raises(ConfigError, match="must be a number"):
        rewards.get("gsm8k_correct", correct="two")


def test_format_tags_default_settings_survive_an_answer_column():
    fn = rewards.get("format_tags")
    assert fn([None], ["<think>a</think><answer>1</answer>"], answer=["1"]) == [pytest.approx(0.2)]
