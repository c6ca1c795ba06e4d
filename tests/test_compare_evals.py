"""analysis/compare_evals.py on a hand-written run directory: numbers, identical steps, one-line errors."""

from __future__ import annotations

import json

import pytest

from analysis.compare_evals import compare, main
from training_with_unsloth.intervals import mcnemar_exact, paired_bootstrap_diff


def write_eval(root, step: int, problems: list[tuple[str, list[bool], bool | None]], **extra) -> None:
    (root / "eval").mkdir(parents=True, exist_ok=True)
    with (root / "eval" / f"passk-{step}.jsonl").open("w") as f:
        for pid, correct, greedy in problems:
            line = {"step": step, "problem_id": pid, "correct": correct, "num_correct": sum(correct), **extra}
            if greedy is not None:
                line |= {"greedy": "g", "greedy_correct": greedy}
            f.write(json.dumps(line) + "\n")


@pytest.fixture
def run(tmp_path):
    root = tmp_path / "run"
    before = [(f"p{i}", [i < 3, False, False, False], i < 2) for i in range(12)]
    after = [(f"p{i}", [i < 9, i < 6, False, False], i < 8) for i in range(12)]
    write_eval(root, 0, before)
    write_eval(root, 30, after[::-1] + [("extra", [True] * 4, True)])  # order differs; one problem unpaired
    return root


def test_numbers(run):
    comparisons, paired = compare(run, 0, 30, ["pass@1", "pass@4", "greedy_pass@1", "sample_accuracy"])
    assert paired == 12
    by = {c.metric: c for c in comparisons}
    p1 = by["pass@1"]
    assert p1.a == pytest.approx(3 / 48) and p1.b == pytest.approx(15 / 48) and p1.diff == pytest.approx(12 / 48)
    a = [0.25 if i < 3 else 0.0 for i in range(12)]
    b = [(int(i < 9) + int(i < 6)) / 4 for i in range(12)]
    assert (p1.diff, p1.low, p1.high, p1.p) == pytest.approx(paired_bootstrap_diff(a, b))
    assert 0 < p1.low < p1.diff < p1.high and p1.p < 0.05
    assert by["sample_accuracy"].diff == pytest.approx(p1.diff)
    assert by["pass@4"].a == pytest.approx(3 / 12) and by["pass@4"].b == pytest.approx(9 / 12)
    g = by["greedy_pass@1"]
    assert (g.a, g.b, g.only_a, g.only_b) == (pytest.approx(2 / 12), pytest.approx(8 / 12), 0, 6)
    assert g.mcnemar_p == pytest.approx(mcnemar_exact(0, 6)) == pytest.approx(2 / 64)


def test_identical_steps_differ_by_nothing(run):
    comparisons, _ = compare(run, 30, 30)
    assert [c.metric for c in comparisons] == ["pass@1", "greedy_pass@1"]  # the default metrics
    for c in comparisons:
        assert (c.diff, c.low, c.high, c.p) == (0.0, 0.0, 0.0, 1.0)
    assert comparisons[1].mcnemar_p == 1.0 and comparisons[1].only_a == comparisons[1].only_b == 0


def test_cli_prints_the_table(run, capsys):
    assert main(["--run", str(run), "--steps", "0", "30"]) == 0
    out = capsys.readouterr().out
    assert "12 paired problems" in out and "pass@1" in out and "+0.2500" in out
    assert "McNemar exact p=0.0312 (discordant: 0 solved at step 0 only, 6 at step 30 only)" in out


def test_maj_needs_answers(run, tmp_path):
    root = tmp_path / "voted"
    write_eval(root, 0, [("p0", [True, False, False], None), ("p1", [False, False, True], None)],
               answers=["1", "2", "3"])  # fmt: skip
    write_eval(root, 5, [("p0", [False, True, True], None), ("p1", [False, True, True], None)],
               answers=["4", "5", "5"])  # fmt: skip
    (c,) = compare(root, 0, 5, ["maj@3"])[0]
    assert (c.a, c.b) == (0.5, 1.0)
    with pytest.raises(Exception, match="no 'answers'"):
        compare(run, 0, 30, ["maj@2"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0", "40"], "no evaluation at step 40 in"),
        (["--steps", "0", "30", "--metric", "pass@9"], "pass@9: step 0 has only 4 samples"),
        (["--steps", "0", "30", "--metric", "accuracy"], "unknown metric 'accuracy'"),
    ],
)
def test_one_line_errors(run, capsys, args, message):
    assert main(["--run", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "evaluated steps: 0, 30" in err or "40" not in args


def test_missing_run_and_greedy(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope"), "--steps", "0", "1"]) == 2
    assert capsys.readouterr().err == f"error: no such run directory: {tmp_path / 'nope'}\n"
    write_eval(tmp_path / "r", 0, [("p0", [True], None)])
    write_eval(tmp_path / "r", 1, [("p0", [False], None)])
    assert main(["--run", str(tmp_path / "r"), "--steps", "0", "1", "--metric", "greedy_pass@1"]) == 2
    assert "no greedy answers" in capsys.readouterr().err
    comparisons, _ = compare(tmp_path / "r", 0, 1)
    assert [c.metric for c in comparisons] == ["pass@1"]
