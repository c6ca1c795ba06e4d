"""KL(policy || reference) for GRPO: Schulman's k1/k2/k3 estimators, the loss term, and the adaptive coefficient.

With r = log pi_ref(y_t) - log pi(y_t) for each sampled token y_t ~ pi:
  k1 = -r                      unbiased, can be negative per token
  k2 = r^2 / 2                 biased, low variance; its gradient is the true KL gradient (on-policy)
  k3 = exp(r) - r - 1          unbiased, always >= 0 (TRL's and Unsloth's `beta` term)
Estimates are token-averaged over completion tokens (sum over all tokens / number of tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from training_with_unsloth import distributed
from training_with_unsloth.controls import ResearchCallback

ESTIMATORS = ("k1", "k2", "k3")


def per_token(estimator: str, logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """The per-token KL estimate of ``estimator`` (differentiable in ``logps``)."""
    r = ref_logps - logps
    if estimator == "k1":
        return -r
    if estimator == "k2":
        return 0.5 * r * r
    if estimator == "k3":
        return torch.exp(r) - r - 1
    raise ValueError(f"unknown KL estimator {estimator!r}: use one of {', '.join(ESTIMATORS)}")


def token_sums(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> tuple[dict[str, float], float]:
    """Sums of k1, k2, k3 over the unmasked completion tokens of a batch, and the number of those tokens."""
    logps, ref_logps, mask = logps.detach().float(), ref_logps.detach().float(), mask.detach().float()
    return {name: float((per_token(name, logps, ref_logps) * mask).sum()) for name in ESTIMATORS}, float(mask.sum())


def token_mean_estimates(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """k1, k2, k3 averaged over the unmasked completion tokens of a batch."""
    sums, count = token_sums(logps, ref_logps, mask)
    return {name: value / max(count, 1.0) for name, value in sums.items()}


def aggregate_like_trl(trainer: Any, per_token_values: torch.Tensor, mask: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
    """Reduce a per-token term exactly as TRL 1.15's `_compute_loss` reduces its per-token loss for `loss_type`.

    TRL adds `beta * per_token_kl` to the per-token loss before this reduction, and the reduction is
    linear, so adding `coef * aggregate(kl)` to TRL's loss reproduces its own beta path exactly.
    """
    loss_type = trainer.loss_type
    x = per_token_values * mask
    accumulation = trainer.current_gradient_accumulation_steps
    if loss_type in ("grpo", "sapo"):
        return (x.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
    if loss_type == "bnpo":
        return x.sum() / mask.sum().clamp(min=1.0) / accumulation
    if loss_type == "dr_grpo":
        return x.sum() / (x.size(0) * trainer.max_completion_length) / accumulation
    if loss_type in ("cispo", "dapo", "vespo"):
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
        normalizer = normalizer * accumulation / trainer.args.steps_per_generation
        return x.sum() / normalizer
    if loss_type == "luspo":
        return x.sum(-1).mean() / accumulation
    raise ValueError(f"the KL term does not support loss_type {loss_type!r}")


def importance_ratio(trainer: Any, logps: torch.Tensor, inputs: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
    """TRL's `coef_1`: exp(log pi - log pi_old) per token (or per sequence), 1 in value on-policy but not in gradient."""
    old = inputs.get("old_per_token_logps")
    log_ratio = logps - (logps.detach() if old is None else old)
    if trainer.importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    return torch.exp(log_ratio)


