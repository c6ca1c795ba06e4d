"""`completions/<step>.jsonl`: what the policy wrote at a step, with every reward, the total and the advantage.

One JSON line per completion, in the trainer's order (each prompt's group contiguous):

    {"step": 10, "problem_id": "17", "group": 0, "prompt": "...", "prompt_truncated": false,
     "completion": "...", "truncated": false, "completion_length": 42,
     "rewards": {"correct": 1.0, "format": null}, "total": 1.5, "advantage": 0.71}

`rewards` are the raw (unweighted) values, null where a reward function gave None; `total` is the
weighted sum TRL trains on; `group` numbers the prompts of the step; `completion_length` is in tokens.
Text is only JSON-escaped (non-ASCII as \\u escapes), so any model output stays one line.
Import after `backends.prepare()` (this module imports transformers).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from training_with_unsloth import distributed
from training_with_unsloth.controls import ResearchCallback
from training_with_unsloth.controls.scored_batch import ScoredBatch
from training_with_unsloth.rundir import RunDir, atomic_write_text, to_json

MAX_LINES = 1024  # completions kept per step (the rest of a larger step is left out)


def prompt_text(prompt: Any) -> str:
    """The last user message of a chat prompt (the prompt itself when it is plain text)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list | tuple):
        messages = [m for m in prompt if isinstance(m, dict)]
        users = [m for m in messages if m.get("role") == "user"] or messages
        if users:
            return _content_text(users[-1].get("content"))
    return "" if prompt is None else str(prompt)


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a multimodal content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def _cut(text: Any, max_chars: int) -> tuple[str, bool]:
    text = "" if text is None else str(text)
    return (text[:max_chars], True) if len(text) > max_chars else (text, False)


def _number(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) or math.isinf(value) else value


class CompletionLog(ResearchCallback):
    """Writes `completions/<step>.jsonl` at step 1 and every `every` steps (`every` 0: never).

    A step's generation batches (several with gradient accumulation) are gathered in memory and the
    file is rewritten atomically after each, so a reader never sees half a file. At most `max_lines`
    completions per step are kept, and prompts and completions are cut to `max_chars` characters.
    With several processes the lines of every process are gathered (in rank order) and the first writes them.
    """

    def __init__(self, run: RunDir, every: int, max_chars: int = 4000, max_lines: int = MAX_LINES):
        self.run = run
        self.every = every
        self.max_chars = max_chars
        self.max_lines = max_lines
        self._step: int | None = None
        self._lines: list[str] = []
        self._groups = 0  # prompts of the current step seen so far (numbers the groups across batches)

    def wanted(self, step: int) -> bool:
        return self.every > 0 and (step == 1 or step % self.every == 0)

    def path(self, step: int) -> Path:
        return self.run.completions / f"{step}.jsonl"

    def on_scored_batch(self, batch: ScoredBatch) -> None:
        if not self.wanted(batch.step):
            return
        if batch.step != self._step:  # a new step (or a step redone after a resume): start its file afresh
            self._step, self._lines, self._groups = batch.step, [], 0
        room = self.max_lines - len(self._lines)  # the same on every process: each holds the gathered lines
        offset = distributed.rank() * len(batch.completions)  # this process's rows in the step's batch
        shares = distributed.gather(self._records(batch, limit=room, offset=offset) if room > 0 else [])
        if room > 0:
            self._lines.extend([line for share in shares for line in share][:room])
            if distributed.is_main():
                atomic_write_text(self.path(batch.step), "".join(self._lines))
        self._groups += -(-len(batch.completions) * len(shares) // max(batch.num_generations, 1))

    def _records(self, batch: ScoredBatch, limit: int, offset: int = 0) -> list[str]:
        total = batch.total
        n = max(batch.num_generations, 1)
        out = []
        for i in range(min(limit, len(batch.completions))):
            row = batch.rows[i] if i < len(batch.rows) else {}
            prompt, prompt_cut = _cut(prompt_text(row.get("prompt")), self.max_chars)
            completion, cut = _cut(batch.completions[i], self.max_chars)
            group = self._groups + (offset + i) // n
            record: dict[str, Any] = {"step": batch.step, "problem_id": row.get("problem_id"), "group": group}
            if row.get("condition") is not None:
                record["condition"] = row["condition"]
            record.update(
                prompt=prompt,
                prompt_truncated=prompt_cut,
                completion=completion,
                truncated=cut,
                completion_length=batch.completion_lengths[i] if i < len(batch.completion_lengths) else None,
                rewards={name: _number(values[i]) for name, values in batch.rewards.items()},
                total=_number(total[i]),
                advantage=_number(batch.advantages[i]) if i < len(batch.advantages) else None,
            )
            out.append(to_json(record) + "\n")
        return out
