"""rewards/addition.py: addition_correct, the exact sum as a string in the first <answer> block."""

import pytest

import rewards
import tasks


def correct(texts, answers, **params):
    return rewards.get("addition_correct", **params)(None, texts, answer=answers)


HUGE = "x" * 1_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>\n147688\n</answer>", 5.0),
        ("<answer>147688</answer>", 5.0),
        ("Sure.\n<answer>  147688 </answer>\n", 5.0),
        ("<answer>147688</answer>\n<answer>1</answer>", 5.0),  # the first block counts, as the seed
        ("<answer>\n147688", 5.0),  # cut off before </answer>: the seed reads the rest of the text
        ("<answer>147689</answer>", 0.0),  # off by one
        ("<answer>147,688</answer>", 0.0),  # exact string match: no normalisation
        ("<answer>147688.0</answer>", 0.0),
        ("<answer>+147688</answer>", 0.0),
        ("<answer></answer>", 0.0),
        ("147688", 0.0),  # no tags
        ("147688</answer>", 0.0),
        ("", 0.0),
        (HUGE + "<answer>147688</answer>", 5.0),
        ("<answer>" + HUGE, 0.0),
        (HUGE, 0.0),
    ],
)
def test_correct_reward(text, expected):
    task = tasks.get("addition")
    assert correct([text], ["147688"]) == [expected]
    assert correct([[{"role": "assistant", "content": text}]], ["147688"]) == [expected]
    assert task.is_correct(text, {"answer": "147688"}) == (expected > 0)


def test_correct_reward_setting():
    assert correct(["<answer>7</answer>", "7"], ["7", "7"], correct=2.0) == [2.0, 0.0]
