"""A CPU path for TRL's fused log-prob head, whose kernel is Triton-only.

TRL 1.15 computes per-token log-probabilities through `_ChunkedLogProbFunction` (trl/kernels/
chunked_logprob.py). Without Triton that name is None, and with Triton a CPU tensor fails at the
kernel launch. `install()` rebinds it to a dispatcher: CUDA/XPU tensors go to TRL's kernel, other
tensors to the plain-PyTorch computation below, which returns the same five outputs and lets
autograd derive the backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_TOKEN_CHUNK = 1024


def _torch_chunked_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    final_logit_softcapping: float | None = None,
    logit_scale: float = 1.0,
    outputs: tuple[str, ...] = ("log_probs",),
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    del chunk_size  # the vocabulary tile width of the Triton kernel; irrelevant here
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("log_probs", "entropy", "lssp", "mean", "top1")}
    for start in range(0, max(hidden.shape[0], 1), _TOKEN_CHUNK):  # one pass even when empty: keeps the graph
        h = hidden[start : start + _TOKEN_CHUNK]
        t = targets[start : start + _TOKEN_CHUNK]
        z = F.linear(h, weight.to(h.dtype), None if bias is None else bias.to(h.dtype)).float() * logit_scale
        if final_logit_softcapping is not None:
            z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
        z = z / temperature
        logp = torch.log_softmax(z, dim=-1)
        parts["log_probs"].append(logp.gather(-1, t.unsqueeze(-1)).squeeze(-1))
        if "entropy" in outputs:
            parts["entropy"].append(-(logp.exp() * logp).sum(-1))
        if "log_sum_sq_probs" in outputs:
            parts["lssp"].append(torch.logsumexp(2 * logp.detach(), dim=-1))
        if "mean_logits" in outputs:
            parts["mean"].append(z.detach().mean(-1))
        if "is_top1" in outputs:
            parts["top1"].append(z.detach().argmax(-1) == t)

    def cat(key: str) -> torch.Tensor | None:
        return torch.cat(parts[key]) if parts[key] else None

    return cat("log_probs"), cat("entropy"), cat("lssp"), cat("mean"), cat("top1")


class ChunkedLogProbDispatch:
    """Drop-in for `_ChunkedLogProbFunction`: TRL's kernel on GPUs, PyTorch elsewhere."""

    kernel = None  # TRL's autograd Function, when Triton imported

    @classmethod
    def apply(cls, hidden: torch.Tensor, *args):  # noqa: ANN206 - mirrors torch.autograd.Function.apply
        if cls.kernel is not None and hidden.device.type in ("cuda", "xpu"):
            return cls.kernel.apply(hidden, *args)
        return _torch_chunked_logprob(hidden, *args)


def install() -> None:
    """Rebind TRL's fused log-prob function to the dispatcher (idempotent)."""
    import trl.trainer.utils as trl_utils

    current = trl_utils._ChunkedLogProbFunction
    if current is ChunkedLogProbDispatch:
        return
    ChunkedLogProbDispatch.kernel = current
    trl_utils._ChunkedLogProbFunction = ChunkedLogProbDispatch
