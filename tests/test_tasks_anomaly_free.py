"""Anomaly-free U(1) charges (after TheoryGPT, seed 003): the task: gold search, split, prompt and parameters."""

import itertools

import pytest

import rewards
import tasks
from rewards.anomaly import anomalies
from tasks.anomaly_free import SYSTEM, solution
from training_with_unsloth.errors import ConfigError


@pytest.fixture(scope="module")
def split():
    return tasks.get("anomaly_free").build(seed=3)


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
