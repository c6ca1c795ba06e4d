"""Probe sets for LLC estimation: held-out prompts plus a target completion, scored on the completion only.

Every checkpoint of a run is measured on the same probe set. A row is the chat-templated prompt
followed by the completion and the end-of-turn token, right-padded to one length. The loss is the
cross-entropy of the completion tokens (prompt and padding masked), averaged per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Probe:
    """Token rows (uniform length) and, per row, the [start, end) range of target positions scored."""

    input_ids: torch.Tensor  # (rows, length)
    spans: list[tuple[int, int]]
    texts: list[str]  # the completions, for the record

    def dataset(self):
        """The HuggingFace Dataset devinterp samples from (`input_ids`, torch format)."""
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids.tolist()}).with_format("torch")

    def loss_fn(self) -> ProbeLoss:
        return ProbeLoss(self)


def build_probe(tokenizer: Any, prompts: Sequence[list[dict]], completions: Sequence[str], *, max_completion_tokens: int = 64) -> Probe:
    """Tokenize `prompt + completion + <end of turn>` rows, right-padded to the longest."""
    if not prompts or len(prompts) != len(completions):
        raise ValueError("a probe needs as many completions as prompts, and at least one")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows, spans = [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        p_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        if hasattr(p_ids, "get"):  # some tokenizers return a BatchEncoding regardless
            p_ids = p_ids["input_ids"]
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"][:max_completion_tokens] + [eos]
        rows.append(list(p_ids) + list(c_ids))
        # target position j predicts token j + 1: the completion tokens are targets len(p)-1 .. len(p)+len(c)-2
        spans.append((len(p_ids) - 1, len(p_ids) + len(c_ids) - 1))
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return Probe(ids, spans, list(completions))


class ProbeLoss:
    """devinterp `loss_fn(model, input_ids) -> (batch, seq-1)` scoring completion tokens only.

    devinterp only hands the loss the token ids (possibly shuffled), so rows are recognised by
    their ids. Scored positions are scaled so that the mean over all positions of a row equals the
    mean cross-entropy over its completion tokens: devinterp averages over every position.
    """

    def __init__(self, probe: Probe):
        length = probe.input_ids.shape[1]
        self._weights: dict[bytes, torch.Tensor] = {}
        self._ends: dict[bytes, int] = {}
        for row, (start, end) in zip(probe.input_ids, probe.spans, strict=True):
            w = torch.zeros(length - 1)
            w[start:end] = (length - 1) / (end - start)
            self._weights[self._key(row)] = w
            self._ends[self._key(row)] = end + 1

    @staticmethod
    def _key(row: torch.Tensor) -> bytes:
        return row.detach().to("cpu", torch.int64).numpy().tobytes()

    def _keys(self, input_ids: torch.Tensor) -> list[bytes]:
        keys = [self._key(r) for r in input_ids]
        if any(k not in self._weights for k in keys):
            raise ValueError("ProbeLoss got a row that is not in its probe set")
        return keys

    def __call__(self, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        keys = self._keys(input_ids)
        ends = torch.tensor([self._ends[k] for k in keys], device=input_ids.device)
        weights = torch.stack([self._weights[k] for k in keys]).to(input_ids.device)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        attention_mask = (positions[None, :] < ends[:, None]).long()
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        return nll * weights
