"""tasks/countdown.py variants: division, prompt formats, mix_oneshot, eval formats, the solver, loaded data."""

import itertools
import json
import random
import time
from collections import Counter
from fractions import Fraction

import pytest

import tasks
from rewards.parsing import safe_eval
from tasks.countdown import EXAMPLE_ANSWER, left_assoc_expression, solve
from training_with_unsloth.errors import ConfigError

TAG_TAIL = "Show your reasoning in <think>...</think>, then write your final expression in <answer>...</answer>."
COLUMNS = ["prompt", "nums", "target", "solution", "problem_id", "prompt_format", "allow_div"]


def small(**params):
    return tasks.get("countdown", **{"train_size": 100, "eval_size": 20, **params})


# -- generation with division and more numbers --------------------------------------------------


def test_division_problems_have_integer_targets_and_checkable_gold():
    task = small(operators="/*+-", num_count=4, train_size=300, eval_size=50)
    assert task.params.operators == "+-*/"
    train, eval_ = task.build(seed=11)
    assert any("/" in s for s in train["solution"])
    for row in list(train) + list(eval_):
        assert isinstance(row["target"], int) and 1 <= row["target"] <= 100 and row["target"] not in row["nums"]
        assert len(row["nums"]) == 4 and row["allow_div"] is True
        value, used = safe_eval(row["solution"], allow_div=True)
        assert value == row["target"] and Counter(used) == Counter(row["nums"])
        assert task.is_correct(task.gold(row), row)
    content = eval_[0]["prompt"][-1]["content"]
    assert "Available operations: +, -, *, /. Show" in content and "no division" not in content


def test_division_generation_is_seeded():
    a_train, a_eval = small(operators="+-*/").build(seed=4)
    b_train, b_eval = small(operators="+-*/").build(seed=4)
    c_train, _ = small(operators="+-*/").build(seed=5)
    assert a_train.to_list() == b_train.to_list() and a_eval.to_list() == b_eval.to_list()
    assert a_train["problem_id"] != c_train["problem_id"]


def test_division_only_where_the_task_allows_it():
    row = {"nums": [26, 2, 1], "target": 13}
    text = "<think>x</think><answer>26 / 2 * 1</answer>"
    assert small(operators="+-*/").is_correct(text, row)
    assert not small().is_correct(text, row)
    assert not small(operators="+-*/").is_correct(text, {**row, "allow_div": False})  # the row's column wins


@pytest.mark.parametrize(
    ("nums", "ops", "expected"),
    [([8, 2, 3], "/+", "8 / 2 + 3"), ([8, 2, 3], "+/", "(8 + 2) / 3"), ([8, 2, 3, 4], "-/*", "(8 - 2) / 3 * 4")],
)
def test_left_assoc_expression_with_division(nums, ops, expected):
    assert left_assoc_expression(nums, ops) == expected


# -- prompt formats ------------------------------------------------------------------------------


def test_natural_prompt_drops_tags_and_gold_is_read_as_last_expression():
    task = small(prompt_format="natural")
    train, eval_ = task.build(seed=0)
    row = eval_[0]
    assert row["prompt_format"] == "natural" and len(row["prompt"]) == 2
    assert row["prompt"][-1]["content"] == (
        f"Using the numbers {row['nums']}, create an expression that equals {row['target']}. "
        "You must use all 3 numbers, each exactly once. Available operations: +, -, * (no division)."
    )
    for r in list(eval_) + list(train):
        gold = task.gold(r)
        assert "<answer>" not in gold and task.is_correct(gold, r)
    assert not task.is_correct(f"<answer>{row['solution']}</answer> so the answer is 1 + 1", row)


def test_one_shot_prompt_with_division_lists_division_in_the_example_too():
    _, eval_ = small(prompt_format="one_shot", operators="+-*/").build(seed=0)
    prompt = eval_[0]["prompt"]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert prompt[1]["content"].endswith(f"Available operations: +, -, *, /. {TAG_TAIL}")
    assert prompt[2]["content"] == EXAMPLE_ANSWER


# -- mix_oneshot ---------------------------------------------------------------------------------


