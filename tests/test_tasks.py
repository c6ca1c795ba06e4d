"""Tasks: seeded generation, eval/train disjointness, constraints, prompts, checkers and the registry."""

import random
from collections import Counter

import pytest

import rewards
import tasks
from rewards.parsing import safe_eval
from tasks.countdown import EXAMPLE_ANSWER, SYSTEM, left_assoc_expression
from training_with_unsloth.errors import ConfigError


@pytest.fixture(scope="module")
def countdown_split():
    return tasks.get("countdown").build(seed=142)


@pytest.fixture(scope="module")
def sums_split():
    return tasks.get("small_sums").build(seed=0)


def test_names():
    """Every seed task is registered (issue 4's list) besides the quickstart's small_sums."""
    assert {"countdown", "arithmetic", "addition", "gsm8k", "anomaly_free", "small_sums"} <= set(tasks.names())


def test_countdown_defaults_and_sizes(countdown_split):
    task = tasks.get("countdown")
    assert task.params.model_dump() == {
        "num_count": 3,
        "min_number": 1,
        "max_number": 10,
        "operators": "+-*",
        "min_target": 1,
        "max_target": 100,
        "prompt_format": "zero_shot",
        "mix_oneshot": False,
        "eval_formats": None,
        "data": None,
        "data_split": "train",
        "download": False,
        "train_size": 2000,
        "eval_size": 200,
    }
    train, eval_ = countdown_split
    assert (len(train), len(eval_)) == (2000, 200)
    columns = ["prompt", "nums", "target", "solution", "problem_id", "prompt_format", "allow_div"]
    assert train.column_names == eval_.column_names == columns
    assert set(train["prompt_format"]) == {"zero_shot"} and set(train["allow_div"]) == {False}


@pytest.mark.parametrize("name", ["countdown", "small_sums"])
def test_build_is_reproducible_and_seed_dependent(name):
    task = tasks.get(name, train_size=300)
    train_a, eval_a = task.build(seed=7)
    train_b, eval_b = tasks.get(name, train_size=300).build(seed=7)
    train_c, eval_c = task.build(seed=8)
    assert train_a.to_list() == train_b.to_list()
    assert eval_a.to_list() == eval_b.to_list()
    assert list(eval_a["problem_id"]) != list(eval_c["problem_id"])
    assert list(train_a["problem_id"]) != list(train_c["problem_id"])


def test_eval_does_not_depend_on_train_size():
    _, small = tasks.get("countdown", train_size=10).build(seed=3)
    _, large = tasks.get("countdown", train_size=500).build(seed=3)
    assert small.to_list() == large.to_list()


@pytest.mark.parametrize("split", ["countdown_split", "sums_split"])
def test_eval_distinct_and_disjoint_from_train(split, request):
    train, eval_ = request.getfixturevalue(split)
    eval_ids = list(eval_["problem_id"])
    assert len(set(eval_ids)) == len(eval_ids)
    assert not set(eval_ids) & set(train["problem_id"])


def test_countdown_problems_satisfy_constraints(countdown_split):
    for split in countdown_split:
        for row in split:
            nums, target = row["nums"], row["target"]
            assert len(nums) == 3
            assert all(1 <= n <= 10 for n in nums)
            assert 1 <= target <= 100
            assert target not in nums
            assert row["problem_id"] == f"{','.join(map(str, sorted(nums)))}:{target}"
            value, used = safe_eval(row["solution"])
            assert value == target
            assert Counter(used) == Counter(nums)


