"""The probe a run's LLCs are measured on: which prompts, which completions, and its hash.
`ProbeSource` holds it: built once for the run, or per checkpoint for `self`.

`run_probe(ctx, settings)` builds it from the run's task and sampler (`analysis/probe.py` does the
tokenization and the loss):

- prompts: `num_probes` held-out problems of the run's eval split, draw `probe_draw` (draw k takes
  problems k*n .. (k+1)*n - 1, so draws are disjoint);
- completions: `rollouts` (default) sampled once, with the run's sampler, from the checkpoints
  `probe_from` names (prompt i from checkpoint probe_from[i % len]), the same rows for every
  checkpoint; `self`: each checkpoint's own completions (`step` required); `reference`: gold answers.

Rollouts are cached in `analysis/probe-rollouts-<step>-n<rows>-d<draw>.jsonl`. `probe_hash` is a
fingerprint of the token rows and scored spans, recorded in the settings file and in every row.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from training_with_unsloth.errors import UserError


def probe_prompts(ctx: Any, settings: Any) -> list[Any]:
    """The prompts of probe draw `settings.probe_draw`: held-out problems k*n .. (k+1)*n - 1 of the eval split."""
    n, k = settings.num_probes, settings.probe_draw
    rows = ctx.held_out
    if len(rows) < (k + 1) * n:
        raise UserError(
            f"probe draw {k} of {n} prompts needs {(k + 1) * n} held-out problems; the run's eval split has {len(rows)}: "
            "lower --num-probes (or use draw 0)"
        )
    if len(rows[k * n : (k + 1) * n]) < settings.batch_size:
        raise UserError(f"--num-probes gives {n} probe rows, fewer than --batch-size {settings.batch_size}")
    return rows[k * n : (k + 1) * n]


def default_probe_from(steps: list[int]) -> tuple[int, ...]:
    """The checkpoints the default probe's completions come from: the first and the last, alternating by prompt."""
    return tuple(sorted({steps[0], steps[-1]}))


def run_probe(ctx: Any, settings: Any, step: int | None = None) -> Any:
    """The probe for `settings` (for `self`, checkpoint `step`'s own completions)."""
    import tasks
    from analysis.probe import RunSampling, build_probe

    cfg = ctx.cfg
    rows = probe_prompts(ctx, settings)
    prompts = [r["prompt"] for r in rows]
    sampling = RunSampling.from_trainer(cfg.trainer)
    if settings.probe == "reference":
        task = tasks.get(cfg.task.name, **cfg.task.params)
        completions = [task.gold(r) for r in rows]
    elif settings.probe == "self":
        if step is None:
            raise ValueError("the 'self' probe is built per checkpoint: pass its step")
        completions = rollouts(ctx, prompts, sampling, settings, step)
    else:
        sources = settings.probe_from or default_probe_from(ctx.run.adapter_steps())
        per_source = {s: rollouts(ctx, prompts, sampling, settings, s) for s in sources}
        completions = [per_source[sources[i % len(sources)]][i] for i in range(len(prompts))]
    return build_probe(
        ctx.tokenizer, prompts, completions,
        max_completion_tokens=sampling.max_completion_length, chat_template_kwargs=sampling.chat_template_kwargs,
    )  # fmt: skip


def probe_hash(probe: Any) -> str:
    """A 12-hex-digit fingerprint of a probe's token rows and scored spans."""
    h = hashlib.sha256()
    h.update(json.dumps([list(probe.input_ids.shape), probe.spans]).encode())
    h.update(probe.input_ids.to("cpu").numpy().astype("int64").tobytes())
    return h.hexdigest()[:12]


def rollouts(ctx: Any, prompts: list, sampling: Any, settings: Any, step: int) -> list[Any]:
    """Completions sampled once from checkpoint `step` with the run's sampler; cached per step and draw."""
    from analysis.probe import sample_rollouts
    from training_with_unsloth.rundir import atomic_write_text, read_jsonl

    run = ctx.run
    # one file per step, probe size and draw: a batch of other prompts samples other completions for the same ones
    path = run.analysis / f"probe-rollouts-{step}-n{len(prompts)}-d{settings.probe_draw}.jsonl"
    seed = settings.seed + 1000 * settings.probe_draw
    sampler = {**sampling.record(), "seed": seed}
    model, tokenizer = ctx.model, ctx.tokenizer
    vocab = max(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    cached = cached_rollouts(list(read_jsonl(path)), prompts, sampler, vocab)
    if cached is not None:
        return cached
    if step not in run.adapter_steps():
        raise UserError(f"--probe-from {step}: no checkpoints/adapter-{step}; have {run.adapter_steps()}")
    ctx.swap(step)
    sampled = sample_rollouts(model, tokenizer, prompts, sampling, seed=seed, device=ctx.device)
    records = [
        {"step": step, "prompt": p, "completion": r.text, "completion_ids": list(r.ids), "ended": r.ended,
         "end_token_id": r.end_token, "sampler": sampler}
        for p, r in zip(prompts, sampled, strict=True)
    ]  # fmt: skip
    run.analysis.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(rec) + "\n" for rec in records))
    return sampled


def cached_rollouts(records: list[dict], prompts: list, sampler: dict[str, Any], vocab: int) -> list[Any] | None:
    """The cached rollouts when the file holds exactly these prompts, sampled with these settings; else None (resample).

    A file from an older version (no `ended`, `completion_ids` or `sampler`) or one edited by hand
    does not count: its rows may have been cut or sampled differently.
    """
    from analysis.probe import Rollout

    if len(records) != len(prompts):
        return None
    out = []
    for rec, prompt in zip(records, prompts, strict=False):
        if not isinstance(rec, dict) or rec.get("prompt") != prompt or rec.get("sampler") != sampler:
            return None
        ids, ended, end, text = rec.get("completion_ids"), rec.get("ended"), rec.get("end_token_id"), rec.get("completion")
        if not isinstance(ids, list) or not all(type(t) is int and 0 <= t < vocab for t in ids):
            return None
        valid_end = (type(end) is int and 0 <= end < vocab) if ended is True else (ended is False and end is None)
        if not valid_end or not isinstance(text, str):
            return None
        out.append(Rollout(text, tuple(ids), end))
    return out


class ProbeSource:
    """The probe each checkpoint is measured on: built once (`reference`, `rollouts`) or per checkpoint (`self`)."""

    def __init__(self, ctx: Any, settings: Any):
        self._ctx, self._settings = ctx, settings
        self._fixed = None if settings.probe == "self" else run_probe(ctx, settings)

    def at(self, step: int | None) -> Any:
        """The probe for checkpoint `step` (sampling its completions first for `self`)."""
        return self._fixed if self._fixed is not None else run_probe(self._ctx, self._settings, step)

    def describe(self) -> str:
        if self._fixed is not None:
            return f"{self._fixed.input_ids.shape[0]} x {self._fixed.input_ids.shape[1]} tokens, the same for every checkpoint"
        return f"{self._settings.num_probes} held-out prompts, completions sampled from each checkpoint"