def test_mix_oneshot_share_follows_progress():
    task = small(mix_oneshot=True, train_size=4000)
    train, eval_ = task.build(seed=1)
    assert train.column_names == [*COLUMNS, "u"]
    previous = None
    for progress in (0.0, 0.25, 0.5, 0.75, 1.0):
        task.set_progress(progress)
        rows = train[:]
        one_shot = {pid for pid, f in zip(rows["problem_id"], rows["prompt_format"], strict=True) if f == "one_shot"}
        share = sum(f == "one_shot" for f in rows["prompt_format"]) / len(train)
        assert share == pytest.approx(1 - progress, abs=0.03)
        if previous is not None:
            assert one_shot <= previous  # a row that went zero-shot stays zero-shot
        previous = one_shot
        for prompt, fmt in zip(rows["prompt"], rows["prompt_format"], strict=True):
            assert len(prompt) == (4 if fmt == "one_shot" else 2)
    task.set_progress(0.0)
    assert set(train["prompt_format"]) == {"one_shot"}
    task.set_progress(1.0)
    assert set(train["prompt_format"]) == {"zero_shot"}
    assert set(eval_["prompt_format"]) == {"zero_shot"} and "u" not in eval_.column_names  # eval is not mixed


def test_mix_oneshot_rows_match_the_plain_formats():
    task = small(mix_oneshot=True)
    train, _ = task.build(seed=2)
    zero, _ = small().build(seed=2)
    one, _ = small(prompt_format="one_shot").build(seed=2)
    task.set_progress(0.0)
    assert [{k: v for k, v in r.items() if k != "u"} for r in train] == one.to_list()
    task.set_progress(1.0)
    assert [{k: v for k, v in r.items() if k != "u"} for r in train] == zero.to_list()


def test_mix_oneshot_same_row_same_prompt_in_a_group():
    task = small(mix_oneshot=True, train_size=200)
    train, _ = task.build(seed=3)
    task.set_progress(0.5)
    for i in range(0, 200, 7):
        group = train.__getitems__([i] * 8)  # how torch's DataLoader fetches a GRPO group
        assert all(row == group[0] for row in group)
        assert group[0] == train[i]
        assert group[0]["prompt_format"] == ("one_shot" if train[i]["u"] < 0.5 else "zero_shot")
    again, _ = small(mix_oneshot=True, train_size=200).build(seed=3)
    assert again["u"] == train["u"]


def test_mix_oneshot_through_a_dataloader():
    from torch.utils.data import DataLoader

    task = small(mix_oneshot=True, train_size=64)
    train, _ = task.build(seed=4)
    loader = DataLoader(train, batch_size=8, sampler=[i for i in range(8) for _ in range(8)], collate_fn=list)
    task.set_progress(0.3)
    for batch in loader:
        assert len({json.dumps(row["prompt"]) for row in batch}) == 1
        assert set(batch[0]) == set(train.column_names)


def test_progress_is_clamped():
    task = small(mix_oneshot=True)
    train, _ = task.build(seed=0)
    task.set_progress(7.0)
    assert set(train["prompt_format"]) == {"zero_shot"}
    task.set_progress(-1)
    assert set(train["prompt_format"]) == {"one_shot"}


# -- eval formats --------------------------------------------------------------------------------


def test_eval_formats_give_one_row_per_problem_and_format():
    formats = ["one_shot", "zero_shot", "natural"]
    task = small(eval_formats=formats, eval_size=10)
    train, eval_ = task.build(seed=5)
    _, plain = small(eval_size=10).build(seed=5)
    assert len(eval_) == 30 and "condition" not in plain.column_names and "condition" not in train.column_names
    assert eval_["condition"] == formats * 10 and eval_["prompt_format"] == formats * 10
    assert len(set(eval_["problem_id"])) == 30
    assert eval_["problem_id"][:3] == [f"{plain[0]['problem_id']}/{f}" for f in formats]
    assert eval_["nums"][::3] == plain["nums"]
    for row in eval_:
        assert task.is_correct(task.gold(row), row)
    assert [len(r["prompt"]) for r in eval_.select(range(3))] == [4, 2, 2]
    assert TAG_TAIL not in eval_[2]["prompt"][-1]["content"]


def test_single_eval_format_keeps_problem_ids():
    _, eval_ = small(eval_formats=["natural"], eval_size=5).build(seed=5)
    _, plain = small(eval_size=5).build(seed=5)
    assert eval_["problem_id"] == plain["problem_id"] and eval_["condition"] == ["natural"] * 5


# -- default rewards -----------------------------------------------------------------------------


def test_default_reward_is_the_seed_shaped_reward():
    task = tasks.get("countdown")
    assert task.default_rewards == [{"name": "countdown_shaped", "weight": 1.0, "params": {}}]


# -- solver --------------------------------------------------------------------------------------


def brute_force(nums, target, ops):
    """Whether any order and bracketing of ``nums`` with ``ops`` makes ``target`` (independent of solve)."""

    def values(seq):
        if len(seq) == 1:
            yield Fraction(seq[0])
            return
        for k in range(1, len(seq)):
            for a in values(seq[:k]):
                for b in values(seq[k:]):
                    yield from (
                        v
                        for op, v in (("+", a + b), ("-", a - b), ("*", a * b), ("/", a / b if b else None))
                        if op in ops and v is not None
                    )

    return any(v == target for p in set(itertools.permutations(nums)) for v in values(list(p)))