def test_countdown_follows_reference_generator():
    """Eval problems are the reference generator's stream for the seed, duplicates skipped."""
    rng = random.Random(5)
    expected: dict[str, tuple[list[int], int]] = {}
    while len(expected) < 30:
        nums = [rng.randint(1, 10) for _ in range(3)]
        ops = [rng.choice(["+", "-", "*"]) for _ in range(2)]
        expr = str(nums[0])
        for i, op in enumerate(ops):
            expr = f"({expr} {op} {nums[i + 1]})"
        target = int(safe_eval(expr)[0])
        if 1 <= target <= 100 and target not in nums:
            rng.shuffle(nums)
            expected.setdefault(f"{','.join(map(str, sorted(nums)))}:{target}", (nums, target))
    _, eval_ = tasks.get("countdown", eval_size=30, train_size=1).build(seed=5)
    assert [(r["nums"], r["target"]) for r in eval_] == list(expected.values())


def test_countdown_zero_shot_prompt(countdown_split):
    row = countdown_split[1][0]
    assert row["prompt"] == [
        {"role": "system", "content": "You are a mathematical puzzle solver."},
        {
            "role": "user",
            "content": f"Using the numbers {row['nums']}, create an expression that equals {row['target']}. "
            "You must use all 3 numbers, each exactly once. Available operations: +, -, * (no division). "
            "Show your reasoning in <think>...</think>, then write your final expression in <answer>...</answer>.",
        },
    ]


def test_countdown_one_shot_prompt():
    _, eval_ = tasks.get("countdown", prompt_format="one_shot", eval_size=5, train_size=1).build(seed=1)
    prompt = eval_[0]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[0]["content"] == SYSTEM
    assert prompt[1]["content"].startswith("Using the numbers [3, 5, 2], create an expression that equals 13. ")
    assert prompt[2]["content"] == EXAMPLE_ANSWER
    assert "<think>" in EXAMPLE_ANSWER and EXAMPLE_ANSWER.endswith("<answer>5 * 2 + 3</answer>")
    assert prompt[3]["content"].startswith(f"Using the numbers {eval_[0]['nums']}, ")


def test_countdown_operator_subset():
    task = tasks.get("countdown", operators="*+", eval_size=50, train_size=50)
    assert task.params.operators == "+*"
    train, eval_ = task.build(seed=0)
    assert "Available operations: +, * (no division)." in eval_[0]["prompt"][-1]["content"]
    assert all("-" not in s for s in list(train["solution"]) + list(eval_["solution"]))


@pytest.mark.parametrize(
    ("nums", "ops", "expected"),
    [
        ([3, 5, 2], "+*", "(3 + 5) * 2"),
        ([3, 5, 2], "*+", "3 * 5 + 2"),
        ([3, 5, 2, 4], "-**", "(3 - 5) * 2 * 4"),
        ([3, 5, 2, 4], "*-*", "(3 * 5 - 2) * 4"),
        ([9, 1], "-", "9 - 1"),
    ],
)
def test_left_assoc_expression(nums, ops, expected):
    assert left_assoc_expression(nums, ops) == expected


def test_countdown_gold_and_checker(countdown_split):
    task = tasks.get("countdown")
    funcs, _ = rewards.build(task.default_rewards)
    train, eval_ = countdown_split
    for row in eval_:
        assert task.is_correct(task.gold(row), row)
    golds = [task.gold(r) for r in eval_]
    assert [f.__name__ for f in funcs] == ["countdown_shaped"]
    columns = {key: list(eval_[key]) for key in eval_.column_names if key != "prompt"}
    assert funcs[0]([r["prompt"] for r in eval_], golds, **columns) == [1.0] * len(eval_)
    assert all(task.is_correct(task.gold(row), row) for row in train.select(range(200)))


def test_countdown_is_correct_rejects():
    task = tasks.get("countdown")
    row = {"nums": [3, 5, 2], "target": 13}
    assert task.is_correct("<think>x</think><answer>5 * 2 + 3</answer>", row)
    assert task.is_correct("<answer>3 + 2 * 5</answer>", row)
    assert not task.is_correct("<answer>5 * 2 + 3 + 0</answer>", row)
    assert not task.is_correct("<answer>5 * 3 + 2</answer>", row)  # right numbers, wrong value
    assert not task.is_correct("<answer>10 + 3</answer>", row)
    assert not task.is_correct("5 * 2 + 3", row)  # no answer block
    assert not task.is_correct("<answer>5 * 2 + 3</answer><answer>1</answer>", row)
    assert not task.is_correct("<answer>13</answer>", row)


