"""Multi-step arithmetic (seed 002): generation, split, prompt, checker and the gold answer."""

import random

import pytest

import rewards
import tasks
from rewards.parsing import safe_eval
from tasks.arithmetic import SYSTEM
from training_with_unsloth.errors import ConfigError


@pytest.fixture(scope="module")
def split():
    return tasks.get("arithmetic").build(seed=2)


def shaped(texts, answers, **params):
    return rewards.get("arithmetic_shaped", **params)(None, texts, answer=answers)


def test_defaults_and_columns(split):
    task = tasks.get("arithmetic")
    assert task.params.model_dump() == {
        "min_operand": 0,
        "max_operand": 10,
        "operators": "+-*",
        "train_size": 2000,
        "eval_size": 200,
    }
    assert task.default_rewards == [{"name": "arithmetic_shaped", "weight": 1.0, "params": {}}]
    train, eval_ = split
    assert (len(train), len(eval_)) == (2000, 200)
    assert train.column_names == ["prompt", "answer", "problem_id"]


def test_reproducible_and_seed_dependent():
    train_a, eval_a = tasks.get("arithmetic", train_size=300).build(seed=7)
    train_b, eval_b = tasks.get("arithmetic", train_size=300).build(seed=7)
    train_c, eval_c = tasks.get("arithmetic", train_size=300).build(seed=8)
    assert train_a.to_list() == train_b.to_list()
    assert eval_a.to_list() == eval_b.to_list()
    assert list(eval_a["problem_id"]) != list(eval_c["problem_id"])
    assert list(train_a["problem_id"]) != list(train_c["problem_id"])


def test_eval_distinct_and_disjoint_from_train(split):
    train, eval_ = split
    eval_ids = list(eval_["problem_id"])
    assert len(set(eval_ids)) == len(eval_ids)
    assert not set(eval_ids) & set(train["problem_id"])


def test_follows_seed_generator():
    """Eval problems are the seed's stream (a, b, op1, c, op2) for the seed, duplicates skipped."""
    rng = random.Random(11)
    expected: dict[str, int] = {}
    while len(expected) < 25:
        a, b = rng.randint(0, 10), rng.randint(0, 10)
        op1 = rng.choice(["+", "-", "*"])
        c = rng.randint(0, 10)
        op2 = rng.choice(["+", "-", "*"])
        expression = f"({a} {op1} {b}) {op2} {c}"
        expected.setdefault(expression, int(safe_eval(expression)[0]))
    _, eval_ = tasks.get("arithmetic", eval_size=25, train_size=1).build(seed=11)
    assert [(r["problem_id"], r["answer"]) for r in eval_] == list(expected.items())


def test_answers_and_operands(split):
    for row in split[0].select(range(300)).to_list() + split[1].to_list():
        value, literals = safe_eval(row["problem_id"])
        assert value == row["answer"]
        assert len(literals) == 3 and all(0 <= n <= 10 for n in literals)


def test_prompt(split):
    row = split[1][0]
    assert row["prompt"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"What is {row['problem_id']}? Answer in <answer>...</answer>."},
    ]
    assert "<answer>...</answer>" in SYSTEM


def test_operator_subset():
    task = tasks.get("arithmetic", operators="*+", eval_size=20, train_size=50)
    assert task.params.operators == "+*"
    train, eval_ = task.build(seed=0)
    assert all("-" not in pid for pid in list(train["problem_id"]) + list(eval_["problem_id"]))


def test_gold_is_correct_and_earns_the_top_reward(split):
    task = tasks.get("arithmetic")
    rows = split[1].to_list()
    golds = [task.gold(r) for r in rows]
    assert all(task.is_correct(g, r) for g, r in zip(golds, rows, strict=True))
    assert shaped(golds, [r["answer"] for r in rows]) == pytest.approx([1.0] * len(rows))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"operators": "/"}, "operators must be a non-empty subset of '+-*'"),
        ({"operators": ""}, "operators must be a non-empty subset of '+-*'"),
        ({"min_operand": 5, "max_operand": 2}, "min_operand (5) is above max_operand (2)"),
        ({"min_operand": -1}, "task.min_operand"),
        ({"min_operand": 0, "max_operand": 0, "operators": "+"}, "eval_size=200 leaves 0 of 1 distinct problems"),
        ({"opertors": "+"}, "did you mean 'task.operators'?"),
    ],
)
def test_param_errors_are_one_line(params, message):
    with pytest.raises(ConfigError) as info:
        tasks.get("arithmetic", **params)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