def check_solution(solution, nums, target):
    value, used = safe_eval(solution, allow_div=True)
    assert value == target and Counter(used) == Counter(nums), solution


@pytest.mark.parametrize("operators", ["+-*", "+-*/"])
@pytest.mark.parametrize("num_count", [3, 4])
def test_solver_solves_generated_problems(operators, num_count):
    task = small(operators=operators, num_count=num_count, train_size=200, eval_size=50)
    train, eval_ = task.build(seed=9)
    for row in list(train) + list(eval_):
        solution = solve(row["nums"], row["target"], operators)
        check_solution(solution, row["nums"], row["target"])
        if "/" not in operators:
            assert "/" not in solution
        assert task.gold({"nums": row["nums"], "target": row["target"]}).endswith(f"<answer>{solution}</answer>")


def test_solver_agrees_with_brute_force():
    rng = random.Random(0)
    for _ in range(150):
        nums = [rng.randint(0, 12) for _ in range(rng.choice([2, 3, 3, 4]))]
        target = rng.randint(-20, 60)
        ops = rng.choice(["+-*", "+-*/", "+*", "-", "-*", "/", "+-"])
        solution = solve(nums, target, ops)
        assert (solution is not None) == brute_force(nums, target, ops), (nums, target, ops)
        if solution is not None:
            check_solution(solution, nums, target)
            assert set(solution) & set("+-*/") <= set(ops)


def test_solver_impossible_and_limits():
    assert solve([1, 1, 1], 100) is None
    assert solve([2, 3], 6, "+-") is None
    assert solve([7, 2], 3, "+-*") is None and solve([7, 1], 7, "/") == "7 / 1"
    assert solve([4], 4) == "4"
    check_solution(solve([12, 11, 6, 9], 26, "-"), [12, 11, 6, 9], 26)  # needs a negative intermediate value
    check_solution(solve([1, 2, 3, 4, 5, 6], 719, "+-*"), [1, 2, 3, 4, 5, 6], 719)
    with pytest.raises(ValueError, match="1 to 6 numbers"):
        solve([1] * 7, 7)
    with pytest.raises(ValueError, match="subset of"):
        solve([1, 2], 3, "+^")


def test_solver_is_fast_for_four_numbers():
    rng = random.Random(1)
    start = time.perf_counter()
    for _ in range(200):
        solve([rng.randint(1, 99) for _ in range(4)], rng.randint(1, 99), "+-*/")
    assert time.perf_counter() - start < 4.0


def test_gold_without_a_solution_raises():
    with pytest.raises(ValueError, match="has no solution"):
        tasks.get("countdown").gold({"nums": [1, 1, 1], "target": 100})


# -- loaded data ---------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def usable_rows(n, seed=0):
    """``n`` distinct problems solvable with + - * (generated, solution column dropped)."""
    train, _ = small(num_count=4, max_target=300, train_size=n, eval_size=1).build(seed=seed)
    rows, seen = [], set()
    for r in train:
        if r["problem_id"] not in seen:
            seen.add(r["problem_id"])
            rows.append({"nums": r["nums"], "target": r["target"], "extra": "x"})
    return rows


def test_loaded_data_eval_first_disjoint_and_skips(tmp_path):
    good = usable_rows(60)[:40]
    bad = [
        {"nums": [-1, 2, 3], "target": 4, "extra": ""},  # a negative number
        {"nums": [5], "target": 5, "extra": ""},  # one number
        {"nums": [1, 2, 3, 4, 5, 6, 7], "target": 28, "extra": ""},  # more than the solver takes
        {"nums": [1, 2, 3], "target": None, "extra": ""},
        {"nums": [1, 2, 3], "target": 10**9, "extra": ""},
        {"nums": list(reversed(good[0]["nums"])), "target": good[0]["target"], "extra": ""},  # a repeat
        {"nums": [1, 1, 1], "target": 100, "extra": ""},  # unsolvable
        {"nums": [7, 3, 5], "target": 99, "extra": ""},  # unsolvable
    ]
    source = write_jsonl(tmp_path / "countdown.jsonl", good + bad)
    task = tasks.get("countdown", data=source, eval_size=10, train_size=30)
    train, eval_ = task.build(seed=0)
    assert (len(train), len(eval_)) == (30, 10)
    assert task.data_report == {
        "source": source,
        "rows": 48,
        "examined": 48,
        "skipped": {"malformed": 5, "duplicate": 1, "unsolvable": 2},
    }
    ids = list(eval_["problem_id"]) + list(train["problem_id"])
    assert len(set(ids)) == 40 and set(ids) == {",".join(map(str, sorted(r["nums"]))) + f":{r['target']}" for r in good}
    assert train.column_names == COLUMNS
    for row in list(eval_) + list(train):
        assert task.is_correct(task.gold(row), row)
    again_train, again_eval = tasks.get("countdown", data=source, eval_size=10, train_size=30).build(seed=0)
    assert again_eval.to_list() == eval_.to_list() and again_train.to_list() == train.to_list()
    _, other_eval = tasks.get("countdown", data=source, eval_size=10, train_size=30).build(seed=1)
    assert other_eval["problem_id"] != eval_["problem_id"]


