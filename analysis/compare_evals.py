"""Does one evaluation of a run beat another on the same problems? Paired tests over problems.

Reads `eval/passk-<A>.jsonl` and `eval/passk-<B>.jsonl` of one run, pairs the problems by
(`problem_id`, `condition`) and, per metric, prints both values, the difference B - A, its 95%
paired-bootstrap interval (problems resampled together; seeded, so reruns agree) and a two-sided
p-value. For greedy correctness it also gives McNemar's exact p-value with the discordant counts.

Metrics: `pass@K` (the unbiased estimator per problem, K at most the samples per problem),
`sample_accuracy`, `greedy_pass@1` (when both evaluations ran greedy), `maj@K` (when the lines
carry the task's `answers`). Default: pass@1, and greedy_pass@1 when both have it.

    uv run analysis/compare_evals.py --run runs/<name> --steps 0 30
    uv run grpo-compare --run runs/<name> --steps 0 30 --metric pass@1 pass@8 greedy_pass@1
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training_with_unsloth.cli import command_name, run_main  # noqa: E402
from training_with_unsloth.errors import UserError  # noqa: E402
from training_with_unsloth.intervals import mcnemar_exact, paired_bootstrap_diff  # noqa: E402
from training_with_unsloth.passk import majority_correct, pass_at_k  # noqa: E402
from training_with_unsloth.rundir import RunDir, read_jsonl  # noqa: E402

_METRIC = re.compile(r"(pass|maj)@([1-9]\d*)|sample_accuracy|greedy_pass@1")


@dataclass(frozen=True)
class Comparison:
    """One metric at steps A and B over the paired problems: values, B - A, its 95% interval, p-values."""

    metric: str
    a: float
    b: float
    diff: float
    low: float
    high: float
    p: float
    mcnemar_p: float | None = None  # greedy_pass@1 only
    only_a: int | None = None  # discordant problems: solved greedily at A only ...
    only_b: int | None = None  # ... and at B only


def evaluated_steps(run: RunDir) -> list[int]:
    """The steps that have an `eval/passk-<step>.jsonl`."""
    steps = []
    for p in run.eval_dir.glob("passk-*.jsonl"):
        if m := re.fullmatch(r"passk-(\d+)\.jsonl", p.name):
            steps.append(int(m.group(1)))
    return sorted(steps)


def read_eval(run: RunDir, step: int) -> dict[tuple[str, str | None], dict[str, Any]]:
    """The per-problem lines of one evaluation, keyed by (problem_id, condition); UserError when missing."""
    path = run.passk_file(step)
    if not path.is_file():
        have = ", ".join(map(str, evaluated_steps(run))) or "none"
        raise UserError(f"no evaluation at step {step} in {run.path} (no {path.name}; evaluated steps: {have})")
    out: dict[tuple[str, str | None], dict[str, Any]] = {}
    for i, line in enumerate(read_jsonl(path)):
        cond = line.get("condition")
        key = (str(line.get("problem_id", i)), None if cond is None else str(cond))
        out.setdefault(key, line)
    if not out:
        raise UserError(f"{path} holds no problems")
    return out


def _values(metric: str, line: dict[str, Any], where: str) -> float:
    """One problem's value of `metric` in `line`."""
    correct = [bool(c) for c in line.get("correct") or []]
    if metric == "greedy_pass@1":
        if line.get("greedy_correct") is None:
            raise UserError(f"{where} has no greedy answers (eval.greedy was off): greedy_pass@1 cannot be compared")
        return float(bool(line["greedy_correct"]))
    if not correct:
        raise UserError(f"{where}: problem {line.get('problem_id')!r} has no sample verdicts ('correct')")
    if metric == "sample_accuracy":
        return sum(correct) / len(correct)
    kind, k = metric.split("@")
    k = int(k)
    if k > len(correct):
        raise UserError(f"{metric}: {where} has only {len(correct)} samples for problem {line.get('problem_id')!r}")
    if kind == "pass":
        return pass_at_k(len(correct), sum(correct), k)
    answers = line.get("answers")
    if not isinstance(answers, list):
        why = "the task has no canonical answer form, or the run predates maj@k"
        raise UserError(f"{metric}: {where} carries no 'answers' ({why})")
    return float(majority_correct(answers[:k], correct[:k]))


