"""Probe sets for LLC estimation: held-out prompts plus a target completion, scored on the completion only.

Every checkpoint of a run is measured on the same probe set, built the way the run's GRPO training
saw its completions (`RunSampling`, read from the run's `trainer:` section with TRL's defaults):

- the prompt is chat-templated as TRL does (`add_generation_prompt=True`, `trainer.chat_template_kwargs`);
- a completion holds at most `trainer.max_completion_length` tokens, its end-of-turn token included;
- the end-of-turn token follows a completion only where the completion ended: a sampled one that
  stopped on an EOS token, or a reference answer that fits the budget with its end token. One cut
  at the budget is scored as cut, with no end token;
- rollouts are sampled with the run's sampler (`temperature`, `top_p`, `top_k`, `min_p`,
  `repetition_penalty`, `generation_kwargs`) in the `GenerationConfig` TRL's GRPOTrainer builds.

A row is the prompt followed by the completion (and end token), right-padded to one length. The loss
is the cross-entropy of the completion tokens (prompt and padding masked), averaged per sequence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

# The `trainer:` keys TRL's GRPOTrainer builds its transformers GenerationConfig from (grpo_trainer.py).
SAMPLER_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "cache_implementation")


@dataclass(frozen=True)
class RunSampling:
    """How the run's training sampled completions: budget, sampler and chat-template arguments."""

    max_completion_length: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float | None
    repetition_penalty: float
    cache_implementation: str | None = None
    generation_kwargs: dict[str, Any] = field(default_factory=dict)
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_trainer(cls, trainer: Mapping[str, Any]) -> RunSampling:
        """The run's `trainer:` values, each missing one taken from the installed TRL's GRPOConfig default."""
        from training_with_unsloth.errors import UserError

        defaults = grpo_defaults(("max_completion_length", *SAMPLER_KEYS, "generation_kwargs", "chat_template_kwargs"))
        value = {k: trainer.get(k, d) for k, d in defaults.items()}
        budget = value["max_completion_length"]
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise UserError(
                f"trainer.max_completion_length is {budget!r}: the LLC probe needs a positive token budget; "
                "set it in the run's config"
            )
        for key in ("generation_kwargs", "chat_template_kwargs"):
            value[key] = _mapping(key, value[key])
        return cls(**value)

    def generation_config(self, model: Any, tokenizer: Any) -> Any:
        """The GenerationConfig GRPOTrainer.__init__ builds (transformers path), for this model and tokenizer.

        As in training, `model.generate` fills only the fields left None here (e.g. `min_p`) from the
        model's generation_config; the explicit ones (`top_k` 0, `top_p` 1.0, ...) are used as given.
        """
        from transformers import GenerationConfig

        from training_with_unsloth.errors import UserError

        kwargs = {
            "max_new_tokens": self.max_completion_length,
            "do_sample": True,
            "pad_token_id": _pad_id(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": eos_token_ids(model, tokenizer),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "cache_implementation": self.cache_implementation,
            **self.generation_kwargs,
        }
        try:
            return GenerationConfig(**kwargs, disable_compile=True)
        except (TypeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"trainer: the sampler settings give no valid GenerationConfig: {first}") from None

    def record(self) -> dict[str, Any]:
        """JSON form, stored beside sampled rollouts so a change of settings resamples them."""
        return json.loads(json.dumps(asdict(self), default=str))


def grpo_defaults(keys: Sequence[str]) -> dict[str, Any]:
    """Defaults of `keys` in TRL's own `GRPOConfig`: what training ran with where the YAML is silent (also under
    Unsloth, whose config subclass has other defaults that training does not use)."""
    from trl import GRPOConfig

    from training_with_unsloth.trainer_args import pristine_config_class, trl_field_defaults

    defaults = trl_field_defaults(pristine_config_class(GRPOConfig))
    return {key: defaults[key] for key in keys}


def _mapping(key: str, value: Any) -> dict[str, Any]:
    """A dict-valued trainer key; TRL also takes it as a JSON string."""
    from training_with_unsloth.errors import UserError

    if value is None:
        return {}
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"trainer.{key} is not valid JSON: write it as a YAML mapping, e.g. {key}: {{...}}") from None
    if not isinstance(value, Mapping):
        raise UserError(f"trainer.{key} must be a mapping (e.g. {key}: {{name: value}}), got {str(value)[:60]!r}")
    return dict(value)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Tokens that end a completion, as TRL counts them: the model's eos ids and the tokenizer's eos."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id not in ids:
        ids = [tokenizer.eos_token_id, *ids]
    return ids


@dataclass(frozen=True)
class Rollout:
    """A sampled completion: its tokens (end token excluded) and the end token it stopped on, None if it ran out."""

    text: str
    ids: tuple[int, ...]
    end_token: int | None

    @property
    def ended(self) -> bool:
        return self.end_token is not None