def test_loaded_data_eval_does_not_depend_on_train_size(tmp_path):
    source = write_jsonl(tmp_path / "d.jsonl", usable_rows(80))
    _, a = tasks.get("countdown", data=source, eval_size=10, train_size=5).build(seed=3)
    _, b = tasks.get("countdown", data=source, eval_size=10, train_size=50).build(seed=3)
    assert a.to_list() == b.to_list()


def test_loaded_data_with_division_and_formats(tmp_path):
    # The first two need division.
    rows = [[[26, 2, 1], 13], [[9, 3, 7], 21], [[3, 5, 2], 13], [[1, 2, 3], 6]]
    source = write_jsonl(tmp_path / "div.jsonl", [{"nums": n, "target": t} for n, t in rows])
    with pytest.raises(ConfigError, match=r"only 1 usable problems outside its 1 eval problems \(2 unsolvable"):
        tasks.get("countdown", data=source, eval_size=1, train_size=2).build(seed=0)
    formats = ["natural", "zero_shot"]
    task = tasks.get("countdown", data=source, operators="+-*/", eval_size=1, train_size=3, eval_formats=formats)
    train, eval_ = task.build(seed=0)
    assert task.data_report["skipped"] == {}
    assert len(eval_) == 2 and eval_["condition"] == ["natural", "zero_shot"] and set(train["allow_div"]) == {True}
    for row in list(train) + list(eval_):
        assert task.is_correct(task.gold(row), row)


def test_loaded_csv_with_list_strings(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('nums,target\n"[3, 5, 2]",13\n"[1, 2, 3]",6\n"[4, 4, 2]",18\n"oops",3\n')
    task = tasks.get("countdown", data=str(path), eval_size=1, train_size=2)
    train, eval_ = task.build(seed=0)
    assert sorted(list(train["target"]) + list(eval_["target"])) == [6, 13, 18]
    report = task.data_report  # the malformed row is skipped when reached before the sizes are filled
    assert report["examined"] == 3 + report["skipped"].get("malformed", 0) and set(report["skipped"]) <= {"malformed"}


def test_loaded_data_errors(tmp_path):
    rows = [{"nums": [3, 5, 2], "target": 13}, {"nums": [1, 1, 1], "target": 100}]
    source = write_jsonl(tmp_path / "few.jsonl", rows)
    with pytest.raises(ConfigError, match=r"only 1 usable distinct problems \(1 unsolvable skipped\), fewer than"):
        tasks.get("countdown", data=source, eval_size=2, train_size=1).build(seed=0)
    no_target = write_jsonl(tmp_path / "cols.jsonl", [{"nums": [3, 5, 2], "answer": 13}])
    with pytest.raises(ConfigError, match="lacks column"):
        tasks.get("countdown", data=no_target, eval_size=1, train_size=1).build(seed=0)
    with pytest.raises(ConfigError, match="does not exist"):
        tasks.get("countdown", data=str(tmp_path / "missing.jsonl")).build(seed=0)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"mix_oneshot": True, "prompt_format": "one_shot"}, "mix_oneshot decays one-shot prompts into zero-shot ones"),
        ({"eval_formats": ["natural", "natural"]}, "eval_formats must list distinct prompt formats"),
        ({"eval_formats": []}, "eval_formats must list distinct prompt formats"),
        ({"eval_formats": ["few_shot"]}, "invalid task.eval_formats.0: Input should be"),
        ({"data": "x.jsonl", "num_count": 4}, "unused with task.data (it holds the problems): remove task.num_count"),
        ({"download": True}, "data settings are unused without task.data: remove task.download or set task.data"),
    ],
)
def test_param_errors_are_one_line(params, message):
    with pytest.raises(ConfigError) as info:
        tasks.get("countdown", **params)
    assert message in str(info.value) and "\n" not in str(info.value)
