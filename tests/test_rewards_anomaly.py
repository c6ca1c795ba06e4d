"""rewards/anomaly.py: the anomaly-free verifier, parsing the charges, validity and the log-scaled reward."""

import math

import pytest

import rewards
import tasks
from rewards.anomaly import anomalies, is_anomaly_free, parse_charges, valid_charges


def anomaly_reward(texts, n=5, bound=10, given=(), **params):
    k = len(texts)
    return rewards.get("anomaly_free", **params)(
        None, texts, num_fermions=[n] * k, max_charge=[bound] * k, given_charges=[list(given)] * k
    )


def log_term(a, bonus=5.0):
    return -math.log1p(abs(a)) + (bonus if a == 0 else 0.0)


def test_anomalies():
    assert anomalies([1, 5, -7, -8, 9]) == (0, 0)  # the classic chiral 5-fermion solution
    assert anomalies([1, 2]) == (9, 3)
    assert anomalies([3, -3, 0]) == (0, 0)
    assert anomalies([]) == (0, 0)


@pytest.mark.parametrize(
    ("text", "charges"),
    [
        ("<answer>1, 5, -7, -8, 9</answer>", [1, 5, -7, -8, 9]),
        ("<think>try</think>\n<answer>\n[1,5,-7,-8,9]\n</answer>", [1, 5, -7, -8, 9]),
        ("<answer>(+1, 5, \u22127, -8, 9)</answer>", [1, 5, -7, -8, 9]),
        ("<answer>1, 2</answer> then <answer>1, 5, -7, -8, 9</answer>", [1, 5, -7, -8, 9]),  # the last block
        ("<answer>1, 5, -7, -8</answer>", None),  # too few
        ("<answer>1, 5, -7, -8, 9, 0</answer>", None),  # too many
        ("<answer>1, 5, -7, -8, 11</answer>", None),  # out of bound
        ("<answer>1 5 -7 -8 9</answer>", None),
        ("<answer>1, 5, -7, -8, 9.0</answer>", None),
        ("<answer>1, 5, -7, -8, 3**2</answer>", None),
        ("<answer>1, 5, -7, -8, 9 + 0</answer>", None),
        ("<answer>1,,5,-7,-8</answer>", None),
        ("<answer>[1, 5, -7, -8, 9)</answer>", None),
        ("<answer></answer>", None),
        ("1, 5, -7, -8, 9", None),
        ("", None),
        ("<answer>" + "1, " * 300_000 + "9</answer>", None),
    ],
)
def test_parse_charges(text, charges):
    assert parse_charges(text, 5, 10) == charges


def test_validity_rules():
    assert valid_charges("<answer>0, 0, 0, 0, 0</answer>", 5, 10) is None  # all zero
    assert valid_charges("<answer>1, -1, 0, 0, 0</answer>", 5, 10) == [1, -1, 0, 0, 0]
    assert valid_charges("<answer>1, -1, 0, 0, 0</answer>", 5, 10, given=[1, -1]) == [1, -1, 0, 0, 0]
    assert valid_charges("<answer>1, -1, 0, 0, 0</answer>", 5, 10, given=[-1, 1]) is None  # ignores the prompt
    assert is_anomaly_free("<answer>1, 5, -7, -8, 9</answer>", 5, 10)
    assert not is_anomaly_free("<answer>1, 5, -7, -8, 8</answer>", 5, 10)


HUGE = "x" * 1_000_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<answer>1, 5, -7, -8, 9</answer>", 10.0),  # both anomalies vanish: 2 x bonus
        ("<answer>3, -3, 2, -2, 0</answer>", 10.0),  # vector-like counts too
        ("<answer>1, 5, -7, -8, 8</answer>", log_term(-217) + log_term(-1)),  # 1 + 125 - 343 - 512 + 512
        ("<answer>1, 1, 1, 1, -4</answer>", log_term(-60) + log_term(0)),  # gravity anomaly cancelled only
        ("<answer>10, 10, 10, 10, 10</answer>", log_term(5000) + log_term(50)),  # the worst valid answer
        ("<answer>0, 0, 0, 0, 0</answer>", -20.0),
        ("<answer>1, 5, -7, -8</answer>", -20.0),
        ("<answer>1, 5, -7, -8, 99</answer>", -20.0),
        ("<answer>one, two</answer>", -20.0),
        ("1, 5, -7, -8, 9", -20.0),
        ("", -20.0),
        (HUGE, -20.0),
        (HUGE + "<answer>1, 5, -7, -8, 9</answer>", 10.0),
    ],
)
def test_anomaly_reward(text, expected):
    assert anomaly_reward([text]) == [pytest.approx(expected)]
    assert anomaly_reward([[{"role": "assistant", "content": text}]]) == [pytest.approx(expected)]
    assert tasks.get("anomaly_free").is_correct(text, {"num_fermions": 5, "max_charge": 10, "given_charges": []}) == (
        expected == 10.0
    )


def test_anomaly_reward_given_charges():
    texts = ["<answer>1, 5, -7, -8, 9</answer>", "<answer>5, 1, -7, -8, 9</answer>"]
    assert anomaly_reward(texts, given=(1, 5)) == [10.0, -20.0]


def test_invalid_is_below_every_valid_answer():
    # the worst valid answer anywhere in the task's range: 12 charges at the largest bound
    worst = anomaly_reward(["<answer>" + ", ".join(["30"] * 12) + "</answer>"], n=12, bound=30)[0]
    assert worst == pytest.approx(log_term(12 * 30**3) + log_term(12 * 30))
    assert worst > -19.0
    # with a user's higher `invalid`, valid answers are floored just above it
    assert anomaly_reward(["<answer>10, 10, 10, 10, 10</answer>", "junk"], invalid=-5.0) == [-4.0, -5.0]
    assert anomaly_reward(["<answer>1, 5, -7, -8, 9</answer>"], bonus=1.0) == [2.0]
