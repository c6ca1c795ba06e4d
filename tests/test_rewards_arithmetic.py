"""rewards/arithmetic.py: arithmetic_shaped, credit for the tags, a close answer and the exact answer."""

import pytest

import rewards
import tasks


def shaped(texts, answers, **params):
    return rewards.get("arithmetic_shaped", **params)(None, texts, answer=answers)


HUGE = "x" * 1_000_000


@pytest.mark.parametrize(
    ("text", "reward"),
    [
        ("<answer>13</answer>", 1.0),  # 0.2 tags + 0.2 close + 0.6 exact
        ("Let me compute. <answer> 13 </answer>", 1.0),
        ("<answer>\n+13\n</answer>", 1.0),
        ("<answer>14</answer>", 0.4),  # off by one: tags + close
        ("<answer>12</answer>", 0.4),
        ("<answer>15</answer>", 0.2),  # wrong: tags only
        ("<answer>-13</answer>", 0.2),
        ("<answer>thirteen</answer>", 0.2),
        ("<answer>13.0</answer>", 0.2),  # not an integer, as the seed's int()
        ("<answer>1_3</answer>", 0.2),
        ("<answer>13 + 0</answer>", 0.2),
        ("<answer></answer>", 0.2),
        ("<answer>13</answer><answer>7</answer>", 1.0),  # the first block counts, as the seed
        ("13", 0.0),
        ("<answer>13", 0.0),
        ("13</answer>", 0.0),
        ("", 0.0),
        (HUGE + "<answer>13</answer>", 1.0),
        ("<answer>" + "9" * 1_000_000 + "</answer>", 0.2),
        (HUGE, 0.0),
    ],
)
def test_shaped_reward(text, reward):
    task = tasks.get("arithmetic")
    assert shaped([text], [13]) == [pytest.approx(reward)]
    assert shaped([[{"role": "assistant", "content": text}]], [13]) == [pytest.approx(reward)]
    assert task.is_correct(text, {"answer": 13}) == (reward == 1.0)


def test_shaped_reward_settings():
    texts = ["<answer>10</answer>", "<answer>12</answer>", "<answer>13</answer>", "nothing"]
    assert shaped(texts, [13] * 4, format=0.1, close=0.3, exact=1.0, tolerance=3) == pytest.approx([0.4, 0.4, 1.4, 0.0])
    assert shaped(texts, [13] * 4, tolerance=0) == pytest.approx([0.2, 0.2, 1.0, 0.0])