def test_countdown_small_space():
    # nums from {1, 2}, "+" only: exactly three problems: 1,1:2  1,2:3  2,2:4.
    small = {"num_count": 2, "max_number": 2, "operators": "+"}
    train, eval_ = tasks.get("countdown", **small, eval_size=2, train_size=20).build(seed=0)
    assert len(set(eval_["problem_id"])) == 2
    assert len(set(train["problem_id"])) == 1  # train repeats the only problem left
    assert set(train["problem_id"]) | set(eval_["problem_id"]) == {"1,1:2", "1,2:3", "2,2:4"}
    with pytest.raises(ConfigError, match=r"can supply only 3 distinct problems, fewer than task\.eval_size=4"):
        tasks.get("countdown", **small, eval_size=4).build(seed=0)
    with pytest.raises(ConfigError, match="no training problems left outside its 3 eval problems"):
        tasks.get("countdown", **small, eval_size=3).build(seed=0)


def test_small_sums_rows(sums_split):
    task = tasks.get("small_sums")
    assert task.params.model_dump() == {
        "min_operand": 1,
        "max_operand": 9,
        "num_terms": 2,
        "train_size": 2000,
        "eval_size": 24,
        "instruction": "number",
        "eval_instructions": None,
    }
    train, eval_ = sums_split
    assert (len(train), len(eval_)) == (2000, 24)
    assert len(set(train["problem_id"])) == 81 - 24
    for row in list(eval_) + list(train.select(range(100))):
        a, b = map(int, row["problem_id"].split("+"))
        assert 1 <= a <= 9 and 1 <= b <= 9
        assert row["answer"] == a + b
        assert row["prompt"] == [{"role": "user", "content": f"What is {a} + {b}? Reply with just the number."}]


def test_small_sums_three_terms():
    _, eval_ = tasks.get("small_sums", num_terms=3, min_operand=0, max_operand=3).build(seed=2)
    row = eval_[0]
    terms = list(map(int, row["problem_id"].split("+")))
    assert len(terms) == 3 and row["answer"] == sum(terms)
    assert row["prompt"][0]["content"] == f"What is {' + '.join(map(str, terms))}? Reply with just the number."


def test_small_sums_answer_is_instruction_changes_only_the_prompt(sums_split):
    _, plain = sums_split
    _, asked = tasks.get("small_sums", instruction="answer_is").build(seed=0)
    assert asked["problem_id"] == plain["problem_id"] and asked["answer"] == plain["answer"]
    a, b = map(int, asked[0]["problem_id"].split("+"))
    assert asked[0]["prompt"][0]["content"] == f"What is {a} + {b}? End your reply with 'The answer is N.'"
    task = tasks.get("small_sums", instruction="answer_is")
    assert task.is_correct("4 + 3 = 7. The answer is 7.", {"answer": 7})
    assert not task.is_correct("The answer is 8.", {"answer": 7})
    with pytest.raises(ConfigError, match="instruction"):
        tasks.get("small_sums", instruction="terse")


