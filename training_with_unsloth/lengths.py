"""Sequence lengths, checked before the model loads.

A sequence is the chat-templated prompt followed by the completion. Unsloth cuts inputs longer
than `model.max_seq_length` with a one-time warning, and the log-probs of a cut sequence no longer
line up with their targets; so `model.max_seq_length` must hold the longest prompt of the train
and eval sets plus the longest completion (`trainer.max_completion_length`, or
`eval.max_new_tokens` when that is longer). Prompts are measured with the run's tokenizer and
chat template (and `trainer.chat_template_kwargs`), exactly as TRL tokenizes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from training_with_unsloth.errors import ConfigError

_BATCH = 256


@dataclass
class LengthReport:
    """The three numbers the check compares, and where the longest prompt came from."""

    longest_prompt: int
    where: str
    completion: int
    max_seq_length: int
    estimated_with: str | None = None  # a stand-in tokenizer when the run's is not available

    @property
    def needed(self) -> int:
        return self.longest_prompt + self.completion

    @property
    def fits(self) -> bool:
        return self.needed <= self.max_seq_length

    @property
    def certain(self) -> bool:
        """Whether a failed check is certain even from an estimate (the completions alone do not fit)."""
        return self.estimated_with is None or self.completion + 1 > self.max_seq_length

    def text(self) -> str:
        about = "" if self.estimated_with is None else f"about {self.longest_prompt} tokens, estimated with {self.estimated_with}"
        prompt = f"{self.longest_prompt} tokens" if not about else about
        return (
            f"the longest prompt ({self.where}) is {prompt} and completions take up to {self.completion} "
            f"(max of trainer.max_completion_length and eval.max_new_tokens): {self.needed} tokens, "
            f"model.max_seq_length is {self.max_seq_length}"
        )

    def error(self) -> ConfigError:
        return ConfigError(f"{self.text()}: set model.max_seq_length to at least {self.needed}, or shorten the completions")


def distinct_prompts(rows: Iterable[Any]) -> list[Any]:
    """The distinct prompts of a column of prompts (chat message lists or strings), in first-seen order."""
    seen: dict[str, Any] = {}
    for prompt in rows:
        seen.setdefault(json.dumps(prompt, sort_keys=True), prompt)
    return list(seen.values())


def prompt_lengths(tokenizer: Any, prompts: Sequence[Any], chat_template_kwargs: dict[str, Any] | None = None) -> list[int]:
    """Token counts of `prompts` as TRL tokenizes them (chat template with the generation prompt)."""
    kwargs = dict(chat_template_kwargs or {})
    out: list[int] = []
    for start in range(0, len(prompts), _BATCH):
        chunk = list(prompts[start : start + _BATCH])
        if chunk and isinstance(chunk[0], str):
            ids = tokenizer(text=chunk)["input_ids"]
        else:
            ids = tokenizer.apply_chat_template(
                conversation=chunk, add_generation_prompt=True, tokenize=True, return_dict=True, **kwargs
            )["input_ids"]
        out.extend(len(row) for row in ids)
    return out


def stored_prompts(ds: Any) -> list[Any]:
    """A dataset's `prompt` column as stored (a fetch-time transform, e.g. `mix_oneshot`'s, is bypassed:
    the stored prompts are the longest variant it serves)."""
    if "prompt" not in ds.column_names:
        return []
    return list(ds.with_format(None)["prompt"])


def measure(
    tokenizer: Any,
    prompt_sets: dict[str, Sequence[Any]],
    *,
    completion: int,
    max_seq_length: int,
    chat_template_kwargs: dict[str, Any] | None = None,
    estimated_with: str | None = None,
) -> LengthReport:
    """The longest prompt over the named prompt sets, against the completion budget and max_seq_length."""
    longest, where = 0, "none"
    for name, prompts in prompt_sets.items():
        unique = distinct_prompts(prompts)
        if not unique:
            continue
        lengths = prompt_lengths(tokenizer, unique, chat_template_kwargs)
        top = max(lengths)
        if top > longest:
            longest, where = top, name
    return LengthReport(longest, where, completion, max_seq_length, estimated_with)


def completion_budget(max_completion_length: int, eval_max_new_tokens: int | None) -> int:
    """The longest completion the run generates: in training, or in evaluation when that is longer."""
    return max(int(max_completion_length), int(eval_max_new_tokens or 0))


def prompt_sets(cfg: Any, train_ds: Any, eval_ds: Any) -> dict[str, list]:
    """Every prompt the run can serve: the train set (each curriculum phase's, at both ends of its
    schedules, when prompts come from a curriculum or replay) and the eval set."""
    import tasks as task_registry

    sets: dict[str, list] = {}
    if cfg.prompts_change:
        from training_with_unsloth.curriculum_rules import phase_parameter_sets

        for where, params in phase_parameter_sets(cfg.task.name, cfg.task.params, cfg.curriculum):
            train, _ = task_registry.get(cfg.task.name, **params).build(cfg.seed)
            sets[f"train set, {where}" if cfg.curriculum.enabled else "train set"] = stored_prompts(train)
    else:
        sets["train set"] = stored_prompts(train_ds)
    sets["eval set"] = stored_prompts(eval_ds)
    return sets


def check_sequence_lengths(
    cfg: Any, args: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, *, estimated_with: str | None = None
) -> LengthReport:
    """`model.max_seq_length` (of the experiment config `cfg`) against the longest prompt plus the longest
    completion; a ConfigError when it cannot hold them (from an estimate only when the completions alone do not fit)."""
    budget = completion_budget(args.max_completion_length, cfg.eval.max_new_tokens if cfg.eval.enabled else None)
    report = measure(
        tokenizer,
        prompt_sets(cfg, train_ds, eval_ds),
        completion=budget,
        max_seq_length=cfg.model.max_seq_length,
        chat_template_kwargs=args.chat_template_kwargs,
        estimated_with=estimated_with,
    )
    if not report.fits and report.certain:
        raise report.error()
    return report
