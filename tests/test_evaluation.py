"""Per-condition evaluation: stratified problem selection, per-condition metrics, and the task progress hook."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from training_with_unsloth.config import EvalConfig
from training_with_unsloth.evaluation import PassKEvaluator, select_rows
from training_with_unsloth.rundir import RunDir


def rows(conditions: list[str | None]) -> list[dict]:
    return [
        {"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i), "problem_id": f"p{i}", "condition": c}
        for i, c in enumerate(conditions)
    ]


def test_selection_takes_every_condition_in_turn():
    picked = select_rows(rows(["a", "a", "a", "b", "b", "c"]), 4)
    assert [r["condition"] for r in picked] == ["a", "b", "c", "a"]
    assert [r["problem_id"] for r in select_rows(rows(["a", "a", "a", "b", "b", "c"]), 99)] == [
        "p0", "p3", "p5", "p1", "p4", "p2",
    ]  # fmt: skip
    plain = rows([None] * 5)
    assert select_rows(plain, 3) == plain[:3]


class EchoTask:
    """Correct when the completion is the row's answer."""

    def is_correct(self, completion: str, row: dict) -> bool:
        return completion == row["answer"]

    def gold(self, row: dict) -> str:
        return row["answer"]


class FixedGenerator:
    """Right on every problem of condition 'a', wrong on 'b'; greedy right only on p0."""

    def generate_completions(self, prompts, *, num_samples, greedy, **kwargs):
        out = []
        for p in prompts:
            i = int(p[0]["content"][1:])
            right = str(i) if i % 2 == 0 else "wrong"
            out.append([("0" if i == 0 else "no") if greedy else right] * num_samples)
        return out, [[[1]] * num_samples for _ in prompts]


def test_metrics_and_lines_carry_the_condition(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    evaluator = PassKEvaluator(
        task=EchoTask(),
        eval_rows=rows(["a", "b", "a", "b"]),
        reward_funcs=[],
        reward_weights=[],
        cfg=EvalConfig(num_problems=4, num_samples=2, k=[1, 2]),
        max_new_tokens=4,
        run=run,
    )
    metrics = evaluator.evaluate(FixedGenerator(), step=3)
    assert metrics["eval/condition/a/sample_accuracy"] == 1.0
    assert metrics["eval/condition/b/sample_accuracy"] == 0.0
    assert metrics["eval/condition/a/greedy_pass@1"] == 0.5 and metrics["eval/condition/b/greedy_pass@1"] == 0.0
    lines = [json.loads(x) for x in run.passk_file(3).read_text().splitlines()]
    assert [line["condition"] for line in lines] == ["a", "b", "a", "b"]


def test_task_progress_follows_the_global_step():
    from training_with_unsloth.controls.callbacks import TaskProgress

    seen = []
    task = SimpleNamespace(set_progress=seen.append)
    cb = TaskProgress(task)
    cb.on_train_begin(None, SimpleNamespace(global_step=5, max_steps=20), None)
    cb.on_step_end(None, SimpleNamespace(global_step=6, max_steps=20), None)
    cb.on_step_end(None, SimpleNamespace(global_step=25, max_steps=20), None)
    assert seen == pytest.approx([0.25, 0.3, 1.0])


def test_every_accuracy_carries_a_95_interval(tmp_path):
    from training_with_unsloth.intervals import bootstrap_mean_ci, wilson_interval

    run = RunDir(tmp_path / "run")
    run.create()
    evaluator = PassKEvaluator(
        task=EchoTask(), eval_rows=rows(["a", "b", "a", "b"]), reward_funcs=[], reward_weights=[],
        cfg=EvalConfig(num_problems=4, num_samples=2, k=[1, 2]), max_new_tokens=4, run=run,
    )  # fmt: skip
    metrics = evaluator.evaluate(FixedGenerator(), step=0)
    assert metrics["eval/pass@1"] == 0.5 and metrics["eval/greedy_pass@1"] == 0.25  # the values are unchanged
    assert metrics["eval/pass@1_ci"] == list(bootstrap_mean_ci([1.0, 0.0, 1.0, 0.0]))
    assert metrics["eval/pass@2_ci"][0] <= metrics["eval/pass@2"] <= metrics["eval/pass@2_ci"][1]
    assert metrics["eval/greedy_pass@1_ci"] == list(wilson_interval(1, 4))
    assert metrics["eval/sample_accuracy_ci"] == list(bootstrap_mean_ci([1.0, 0.0, 1.0, 0.0]))
    assert metrics["eval/condition/a/sample_accuracy_ci"] == [1.0, 1.0]
    assert metrics["eval/condition/b/greedy_pass@1_ci"] == list(wilson_interval(0, 2))
    assert not any(k.startswith("eval/maj@") for k in metrics)  # EchoTask has no answer_key
    assert all(isinstance(v, list) and len(v) == 2 for k, v in metrics.items() if k.endswith("_ci"))
    assert all(isinstance(v, float | int) for k, v in metrics.items() if not k.endswith("_ci"))


class VoteGenerator:
    """Problem i's samples: 0 -> a 2-2 tie, the right answer first; 1 -> none parses; 2 -> right once, "9" thrice."""

    SAMPLES = {0: ["0", "x", "x", "0 "], 1: ["", "", "", ""], 2: ["2", "9", "9", "9"]}

    def generate_completions(self, prompts, *, num_samples, greedy, **kwargs):
        out = [self.SAMPLES[int(p[0]["content"][1:])][:num_samples] for p in prompts]
        return out, [[[1]] * num_samples for _ in prompts]


def test_maj_at_k_for_tasks_with_a_canonical_answer(tmp_path):
    from tasks.small_sums import SmallSums, SmallSumsParams

    class VoteTask(SmallSums):
        def is_correct(self, completion, row):
            return completion.strip() == row["answer"]

        def answer_key(self, completion, row):
            return completion.strip() or None

    run = RunDir(tmp_path / "run")
    run.create()
    evaluator = PassKEvaluator(
        task=VoteTask(SmallSumsParams()), eval_rows=rows([None] * 3), reward_funcs=[], reward_weights=[],
        cfg=EvalConfig(num_problems=3, num_samples=4, k=[1, 4], greedy=False), max_new_tokens=4, run=run,
    )  # fmt: skip
    metrics = evaluator.evaluate(VoteGenerator(), step=5)
    assert metrics["eval/maj@1"] == pytest.approx(2 / 3)  # the first sample of problems 0 and 2 is right
    assert metrics["eval/maj@4"] == pytest.approx(1 / 3)  # "0" ties "x" (first seen wins); "9" outvotes "2"
    assert metrics["eval/maj@4_ci"][0] <= metrics["eval/maj@4"] <= metrics["eval/maj@4_ci"][1]
    lines = [json.loads(x) for x in run.passk_file(5).read_text().splitlines()]
    assert lines[0]["answers"] == ["0", "x", "x", "0"] and lines[1]["answers"] == [None] * 4


def test_answer_keys_of_the_shipped_tasks():
    from tasks.arithmetic import Arithmetic, ArithmeticParams
    from tasks.base import Task
    from tasks.small_sums import SmallSums, SmallSumsParams

    sums = SmallSums(SmallSumsParams())
    assert sums.answer_key("It is 12.", {}) == "12" and sums.answer_key("12.0", {}) == "12"
    assert sums.answer_key("no idea", {}) is None
    arith = Arithmetic(ArithmeticParams())
    assert arith.answer_key("<answer> -7 </answer>", {}) == "-7" and arith.answer_key("-7", {}) is None
    assert Task.answer_key(sums, "12", {}) is None  # the default: no canonical form, no maj@k
