"""Pass@K on held-out problems, generated through the trainer's own generation path."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from training_with_unsloth import distributed
from training_with_unsloth.config import EvalConfig
from training_with_unsloth.intervals import bootstrap_mean_ci, wilson_interval
from training_with_unsloth.passk import majority_correct, mean_pass_at_k, per_problem_pass_at_k
from training_with_unsloth.rundir import RunDir, atomic_write_text, to_json


class Generator(Protocol):
    def generate_completions(
        self, prompts: list, *, num_samples: int, greedy: bool, temperature: float, max_new_tokens: int, batch_size: int
    ) -> tuple[list[list[str]], list[list[list[int]]]]: ...


def score_rewards(
    reward_funcs: Sequence[Callable],
    prompts: list,
    texts: list[str],
    rows: list[dict[str, Any]],
    *,
    completion_ids: list[list[int]] | None = None,
    trainer_state: Any = None,
) -> dict[str, list[float | None]]:
    """Each reward function on plain completions, called the way TRL calls it (chat completions, columns,
    `completion_ids`, `trainer_state`)."""
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    columns = {key: [row[key] for row in rows] for key in rows[0] if key != "prompt"} if rows else {}
    extra: dict[str, Any] = {"trainer_state": trainer_state}
    if completion_ids is not None:
        extra["completion_ids"] = completion_ids
    out = {}
    for fn in reward_funcs:
        values = fn(prompts=prompts, completions=completions, **columns, **extra)
        out[fn.__name__] = [None if v is None else float(v) for v in values]
    return out


def _mean(values: Sequence[float | None]) -> float:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else float("nan")


def select_rows(rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The first ``k`` rows, taken round-robin across conditions when rows carry one (so none is left out)."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get("condition"), []).append(row)
    if len(groups) <= 1:
        return rows[:k]
    picked: list[dict[str, Any]] = []
    queues = [iter(g) for g in groups.values()]
    while len(picked) < k and queues:
        alive = []
        for q in queues:
            row = next(q, None)
            if row is not None and len(picked) < k:
                picked.append(row)
                alive.append(q)
        queues = alive
    return picked


def _ci(interval: tuple[float, float]) -> list[float]:
    """An interval as the `[low, high]` list logged beside its value (`<key>_ci`)."""
    return [float(interval[0]), float(interval[1])]


def _per_condition(
    rows: list[dict[str, Any]], correct: list[list[bool]], greedy_correct: list[bool] | None, n: int, ks: Sequence[int] = ()
) -> dict[str, Any]:
    """`eval/condition/<c>/sample_accuracy`, `/pass@<k>` (and `/greedy_pass@1`) for rows that carry a `condition`,
    each with its 95% interval (`..._ci`: bootstrap over the condition's problems; Wilson for greedy)."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("condition") is not None:
            groups.setdefault(str(row["condition"]), []).append(i)
    out: dict[str, Any] = {}
    for cond, idx in sorted(groups.items()):
        out[f"eval/condition/{cond}/sample_accuracy"] = sum(sum(correct[i]) for i in idx) / (len(idx) * n)
        out[f"eval/condition/{cond}/sample_accuracy_ci"] = _ci(bootstrap_mean_ci([sum(correct[i]) / n for i in idx]))
        for k in ks:
            per = per_problem_pass_at_k([correct[i] for i in idx], k)
            out[f"eval/condition/{cond}/pass@{k}"] = sum(per) / len(per)
            out[f"eval/condition/{cond}/pass@{k}_ci"] = _ci(bootstrap_mean_ci(per))
        if greedy_correct is not None:
            solved = sum(greedy_correct[i] for i in idx)
            out[f"eval/condition/{cond}/greedy_pass@1"] = solved / len(idx)
            out[f"eval/condition/{cond}/greedy_pass@1_ci"] = _ci(wilson_interval(solved, len(idx)))
    return out


@dataclass(frozen=True)
class EvalCompletions:
    """One evaluation's completions: `num_samples` texts and token ids per problem, greedy ones (or None)."""

    samples: list[list[str]]
    sample_ids: list[list[list[int]]]
    greedy: list[list[str]] | None


@dataclass(frozen=True)
class EvalScores:
    """Rewards per function over the flattened samples, correctness per sample and greedy completion."""

    rewards: dict[str, list[float | None]]
    correct: list[list[bool]]
    greedy_correct: list[bool] | None
    completions: list[str]  # the samples flattened, problem by problem
    completion_ids: list[list[int]]  # their token ids, flattened the same way
    answers: list[list[str | None]] | None = None  # the task's answer_key per sample (None: no canonical form)


def seeded_evaluate(evaluator: PassKEvaluator, generator: Generator, step: int, seed: int) -> dict[str, Any]:
    """`evaluator.evaluate` under its own RNG, seeded by the run's seed and the step: training-time Pass@K and
    `evaluate.py` on the same checkpoint draw the same samples, with any number of processes; training's own RNG
    is neither used nor moved."""
    import torch

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        return evaluator.evaluate(generator, step, seed=seed * 1_000_003 + step)


class PassKEvaluator:
    """Samples `num_samples` completions (plus one greedy) per held-out problem and scores them."""

    def __init__(
        self,
        *,
        task: Any,
        eval_rows: list[dict[str, Any]],
        reward_funcs: Sequence[Callable],
        reward_weights: Sequence[float],
        cfg: EvalConfig,
        max_new_tokens: int,
        run: RunDir,
    ):
        self.task = task
        self.rows = select_rows(eval_rows, cfg.num_problems)
        self.reward_funcs = list(reward_funcs)
        self.weights = list(reward_weights)
        self.cfg = cfg
        self.max_new_tokens = cfg.max_new_tokens or max_new_tokens
        self.run_dir = run
        self.progress: Callable[[int], None] | None = None  # called with the completions each batch generated

    @property
    def total_completions(self) -> int:
        """Completions one evaluation generates: `num_samples` per problem, plus the greedy one."""
        return len(self.rows) * (self.cfg.num_samples + int(self.cfg.greedy))

    def evaluate(self, generator: Generator, step: int, *, seed: int | None = None) -> dict[str, Any]:
        """Run one evaluation, write `eval/passk-<step>.jsonl`, return the aggregate metrics.

        Steps: `generate` (sampled and greedy completions, split across processes and gathered), `score`
        (rewards and correctness), `write_lines` (the per-problem file; the main process only), `aggregate`
        (the `eval/...` metrics, the same on every process). `seed` seeds each chunk of problems (`generate`).
        """
        t0 = time.perf_counter()
        generated = self.generate(generator, seed=seed)
        scored = self.score(generated, trainer_state=getattr(generator, "state", None))
        if distributed.is_main():
            self.write_lines(step, generated, scored)
        metrics = self.aggregate(scored)
        metrics["eval/seconds"] = time.perf_counter() - t0
        return metrics

    def chunks(self) -> tuple[list[range], list[range]]:
        """The problems in generation batches: sampled ones (`batch_size // num_samples` problems each), greedy
        ones (`batch_size` problems each). The chunks, not the processes, fix what is generated together."""
        n, cfg = len(self.rows), self.cfg
        per = max(1, cfg.batch_size // cfg.num_samples)
        sampled = [range(i, min(i + per, n)) for i in range(0, n, per)]
        greedy = [range(i, min(i + cfg.batch_size, n)) for i in range(0, n, cfg.batch_size)] if cfg.greedy else []
        return sampled, greedy

    def generate(self, generator: Generator, *, seed: int | None = None) -> EvalCompletions:
        """`num_samples` sampled completions per problem, plus one greedy when `eval.greedy` is on.

        Each process generates its share of the chunks (round-robin) and the shares are gathered, so every
        process ends with all completions. With `seed`, sampled chunk c is generated after
        `torch.manual_seed(seed + c)`: the completions do not depend on how many processes share the work.
        """
        import torch

        cfg = self.cfg
        prompts = [r["prompt"] for r in self.rows]
        gen: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, batch_size=cfg.batch_size, temperature=cfg.temperature)
        if self.progress is not None:
            gen["on_batch"] = self.progress
        sampled, greedy = self.chunks()
        mine: dict[tuple[str, int], Any] = {}
        for c in distributed.shard(len(sampled)):
            if seed is not None:
                torch.manual_seed(seed + c)
            chunk = [prompts[i] for i in sampled[c]]
            mine[("sampled", c)] = generator.generate_completions(chunk, num_samples=cfg.num_samples, greedy=False, **gen)
        for c in distributed.shard(len(greedy)):
            chunk = [prompts[i] for i in greedy[c]]
            mine[("greedy", c)] = generator.generate_completions(chunk, num_samples=1, greedy=True, **gen)[0]
        parts: dict[tuple[str, int], Any] = {}
        for share in distributed.gather(mine):
            parts.update(share)
        samples = [g for c in range(len(sampled)) for g in parts[("sampled", c)][0]]
        sample_ids = [g for c in range(len(sampled)) for g in parts[("sampled", c)][1]]
        greedy_texts = [g for c in range(len(greedy)) for g in parts[("greedy", c)]] if cfg.greedy else None
        return EvalCompletions(samples, sample_ids, greedy_texts)

    def score(self, generated: EvalCompletions, *, trainer_state: Any = None) -> EvalScores:
        """Each reward function on every sample (as TRL calls it), and the task's verdict on every completion."""
        rows, n = self.rows, self.cfg.num_samples
        samples, greedy = generated.samples, generated.greedy
        flat_texts = [t for group in samples for t in group]
        flat_rows = [row for row in rows for _ in range(n)]
        flat_prompts = [row["prompt"] for row in flat_rows]
        flat_ids = [ids for group in generated.sample_ids for ids in group]
        rewards = score_rewards(
            self.reward_funcs, flat_prompts, flat_texts, flat_rows, completion_ids=flat_ids, trainer_state=trainer_state
        )
        correct = [[bool(self.task.is_correct(t, row)) for t in group] for group, row in zip(samples, rows, strict=True)]
        greedy_correct = [bool(self.task.is_correct(g[0], row)) for g, row in zip(greedy, rows, strict=True)] if greedy else None
        answers = None
        if self._has_answer_key():
            answers = [[self.task.answer_key(t, row) for t in group] for group, row in zip(samples, rows, strict=True)]
        return EvalScores(rewards, correct, greedy_correct, flat_texts, flat_ids, answers)

    def _has_answer_key(self) -> bool:
        """Whether the task gives answers a canonical form (overrides `Task.answer_key`): then maj@k is reported."""
        from tasks.base import Task

        fn = getattr(type(self.task), "answer_key", None)
        return callable(fn) and fn is not Task.answer_key

    def write_lines(self, step: int, generated: EvalCompletions, scored: EvalScores) -> None:
        """`eval/passk-<step>.jsonl`: one line per problem with its samples, verdicts and rewards."""
        n = self.cfg.num_samples
        samples, greedy = generated.samples, generated.greedy
        correct, greedy_correct = scored.correct, scored.greedy_correct
        lines = []
        for i, row in enumerate(self.rows):
            per = {name: vals[i * n : (i + 1) * n] for name, vals in scored.rewards.items()}
            lines.append(
                {
                    "step": step,
                    "problem_id": row.get("problem_id", str(i)),
                    **({"condition": row["condition"]} if row.get("condition") is not None else {}),
                    "prompt": row["prompt"],
                    "gold": self.task.gold(row),
                    "samples": samples[i],
                    "correct": correct[i],
                    "num_correct": sum(correct[i]),
                    "rewards": per,
                    **({"greedy": greedy[i][0], "greedy_correct": greedy_correct[i]} if greedy else {}),
                    **({"answers": scored.answers[i]} if scored.answers is not None else {}),
                }
            )
        atomic_write_text(self.run_dir.passk_file(step), "".join(to_json(line) + "\n" for line in lines))

    def aggregate(self, scored: EvalScores) -> dict[str, Any]:
        """The `eval/...` metrics: pass@k, greedy pass@1, accuracies (also per condition), maj@k, rewards, length.

        Each pass@k, maj@k and accuracy comes with its 95% interval as a `[low, high]` list under `<key>_ci`:
        a seeded bootstrap over problems (`intervals.bootstrap_mean_ci`), Wilson for greedy pass@1.
        """
        cfg, n = self.cfg, self.cfg.num_samples
        correct, greedy_correct, rewards = scored.correct, scored.greedy_correct, scored.rewards
        ks = sorted(set(cfg.k))
        metrics: dict[str, Any] = {}
        for k, v in mean_pass_at_k(correct, ks).items():
            metrics[f"eval/pass@{k}"] = v
            metrics[f"eval/pass@{k}_ci"] = _ci(bootstrap_mean_ci(per_problem_pass_at_k(correct, k)))
        if scored.answers is not None:
            for k in ks:
                votes = [float(majority_correct(a[:k], c[:k])) for a, c in zip(scored.answers, correct, strict=True)]
                metrics[f"eval/maj@{k}"] = _mean(votes)
                metrics[f"eval/maj@{k}_ci"] = _ci(bootstrap_mean_ci(votes))
        if greedy_correct is not None:
            metrics["eval/greedy_pass@1"] = sum(greedy_correct) / len(greedy_correct)
            metrics["eval/greedy_pass@1_ci"] = _ci(wilson_interval(sum(greedy_correct), len(greedy_correct)))
        metrics["eval/sample_accuracy"] = sum(map(sum, correct)) / (len(correct) * n)
        metrics["eval/sample_accuracy_ci"] = _ci(bootstrap_mean_ci([sum(c) / n for c in correct]))
        metrics.update(_per_condition(self.rows, correct, greedy_correct, n, ks))
        total = [0.0] * len(scored.completions)
        for (name, vals), w in zip(rewards.items(), self.weights, strict=True):
            metrics[f"eval/rewards/{name}"] = _mean(vals)
            total = [t + w * (v if v is not None else 0.0) for t, v in zip(total, vals, strict=True)]
        metrics["eval/reward"] = _mean(total)
        metrics["eval/completion_length"] = _mean([float(len(ids)) for ids in scored.completion_ids])
        return metrics
