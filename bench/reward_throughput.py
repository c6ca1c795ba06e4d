"""Completions scored per second by each reward, on a realistic mix of completions for each task.

For every task, its held-out problems are paired with completions in the mix a GRPO batch sees:
correct (the task's gold completion), a wrong answer in the right format, the right answer with no
tags, a long ramble ending in the answer, an empty reply, and (1 in 200) a 100 KB runaway. Each
reward of the task's default set is timed as training calls it (registry-built, guarded, chat
completions, the dataset's columns, `completion_ids`), in batches of 64.

    uv run bench/reward_throughput.py
    uv run bench/reward_throughput.py --tasks countdown gsm8k --completions 4000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

BATCH = 64


def gsm8k_file(directory: Path) -> Path:
    """A local GSM8K-format file (synthetic word problems), so the benchmark needs no network or cache."""
    rng = random.Random(0)
    rows = []
    for i in range(400):
        a, b, c = rng.randint(2, 90), rng.randint(2, 90), rng.randint(2, 9)
        rows.append(
            {
                "question": f"A shop sells {a} pens on Monday and {b} on Tuesday, at ${c} each (order {i}). "
                "How many dollars does it take in?",
                "answer": f"It sells {a} + {b} = <<{a}+{b}={a + b}>>{a + b} pens.\n"
                f"That is {a + b} * {c} = <<{a + b}*{c}={(a + b) * c}>>{(a + b) * c} dollars.\n#### {(a + b) * c}",
            }
        )
    path = directory / "gsm8k_synthetic.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mix(gold: str, rng: random.Random) -> str:
    """One completion drawn from the realistic mix, derived from a gold completion."""
    roll = rng.random()
    if roll < 0.40:
        return gold
    if roll < 0.70:  # right format, wrong answer: bump the last number in the answer block
        return re.sub(r"(-?\d+)(?!.*\d)", lambda m: str(int(m.group(1)) + rng.randint(1, 9)), gold, flags=re.S)
    if roll < 0.85:
        return re.sub(r"</?(think|answer)>", "", gold)
    if roll < 0.945:
        ramble = " ".join(rng.choice(["Let", "me", "think", "about", "this", "step", "by", "3", "+", "4"]) for _ in range(300))
        return ramble + "\n" + gold
    if roll < 0.995:
        return ""
    return "9" * 100_000


def bench_task(name: str, params: dict, n: int, repeats: int) -> list[tuple[str, str, float, float]]:
    import rewards
    import tasks

    task = tasks.get(name, **params)
    _, eval_ds = task.build(seed=0)
    rows = list(eval_ds)
    rng = random.Random(1)
    picked = [rows[i % len(rows)] for i in range(n)]
    texts = [mix(task.gold(r), rng) for r in picked]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    columns = {k: [r[k] for r in picked] for k in rows[0] if k != "prompt"}
    prompts = [r["prompt"] for r in picked]
    ids = [list(range(max(1, len(t) // 4))) for t in texts]  # ~4 characters per token
    funcs, _ = rewards.build([dict(r) for r in task.default_rewards])
    out = []
    for fn in funcs:
        times, values = [], []
        for _ in range(repeats):
            values = []
            t0 = time.perf_counter()
            for s in range(0, n, BATCH):
                batch = {k: v[s : s + BATCH] for k, v in columns.items()}
                values += fn(prompts[s : s + BATCH], completions[s : s + BATCH], completion_ids=ids[s : s + BATCH], **batch)
            times.append(time.perf_counter() - t0)
        valid = [v for v in values if v is not None]
        out.append((name, fn.__name__, n / statistics.median(times), statistics.fmean(valid) if valid else float("nan")))
    return out


def main() -> int:
    import tasks

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", nargs="*", default=None, help=f"default: all ({', '.join(tasks.names())})")
    ap.add_argument("--completions", type=int, default=2000, help="completions scored per reward and repeat")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        task_params = {
            "countdown": {"train_size": 10, "eval_size": 200},
            "gsm8k": {"data": str(gsm8k_file(Path(tmp))), "train_samples": 10, "eval_samples": 200},
        }
        results = []
        for name in args.tasks or tasks.names():
            results += bench_task(name, task_params.get(name, {}), args.completions, args.repeats)

    print(f"{'task':<14} {'reward':<22} {'completions/s':>14} {'mean reward':>12}")
    for task, reward, rate, mean in results:
        print(f"{task:<14} {reward:<22} {rate:>14,.0f} {mean:>12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
