"""CompletionLog: completions/<step>.jsonl from hand-made scored batches (schedule, fields, caps, hostile text)."""

from __future__ import annotations

import json
import math

import pytest

from training_with_unsloth.controls.completion_log import CompletionLog, prompt_text
from training_with_unsloth.controls.scored_batch import ScoredBatch
from training_with_unsloth.rundir import RunDir

NAN = math.nan


def chat(question: str) -> list[dict]:
    return [
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": "earlier answer"},
        {"role": "user", "content": question},
    ]


def make_batch(step: int, completions: list[str], *, generations: int = 2, first_problem: int = 0) -> ScoredBatch:
    n = len(completions)
    rows = [{"prompt": chat(f"what is {first_problem + i // generations}?"), "problem_id": str(first_problem + i // generations),
             "answer": "4"} for i in range(n)]  # fmt: skip
    return ScoredBatch(
        step=step,
        rows=rows,
        completions=completions,
        rewards={"correct": [float(i % 2) for i in range(n)], "format": [NAN if i == 0 else 0.5 for i in range(n)]},
        weights=[1.0, 2.0],
        advantages=[0.5 - (i % 2) for i in range(n)],
        num_generations=generations,
        completion_lengths=[len(c) for c in completions],
    )


def read(path) -> list[dict]:
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def run(tmp_path) -> RunDir:
    return RunDir(tmp_path / "run")


def test_fields_of_each_line(run):
    log = CompletionLog(run, every=5, max_chars=100)
    log.on_scored_batch(make_batch(1, ["a", "b", "c", "d"]))
    lines = read(run.completions / "1.jsonl")
    assert len(lines) == 4
    first = lines[0]
    assert set(first) == {"step", "problem_id", "group", "prompt", "prompt_truncated", "completion", "truncated",
                          "completion_length", "rewards", "total", "advantage"}  # fmt: skip
    assert first["step"] == 1 and first["problem_id"] == "0" and first["prompt"] == "what is 0?"
    assert first["completion"] == "a" and first["truncated"] is False and first["prompt_truncated"] is False
    assert first["rewards"] == {"correct": 0.0, "format": None}  # NaN (a reward that gave None) becomes null
    assert first["total"] == 0.0 and first["advantage"] == 0.5 and first["completion_length"] == 1
    second = lines[1]
    assert second["rewards"] == {"correct": 1.0, "format": 0.5} and second["total"] == pytest.approx(2.0)
    assert [line["group"] for line in lines] == [0, 0, 1, 1]
    assert [line["problem_id"] for line in lines] == ["0", "0", "1", "1"]
    assert not list(run.completions.glob(".*")), "no temporary files left behind"


def test_schedule_is_step_one_and_every_n(run):
    log = CompletionLog(run, every=3, max_chars=100)
    for step in range(1, 8):
        log.on_scored_batch(make_batch(step, ["x", "y"]))
    assert sorted(int(p.stem) for p in run.completions.glob("*.jsonl")) == [1, 3, 6]


def test_zero_means_off(run):
    log = CompletionLog(run, every=0, max_chars=100)
    for step in range(1, 4):
        log.on_scored_batch(make_batch(step, ["x", "y"]))
    assert not run.completions.exists()


def test_batches_of_one_step_are_gathered_and_a_new_step_starts_afresh(run):
    log = CompletionLog(run, every=2, max_chars=100)
    log.on_scored_batch(make_batch(2, ["a", "b", "c", "d"], first_problem=0))
    log.on_scored_batch(make_batch(2, ["e", "f", "g", "h"], first_problem=2))  # gradient accumulation: same step
    lines = read(run.completions / "2.jsonl")
    assert [x["completion"] for x in lines] == list("abcdefgh")
    assert [x["group"] for x in lines] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [x["problem_id"] for x in lines] == ["0", "0", "1", "1", "2", "2", "3", "3"]

    log.on_scored_batch(make_batch(4, ["p", "q"]))
    assert [x["completion"] for x in read(run.completions / "4.jsonl")] == ["p", "q"]
    assert [x["group"] for x in read(run.completions / "4.jsonl")] == [0, 0]

    resumed = CompletionLog(run, every=2, max_chars=100)  # a resumed run redoing step 2 rewrites its file
    resumed.on_scored_batch(make_batch(2, ["z", "z"]))
    assert [x["completion"] for x in read(run.completions / "2.jsonl")] == ["z", "z"]


def test_lines_and_characters_are_capped(run):
    log = CompletionLog(run, every=1, max_chars=20, max_lines=5)
    long = "x" * 50
    batch = make_batch(1, [long] * 4)
    batch.rows[0]["prompt"] = chat("q" * 30)
    log.on_scored_batch(batch)
    log.on_scored_batch(make_batch(1, ["short"] * 4))
    log.on_scored_batch(make_batch(1, ["more"] * 4))
    lines = read(run.completions / "1.jsonl")
    assert len(lines) == 5
    assert all(len(x["completion"]) <= 20 for x in lines)
    assert lines[0]["completion"] == "x" * 20 and lines[0]["truncated"] is True
    assert lines[0]["prompt"] == "q" * 20 and lines[0]["prompt_truncated"] is True
    assert lines[4]["completion"] == "short" and lines[4]["truncated"] is False
    assert [x["group"] for x in lines] == [0, 0, 1, 1, 2]


def test_hostile_text_stays_one_json_line_each(run):
    hostile = [
        'quote " backslash \\ newline \n carriage \r tab \t',
        "nul \x00 bell \x07 escape \x1b[31m red",
        "line separators \u2028 \u2029 and bidi \u202e override",
        "emoji \U0001f600, accents éü, CJK 漢字",
        "lone surrogate \ud800 here",
        '{"step": 999, "fake": true}\n{"another": "record"}',
        "",
        "</script><script>alert(1)</script>",
    ]
    log = CompletionLog(run, every=1, max_chars=1000)
    log.on_scored_batch(make_batch(1, hostile))
    raw = (run.completions / "1.jsonl").read_bytes()
    assert raw.isascii(), "only JSON escapes: the file is plain ASCII"
    text = raw.decode()
    assert len(text.splitlines()) == len(hostile)
    assert [x["completion"] for x in read(run.completions / "1.jsonl")] == hostile


def test_prompt_text():
    assert prompt_text("plain prompt") == "plain prompt"
    assert prompt_text(chat("last one")) == "last one"
    assert prompt_text([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe"}]}]) == "describe"
    assert prompt_text([{"role": "system", "content": "only a system message"}]) == "only a system message"
    assert prompt_text(None) == ""


def test_rows_without_problem_id(run):
    batch = make_batch(1, ["a", "b"])
    for row in batch.rows:
        del row["problem_id"]
        row["condition"] = "3 terms"
    CompletionLog(run, every=1, max_chars=100).on_scored_batch(batch)
    lines = read(run.completions / "1.jsonl")
    assert lines[0]["problem_id"] is None and lines[0]["condition"] == "3 terms"
