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
