"""Anomaly-free U(1) charges (after TheoryGPT, seed 003): verifier, parsing, reward, gold search, split."""

import itertools
import math

import pytest

import rewards
import tasks
from rewards.anomaly import anomalies, is_anomaly_free, parse_charges, valid_charges
from tasks.anomaly_free import SYSTEM, solution
from training_with_unsloth.errors import ConfigError


@pytest.fixture(scope="module")
def split():
    return tasks.get("anomaly_free").build(seed=3)


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


def test_defaults_and_columns(split):
    task = tasks.get("anomaly_free")
    assert task.params.model_dump() == {
        "num_fermions": [5],
        "max_charge": 10,
        "num_given": 2,
        "train_size": 2000,
        "eval_size": 40,
    }
    assert [r["name"] for r in task.default_rewards] == ["anomaly_free", "length_penalty"]
    train, eval_ = split
    assert (len(train), len(eval_)) == (2000, 40)
    assert train.column_names == ["prompt", "num_fermions", "max_charge", "given_charges", "condition", "problem_id"]


def test_reproducible_and_seed_dependent(split):
    train_b, eval_b = tasks.get("anomaly_free").build(seed=3)
    train_c, eval_c = tasks.get("anomaly_free").build(seed=4)
    assert split[0].to_list() == train_b.to_list()
    assert split[1].to_list() == eval_b.to_list()
    assert list(split[1]["problem_id"]) != list(eval_c["problem_id"])
    assert list(split[0]["problem_id"]) != list(train_c["problem_id"])


def test_eval_held_out(split):
    train, eval_ = split
    eval_ids = list(eval_["problem_id"])
    assert len(set(eval_ids)) == len(eval_ids)
    assert not set(eval_ids) & set(train["problem_id"])
    # the prompts differ exactly where the ids do
    eval_prompts = {r["prompt"][-1]["content"] for r in eval_}
    assert not eval_prompts & {r["prompt"][-1]["content"] for r in train}


def test_problems_and_prompt(split):
    for row in split[0].select(range(200)).to_list() + split[1].to_list():
        n, bound, given = row["num_fermions"], row["max_charge"], row["given_charges"]
        assert (n, bound, len(given)) == (5, 10, 2)
        assert all(q != 0 and abs(q) <= 10 for q in given)
        assert row["condition"] == "N=5"
        assert row["problem_id"] == f"N=5;Q=10;given={given[0]},{given[1]}"
        system, user = row["prompt"]
        assert system == {"role": "system", "content": SYSTEM}
        assert "to 5 left-handed (chiral) fermions" in user["content"]
        assert "from -10 to 10" in user["content"]
        assert f"start with q1 = {given[0]}, q2 = {given[1]}." in user["content"]
        assert "<answer>q1, q2, q3, q4, q5</answer>" in user["content"]


def test_mixed_fermion_counts_without_given_charges():
    """With no given charges a problem is just N: eval holds out whole fermion counts."""
    task = tasks.get("anomaly_free", num_fermions=[12, *range(3, 12)], num_given=0, eval_size=2, train_size=50)
    assert task.params.num_fermions == list(range(3, 13))
    train, eval_ = task.build(seed=0)
    assert len(set(eval_["condition"])) == 2
    assert set(train["condition"]) | set(eval_["condition"]) == {f"N={n}" for n in range(3, 13)}
    assert not set(train["condition"]) & set(eval_["condition"])
    assert all(r["given_charges"] == [] for r in train)
    assert "start with" not in eval_[0]["prompt"][-1]["content"]
    for row in eval_:
        assert task.is_correct(task.gold(row), row)


def test_gold_is_correct_and_earns_the_top_reward(split):
    task = tasks.get("anomaly_free")
    funcs, weights = rewards.build(task.default_rewards)
    for row in split[1]:
        gold = task.gold(row)
        assert task.is_correct(gold, row)
        columns = {k: [row[k]] for k in ("num_fermions", "max_charge", "given_charges")}
        assert funcs[0](None, [gold], **columns) == [10.0]
        total = sum(w * f(None, [gold], **columns)[0] for f, w in zip(funcs, weights, strict=True))
        assert total == 10.0  # short: no length penalty


@pytest.mark.parametrize("n", range(3, 13))
def test_solution_search_every_size(n):
    for given in [(), (3,), (3, -7), (1, 2, 3), (4, 4, -9)]:
        if 2 * len(given) > n:
            continue
        charges = solution(n, 10, given)
        assert len(charges) == n and charges[: len(given)] == given
        assert any(charges) and all(abs(q) <= 10 for q in charges)
        assert anomalies(charges) == (0, 0)


def test_solution_prefers_chiral():
    charges = solution(5, 10, ())
    assert 0 not in charges and not any(-q in charges for q in charges)
    assert solution(4, 10, ()) == (1, -1, 0, 0)  # 4 charges summing to 0 have no chiral solution


def test_every_two_charge_prefix_is_solvable():
    for given in itertools.product([q for q in range(-10, 11) if q], repeat=2):
        charges = solution(5, 10, given)
        assert charges[:2] == given and anomalies(charges) == (0, 0) and all(abs(q) <= 10 for q in charges)


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
    assert tasks.get("anomaly_free").is_correct(
        text, {"num_fermions": 5, "max_charge": 10, "given_charges": []}
    ) == (expected == 10.0)


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


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_fermions": 2}, "num_fermions must be one or more counts in 3..12"),
        ({"num_fermions": [5, 13]}, "num_fermions must be one or more counts in 3..12"),
        ({"num_fermions": []}, "num_fermions must be one or more counts in 3..12"),
        ({"num_fermions": 3}, "num_given=2 needs num_fermions >= 4"),
        ({"max_charge": 0}, "task.max_charge"),
        ({"max_charge": 31}, "task.max_charge"),
        ({"num_given": 0}, "eval_size=40 leaves 0 of 1 distinct problems"),
        ({"num_given": 1, "eval_size": 15}, "eval_size=15 leaves 5 of 20 distinct problems"),
        ({"num_fermion": 5}, "did you mean 'task.num_fermions'?"),
    ],
)
def test_param_errors_are_one_line(params, message):
    with pytest.raises(ConfigError) as info:
        tasks.get("anomaly_free", **params)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
