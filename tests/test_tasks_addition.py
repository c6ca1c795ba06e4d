"""apart-physics addition (seed 000): 12 conditions, the stratified 456 / 24 split, the prompt and the gold answer."""

from collections import Counter

import pytest

import rewards
import tasks
from tasks.addition import SYSTEM
from training_with_unsloth.errors import ConfigError

CONDITIONS = [f"{d}d-{t}t" for d in (5, 6, 7, 8) for t in (2, 3, 4)]


@pytest.fixture(scope="module")
def split():
    return tasks.get("addition").build(seed=0)


def correct(texts, answers, **params):
    return rewards.get("addition_correct", **params)(None, texts, answer=answers)


def test_defaults_and_columns(split):
    task = tasks.get("addition")
    assert task.params.model_dump() == {
        "digits": [5, 6, 7, 8],
        "terms": [2, 3, 4],
        "per_condition": 40,
        "eval_fraction": 0.05,
    }
    train, eval_ = split
    assert train.column_names == eval_.column_names == ["prompt", "answer", "condition", "problem_id"]


def test_default_split_is_456_train_24_eval_stratified(split):
    train, eval_ = split
    assert (len(train), len(eval_)) == (456, 24)
    assert Counter(train["condition"]) == {c: 38 for c in CONDITIONS}
    assert Counter(eval_["condition"]) == {c: 2 for c in CONDITIONS}
    # round-robin: the first 12 eval problems cover every condition once
    assert sorted(eval_["condition"][:12]) == sorted(CONDITIONS)


def test_reproducible_and_seed_dependent(split):
    train_b, eval_b = tasks.get("addition").build(seed=0)
    train_c, eval_c = tasks.get("addition").build(seed=1)
    assert split[0].to_list() == train_b.to_list()
    assert split[1].to_list() == eval_b.to_list()
    assert set(split[1]["problem_id"]).isdisjoint(eval_c["problem_id"])
    assert set(split[0]["problem_id"]).isdisjoint(train_c["problem_id"])


def test_problems_distinct_and_splits_disjoint(split):
    train, eval_ = split
    ids = list(train["problem_id"]) + list(eval_["problem_id"])
    assert len(set(ids)) == len(ids) == 480


def test_eval_does_not_depend_on_the_train_count(split):
    _, eval_ = tasks.get("addition", per_condition=20, eval_fraction=0.1).build(seed=0)
    assert eval_.to_list() == split[1].to_list()


def test_problem_text_answer_and_ranges(split):
    for row in split[0].to_list() + split[1].to_list():
        digits, terms = (int(part[:-1]) for part in row["condition"].split("-"))
        values = [int(v) for v in row["problem_id"].split("+")]
        assert len(values) == terms
        assert all(1 <= v <= 10**digits - 1 for v in values)  # d is the maximum digit count, as the seed
        assert row["prompt"] == [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": " + ".join(map(str, values)) + " = "},
        ]
        assert row["answer"] == str(sum(values))


def test_system_prompt_asks_for_the_answer_alone_in_tags():
    assert "Respond ONLY with the answer" in SYSTEM
    assert "\n<answer>\nnumerical_answer\n</answer>\n" in SYSTEM


def test_gold_is_correct_and_earns_the_top_reward(split):
    task = tasks.get("addition")
    rows = split[1].to_list()
    golds = [task.gold(r) for r in rows]
    answers = [r["answer"] for r in rows]
    assert all(task.is_correct(g, r) for g, r in zip(golds, rows, strict=True))
    assert correct(golds, answers) == [5.0] * len(rows)
    # the summed default set: the gold beats every other kind of reply to the same problem
    funcs, weights = rewards.build(task.default_rewards)
    answer = answers[0]
    others = [
        answer,
        f"<answer>{answer}</answer>",
        f"<answer>\n{int(answer) + 1}\n</answer>",
        f"Let me add the numbers.\n<answer>\n{answer}\n</answer>",
        f"<answer>\n{answer}\n</answer>\nDone.",
        "<answer>\n\n</answer>",
        "",
    ]
    totals = [
        sum(w * f(None, [text], answer=[answer])[0] for f, w in zip(funcs, weights, strict=True)) for text in [golds[0], *others]
    ]
    assert totals[0] == pytest.approx(5.0 + 0.5 + 0.25 - 0.002 * len(golds[0]))
    assert all(totals[0] > t for t in totals[1:])


def test_custom_conditions():
    task = tasks.get("addition", digits=[1], terms=[2, 3], per_condition=10, eval_fraction=0.3)
    train, eval_ = task.build(seed=3)
    assert Counter(eval_["condition"]) == {"1d-2t": 3, "1d-3t": 3}
    assert Counter(train["condition"]) == {"1d-2t": 7, "1d-3t": 7}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"digits": [0]}, "digits must be distinct digit counts in 1..30"),
        ({"digits": [5, 5]}, "digits must be distinct digit counts in 1..30"),
        ({"terms": [1]}, "terms must be distinct term counts in 2..10"),
        ({"digits": []}, "task.digits"),
        ({"eval_fraction": 0.001}, "gives 0 eval problems per condition"),
        ({"per_condition": 2, "eval_fraction": 0.9}, "gives 2 eval problems per condition"),
        ({"eval_fraction": 1.5}, "task.eval_fraction"),
        ({"digits": [1, 2], "terms": [2], "per_condition": 50}, "has only 81 distinct problems"),
        ({"per_condtion": 3}, "did you mean 'task.per_condition'?"),
    ],
)
def test_param_errors_are_one_line(params, message):
    with pytest.raises(ConfigError) as info:
        tasks.get("addition", **params)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