def test_small_sums_gold_and_checker(sums_split):
    task = tasks.get("small_sums")
    funcs, weights = rewards.build(task.default_rewards)
    assert [f.__name__ for f in funcs] == ["last_number_correct", "brevity"] and weights == [1.0, 1.0]
    _, eval_ = sums_split
    golds = [task.gold(row) for row in eval_]
    assert all(task.is_correct(g, row) for g, row in zip(golds, eval_, strict=True))
    assert funcs[0]([None] * len(golds), golds, answer=list(eval_["answer"])) == [1.0] * len(golds)
    assert funcs[1]([None] * len(golds), golds) == pytest.approx([0.48] * len(golds))
    row = {"answer": 12}
    assert task.is_correct("7 + 5 = 12", row)
    assert task.is_correct("The answer is 12.", row)
    assert not task.is_correct("12 is wrong, it is 13", row)
    assert not task.is_correct("-12", row)
    assert not task.is_correct("", row)
    assert task.is_correct("-3", {"answer": -3})


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("countdwn", {}, "unknown task 'countdwn': did you mean 'countdown'?"),
        ("countdown", {"num_cout": 4}, "unknown task parameter 'task.num_cout': did you mean 'task.num_count'?"),
        ("countdown", {"num_count": "three"}, "invalid task.num_count: Input should be a valid integer"),
        ("countdown", {"num_count": 1}, "invalid task.num_count: Input should be greater than or equal to 2"),
        ("countdown", {"operators": "+-*%"}, "invalid task.operators: operators must be a non-empty subset of '+-*/'"),
        ("countdown", {"operators": "+^"}, "invalid task.operators: operators must be a non-empty subset"),
        ("countdown", {"prompt_format": "few_shot"}, "invalid task.prompt_format: Input should be 'zero_shot', 'one_sh"),
        ("countdown", {"min_number": 5, "max_number": 4}, "invalid task: min_number (5) is above max_number (4)"),
        ("countdown", {"min_target": 50, "max_target": 4}, "invalid task: min_target (50) is above max_target (4)"),
        ("small_sums", {"eval_size": 74}, "eval_size=74 leaves 7 of 81 distinct problems for training, fewer than 8"),
        ("small_sums", {"max_operand": 0}, "min_operand (1) is above max_operand (0)"),
        ("small_sums", {"num_term": 3}, "did you mean 'task.num_terms'?"),
    ],
)
def test_registry_errors_are_one_line(name, params, message):
    with pytest.raises(ConfigError) as info:
        tasks.get(name, **params)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_small_sums_largest_eval_size():
    train, eval_ = tasks.get("small_sums", eval_size=73, train_size=100).build(seed=0)
    assert len(set(eval_["problem_id"])) == 73
    assert len(set(train["problem_id"])) == 8


def test_small_sums_eval_instructions_give_one_row_per_instruction():
    import tasks

    task = tasks.get("small_sums", eval_size=3, eval_instructions=["number", "answer_is"])
    _, eval_ds = task.build(1)
    plain = tasks.get("small_sums", eval_size=3).build(1)[1]
    assert len(eval_ds) == 6 and [r["condition"] for r in eval_ds][:2] == ["number", "answer_is"]
    assert eval_ds[0]["answer"] == plain[0]["answer"] and eval_ds[0]["problem_id"] == f"{plain[0]['problem_id']}/number"
    assert eval_ds[1]["prompt"][0]["content"].endswith("'The answer is N.'")
    assert eval_ds[0]["prompt"][0]["content"].endswith("Reply with just the number.")


def test_row_from_fields_renders_the_tasks_own_prompt():
    import pytest

    import tasks
    from rewards.errors import UserError

    row = tasks.get("small_sums", instruction="answer_is").row_from_fields({"terms": "17,25"})
    assert row["answer"] == 42 and row["prompt"][0]["content"] == "What is 17 + 25? End your reply with 'The answer is N.'"
    countdown = tasks.get("countdown")
    row = countdown.row_from_fields({"nums": "4,7,3", "target": "25"})
    assert row["nums"] == [4, 7, 3] and row["target"] == 25 and "4, 7, 3" in row["prompt"][-1]["content"]
    assert countdown.is_correct("<answer>4 * 7 - 3</answer>", row)
    with pytest.raises(UserError, match="needs --target"):
        countdown.row_from_fields({"nums": "4,7,3"})
    with pytest.raises(UserError, match="comma-separated integers"):
        countdown.row_from_fields({"nums": "4,x", "target": "1"})
    with pytest.raises(UserError, match="cannot build a problem"):
        tasks.get("arithmetic").row_from_fields({})