@dataclass
class KLSettings:
    """What the trainer does about KL: measure it, put it in the loss, and where its coefficient lives."""

    estimator: str = "k3"
    coef: float = 0.0  # the toolkit's coefficient (transformers backend); under Unsloth k3 maps onto trainer.beta
    in_loss: bool = False  # the toolkit adds coef * KL to TRL's loss (False: none, or TRL/Unsloth's own beta)
    diagnostics: bool = True
    every: int = 1  # diagnostics that need a reference pass of their own run at steps 1, 1 + every, ...
    target: float | None = None
    horizon: int = 10000
    observed: list[float] = field(default_factory=list)  # this step's estimates (of `estimator`), for the controller
    sums: dict[str, float] = field(default_factory=dict)  # this step's token sums of k1/k2/k3 ...
    tokens: float = 0.0  # ... over this many completion tokens
    term_sum: float = 0.0  # this step's token sum of the loss term's estimator (transformers backend) ...
    term_tokens: float = 0.0  # ... over this many completion tokens

    @property
    def measures(self) -> bool:
        return self.diagnostics or self.target is not None

    def due(self, step: int) -> bool:
        """Whether step `step` needs the reference log-probs: always for the loss term and the controller,
        every `every` steps (1, 1 + every, ...) for diagnostics alone."""
        return self.in_loss or self.target is not None or (step - 1) % max(self.every, 1) == 0

    def observe(self, value: float) -> None:
        if not math.isnan(value):
            self.observed.append(value)

    def add(self, sums: dict[str, float], tokens: float) -> None:
        """Accumulate one (micro-)batch's token sums; `flush` turns the step's total into token means."""
        for name, value in sums.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        self.tokens += tokens

    def add_term(self, total: float, tokens: float) -> None:
        """Accumulate one micro-batch's token sum of the KL estimate that enters the loss."""
        self.term_sum += total
        self.term_tokens += tokens

    def flush(self, metrics: dict[str, list[float]]) -> None:
        """End of an optimizer step: log `kl/k1..k3` (token means over the whole step), `kl/loss_term`
        (the step's coefficient times its token-mean KL estimate) and hand the controller its value.
        With several processes the sums are added over all of them first (every process logs the same means)."""
        local = [self.sums.get(n, 0.0) for n in ESTIMATORS] + [self.tokens, self.term_sum, self.term_tokens]
        totals = distributed.sum_floats(local)
        self.sums = dict(zip(ESTIMATORS, totals[: len(ESTIMATORS)], strict=True))
        self.tokens, self.term_sum, self.term_tokens = totals[len(ESTIMATORS) :]
        if self.tokens > 0:
            means = {name: value / self.tokens for name, value in self.sums.items()}
            if self.diagnostics:
                for name, value in means.items():
                    metrics[f"kl/{name}"].append(value)
            self.observe(means[self.estimator])
        if self.term_tokens > 0:
            metrics["kl/loss_term"].append(self.coef * self.term_sum / self.term_tokens)
        self.sums, self.tokens = {}, 0.0
        self.term_sum, self.term_tokens = 0.0, 0.0


class KLMeter(ResearchCallback):
    """Logs the step's token-averaged `kl/k1`, `kl/k2`, `kl/k3` at the end of every optimizer step."""

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.kl.flush(self.trainer._metrics["train"])


class AdaptiveKL(ResearchCallback):
    """Ziegler et al. (2019)'s proportional controller, applied after every optimizer step:

        e = clip(KL / target - 1, -0.2, 0.2);  coef <- coef * (1 + e * n / horizon)

    with KL the step's token-averaged estimate and n its number of completions. The coefficient is
    the toolkit's `kl.coef` or, when KL runs through TRL/Unsloth's own `beta`, the trainer's `beta`;
    it is logged as `kl/coef` and saved with every trainer checkpoint (resume continues from it).
    """

    state_key = "adaptive_kl"

    def __init__(self) -> None:
        self.trainer: Any = None
        self.coef: float | None = None

    def bind(self, trainer: Any) -> None:
        super().bind(trainer)
        if self.coef is None:
            self.coef = self._current()

    def _current(self) -> float:
        t = self.trainer
        return float(t.kl.coef if t.kl.in_loss else t.beta)

    def _apply(self, coef: float) -> None:
        t = self.trainer
        self.coef = coef
        if t.kl.in_loss:
            t.kl.coef = coef
        else:
            t.beta = coef

    def on_step_end(self, args, state, control, **kwargs):
        t = self.trainer
        settings = t.kl
        settings.flush(t._metrics["train"])  # KLMeter may have flushed already: then this is a no-op
        used = self._current()
        t._metrics["train"]["kl/coef"].append(used)
        if settings.target is not None and settings.observed:
            kl = sum(settings.observed) / len(settings.observed)
            error = min(max(kl / settings.target - 1.0, -0.2), 0.2)
            n = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
            self._apply(used * (1.0 + error * n / settings.horizon))
        settings.observed.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"coef": self._current() if self.trainer is not None else self.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("coef") is not None:
            if self.trainer is not None:
                self._apply(float(state["coef"]))
            else:
                self.coef = float(state["coef"])