def compare(
    run_dir: str | Path | RunDir, step_a: int, step_b: int, metrics: Sequence[str] | None = None
) -> tuple[list[Comparison], int]:
    """The comparisons of `metrics` between the evaluations at `step_a` and `step_b`, and the number of paired problems."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not run.path.is_dir():
        raise UserError(f"no such run directory: {run.path}")
    for m in metrics or []:
        if not _METRIC.fullmatch(m):
            raise UserError(f"unknown metric {m!r}: use pass@K, maj@K, sample_accuracy or greedy_pass@1")
    lines_a, lines_b = read_eval(run, step_a), read_eval(run, step_b)
    keys = [k for k in lines_a if k in lines_b]
    if not keys:
        raise UserError(f"the evaluations at steps {step_a} and {step_b} share no problem (problem_id, condition)")
    if metrics is None:
        greedy = all(lines_a[k].get("greedy_correct") is not None and lines_b[k].get("greedy_correct") is not None for k in keys)
        metrics = ["pass@1", *(["greedy_pass@1"] if greedy else [])]
    where_a, where_b = f"step {step_a}", f"step {step_b}"
    out = []
    for metric in metrics:
        va = [_values(metric, lines_a[k], where_a) for k in keys]
        vb = [_values(metric, lines_b[k], where_b) for k in keys]
        diff, low, high, p = paired_bootstrap_diff(va, vb)
        extra: dict[str, Any] = {}
        if metric == "greedy_pass@1":
            only_a = sum(1 for x, y in zip(va, vb, strict=True) if x and not y)
            only_b = sum(1 for x, y in zip(va, vb, strict=True) if y and not x)
            extra = {"mcnemar_p": mcnemar_exact(only_a, only_b), "only_a": only_a, "only_b": only_b}
        out.append(Comparison(metric, sum(va) / len(va), sum(vb) / len(vb), diff, low, high, p, **extra))
    return out, len(keys)


def _p(p: float) -> str:
    """A bootstrap p-value to its resolution (2000 resamples: below 0.001 is printed as such)."""
    return "<0.001" if p < 0.001 else f"{p:.4f}"


def format_report(comparisons: list[Comparison], step_a: int, step_b: int, paired: int) -> str:
    """A table: metric, the two values, the difference, its 95% interval and p (McNemar below greedy)."""
    head = f"{'metric':<16} {'step ' + str(step_a):>10} {'step ' + str(step_b):>10} {'diff (B-A)':>11}  {'95% CI':<18} {'p':>7}"
    rows = [f"{paired} paired problems; paired bootstrap over problems (2000 resamples, seeded)", head]
    for c in comparisons:
        rows.append(f"{c.metric:<16} {c.a:>10.4f} {c.b:>10.4f} {c.diff:>+11.4f}  [{c.low:+.4f}, {c.high:+.4f}] {_p(c.p):>7}")
        if c.mcnemar_p is not None:
            rows.append(
                f"{'':<16} McNemar exact p={c.mcnemar_p:.4f} (discordant: {c.only_a} solved at step {step_a} only, "
                f"{c.only_b} at step {step_b} only)"
            )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=command_name("analysis/compare_evals.py"),
        description="Whether the evaluation at step B beats the one at step A on the same problems: the difference "
        "per metric, its 95%% paired-bootstrap interval and p-value (McNemar's exact test for greedy pass@1).",
    )
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (reads eval/passk-<step>.jsonl)")
    p.add_argument("--steps", required=True, nargs=2, type=int, metavar=("A", "B"), help="the two evaluated steps")
    p.add_argument(
        "--metric",
        nargs="+",
        metavar="M",
        help="pass@K, maj@K, sample_accuracy, greedy_pass@1 "
        "(default: pass@1, and greedy_pass@1 when both evaluations have greedy answers)",
    )
    args = p.parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    a, b = args.steps
    try:
        comparisons, paired = compare(args.run, a, b, args.metric)
    except (OSError, ValueError) as e:
        raise UserError(str(e)) from None
    print(format_report(comparisons, a, b, paired))
    return 0


if __name__ == "__main__":
    sys.exit(main())