def prompt_ids(tokenizer: Any, prompt: list[dict], chat_template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
    """The chat-templated prompt tokens, as TRL's `_tokenize_prompts` makes them."""
    out = tokenizer.apply_chat_template(
        prompt, add_generation_prompt=True, tokenize=True, return_dict=True, **dict(chat_template_kwargs or {})
    )
    return list(out["input_ids"])


def sample_rollouts(
    model: Any, tokenizer: Any, prompts: Sequence[list[dict]], sampling: RunSampling, *, seed: int, device: str
) -> list[Rollout]:
    """One completion per prompt, sampled with the run's GenerationConfig; cut at the first end token as TRL does."""
    from training_with_unsloth.errors import UserError

    config = sampling.generation_config(model, tokenizer)
    rows = [prompt_ids(tokenizer, p, sampling.chat_template_kwargs) for p in prompts]
    width = max(map(len, rows))
    pad = _pad_id(tokenizer)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], dtype=torch.long, device=device)
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long, device=device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
    if out.shape[0] != len(rows):
        raise UserError(
            f"trainer.generation_kwargs make generate return {out.shape[0]} sequences for {len(rows)} prompts: "
            "the probe samples one completion per prompt"
        )
    eos = set(eos_token_ids(model, tokenizer))
    rollouts = []
    for row in out[:, width:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        ids = row if cut is None else row[:cut]
        end = None if cut is None else row[cut]
        rollouts.append(Rollout(tokenizer.decode(ids, skip_special_tokens=False), tuple(ids), end))
    return rollouts


@dataclass
class Probe:
    """Token rows (uniform length) and, per row, the [start, end) range of target positions scored."""

    input_ids: torch.Tensor  # (rows, length)
    spans: list[tuple[int, int]]
    texts: list[str]  # the completions, for the record
    ended: list[bool]  # whether each row's completion ended (its end token is scored) or was cut at the budget

    def dataset(self):
        """The HuggingFace Dataset devinterp samples from (`input_ids`, torch format)."""
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids.tolist()}).with_format("torch")

    def loss_fn(self) -> ProbeLoss:
        return ProbeLoss(self)


def build_probe(
    tokenizer: Any,
    prompts: Sequence[list[dict]],
    completions: Sequence[str | Rollout],
    *,
    max_completion_tokens: int,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> Probe:
    """Tokenize `prompt + completion (+ end token where it ended)` rows, right-padded to the longest.

    A string is a reference answer: it ended (the tokenizer's eos follows it) when it fits the
    budget together with that token, else it is cut to `max_completion_tokens` tokens. A `Rollout`
    keeps its sampled tokens and the end token it stopped on, if any.
    """
    if not prompts or len(prompts) != len(completions):
        raise ValueError("a probe needs as many completions as prompts, and at least one")
    if max_completion_tokens < 1:
        raise ValueError(f"max_completion_tokens must be positive, got {max_completion_tokens}")
    eos = tokenizer.eos_token_id
    rows, spans, texts, ended = [], [], [], []
    for prompt, completion in zip(prompts, completions, strict=True):
        p_ids = prompt_ids(tokenizer, prompt, chat_template_kwargs)
        if isinstance(completion, Rollout):
            text, ids, end = completion.text, list(completion.ids), completion.end_token
        else:
            text, ids, end = completion, tokenizer(completion, add_special_tokens=False)["input_ids"], eos
        if end is not None and len(ids) < max_completion_tokens:
            c_ids = [*ids, end]
        else:  # cut at the budget, as training would have: no end token
            c_ids, end = ids[:max_completion_tokens], None
        if not c_ids:
            raise ValueError("a probe completion has no tokens to score")
        rows.append(p_ids + c_ids)
        # target position j predicts token j + 1: the completion tokens are targets len(p)-1 .. len(p)+len(c)-2
        spans.append((len(p_ids) - 1, len(p_ids) + len(c_ids) - 1))
        texts.append(text)
        ended.append(end is not None)
    length = max(map(len, rows))
    ids_tensor = torch.full((len(rows), length), _pad_id(tokenizer), dtype=torch.long)
    for i, row in enumerate(rows):
        ids_tensor[i, : len(row)] = torch.tensor(row)
    return Probe(ids_tensor, spans, texts, ended)


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
        self._starts: dict[bytes, int] = {}
        for row, (start, end) in zip(probe.input_ids, probe.spans, strict=True):
            w = torch.zeros(length - 1)
            w[start:end] = (length - 1) / (end - start)
            self._weights[self._key(row)] = w
            self._ends[self._key(row)] = end + 1
            self._starts[self._key(row)] = start

    @staticmethod
    def _key(row: torch.Tensor) -> bytes:
        return row.detach().to("cpu", torch.int64).numpy().tobytes()

    def _keys(self, input_ids: torch.Tensor) -> list[bytes]:
        keys = [self._key(r) for r in input_ids]
        if any(k not in self._weights for k in keys):
            raise ValueError("ProbeLoss got a row that is not in its probe set")
        return keys

    def __call__(self, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """Per-position loss, (batch, length - 1): weighted completion-token NLL, 0 at prompt and padding.

        Only what the scores need is computed: the columns up to the batch's longest row, and logits
        (`logits_to_keep`) from the batch's first scored position on. The result is the same as a
        forward over the whole padded row, at a fraction of the cost on a CPU.
        """
        keys = self._keys(input_ids)
        ends = [self._ends[k] for k in keys]
        weights = torch.stack([self._weights[k] for k in keys]).to(input_ids.device)
        width = max(ends)
        first = min(self._starts[k] for k in keys)
        ids = input_ids[:, :width]
        positions = torch.arange(width, device=input_ids.device)
        attention_mask = (positions[None, :] < torch.tensor(ends, device=input_ids.device)[:, None]).long()
        logits = model(input_ids=ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=width - first).logits
        if logits.shape[1] == width:  # a forward that ignores logits_to_keep
            logits = logits[:, first:]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -logp.gather(-1, ids[:, first + 1 :, None]).squeeze(-1)
        out = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, dtype=nll.dtype, device=input_ids.device)
        out[:, first : width - 1] = nll
        return out * weights
