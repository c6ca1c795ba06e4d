"""Whether an LLC estimate can be trusted: chain values, trace settling, chain agreement, MALA acceptance.

An estimate is the dict `llc_estimator.estimate_llc` returns: per-chain LLCs, per-chain loss traces (one
value per SGLD step, burn-in included), the init loss and, where measured, the MALA acceptance rate
of the sampler's proposal. `health` turns it into (healthy, notes); the notes also carry the
figures a reader wants beside a healthy number (share of draws below the init loss, acceptance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# An estimate is unhealthy when its chains disagree by more than this (std across chains / mean).
MAX_CHAIN_SPREAD = 0.30
# ... when more of the draws sit below the checkpoint's own loss than this: SGLD is descending, so the
# checkpoint is no local minimum of the probe loss and the LLC (a rise above it) is biased low.
MAX_BELOW_INIT = 0.5
# Below this MALA acceptance the notes say so: a Metropolis-Hastings step would reject most of the
# sampler's moves, so its draws follow the tempered posterior only approximately (discretisation bias).
# Not a health failure: in millions of LoRA dimensions no step that settles within a CPU budget reaches
# it (docs/analysis.md), and the estimate stays comparable across checkpoints at fixed settings.
MIN_MALA_ACCEPTANCE = 0.5
# ... when the draws sit more than this above the checkpoint's own loss, in nats per scored token: the model's
# perplexity on the probe is multiplied by e^2 = 7.4 or more, the sampler has left the checkpoint's basin and
# the number is no local quantity (the calibrated settings rise 0.7-1.3 nats on the quickstart; lr 1e-3 rises ~9).
MAX_RISE = 2.0


def health(est: dict[str, Any], burn_in: int, max_drift: float) -> tuple[bool, str]:
    """Whether an estimate can be trusted, and the notes: why not, then share below init and acceptance.

    Healthy: every chain's LLC positive and finite, every trace settled after burn-in, chains that
    agree (std across chains at most 30% of the mean), draws at most 2 nats per token above the init
    loss (still in the checkpoint's basin) and at most half the draws below the init loss.
    """
    problems = list(est.get("failures", []))
    per_chain = est["per_chain"]
    for i, value in enumerate(per_chain):
        if not math.isfinite(value):
            problems.append(f"chain {i} LLC is NaN")
        elif value < 0:
            problems.append(f"chain {i} LLC is negative ({value:.3g}): lr too large or localization too weak")
    for i, trace in enumerate(est["trace"]):
        why = unsettled(trace[burn_in:], est["init_loss"], max_drift)
        if why:
            problems.append(f"chain {i} {why}: more draws or burn-in, or a smaller lr")
    spread = chain_spread(per_chain)
    if spread is not None and spread > MAX_CHAIN_SPREAD:
        problems.append(f"chains disagree (std {spread:.0%} of the mean, over {MAX_CHAIN_SPREAD:.0%}): more draws or chains")
    rise = loss_rise(est["trace"], burn_in, est["init_loss"])
    if rise is not None and rise > MAX_RISE:
        problems.append(
            f"the draws sit {rise:.1f} nats per token above the checkpoint's loss (over {MAX_RISE:g}): the sampler "
            "left the checkpoint's basin, so this is no local estimate: a smaller lr or a stronger localization"
        )
    below = below_init(est["trace"], burn_in, est["init_loss"])
    if below is not None and below > MAX_BELOW_INIT:
        problems.append(
            f"{below:.0%} of draws below the init loss: the checkpoint is no minimum of the probe loss "
            "(score completions it writes itself: --probe-from this step, or --probe self)"
        )
    acceptance = est.get("mala_acceptance")
    if not math.isfinite(est["llc_mean"]):
        problems.append("LLC is NaN")
    figures = []
    if below is not None:
        figures.append(f"below init {below:.0%}")
    if acceptance is not None and math.isfinite(acceptance):
        low = " (low: approximate posterior, compare at fixed settings)" if acceptance < MIN_MALA_ACCEPTANCE else ""
        figures.append(f"MALA acceptance {acceptance:.2f}{low}")
    if spread is not None:
        figures.append(f"chain spread {spread:.0%}")
    return not problems, "; ".join(problems + figures)


def unsettled(draws: Sequence[float], init_loss: float, max_drift: float) -> str | None:
    """Why a chain's post-burn-in trace has not settled, or None when it has.

    Settled: the means of the first and second half of the draws differ by at most `max_drift` of
    the loss rise (mean of the second half minus the init loss), or by at most three standard errors
    of that difference. The standard errors count the draws' autocorrelation (lag-1 effective sample
    size), so a slowly mixing but stationary chain is not called unsettled; three of them keep the
    false alarms rare when a run's every chain and checkpoint is tested (about 0.3% each).
    """
    draws = [x for x in draws if math.isfinite(x)]
    if len(draws) < 8:
        return "has too few finite draws to judge its trace"
    h = len(draws) // 2
    first, second = draws[:h], draws[-h:]
    rise = abs(_mean(second) - init_loss)
    drift = abs(_mean(second) - _mean(first))
    n_eff = max(2.0, effective_size(draws) / 2)
    noise = 3 * math.sqrt((_var(first) + _var(second)) / n_eff)
    if drift > max(max_drift * rise, noise):
        return f"trace not settled (second-half mean moved {drift:.3g}; loss rise {rise:.3g}, noise {noise:.3g})"
    return None


def effective_size(xs: Sequence[float]) -> float:
    """Effective sample size n (1 - rho) / (1 + rho) from the lag-1 autocorrelation rho (clipped to [0, 0.99])."""
    n = len(xs)
    m, v = _mean(xs), _var(xs)
    if n < 3 or v == 0:
        return float(n)
    rho = sum((xs[i] - m) * (xs[i + 1] - m) for i in range(n - 1)) / ((n - 1) * v)
    rho = min(max(rho, 0.0), 0.99)
    return n * (1 - rho) / (1 + rho)


def chain_spread(per_chain: Sequence[float]) -> float | None:
    """Std across chains over the mean LLC; None with fewer than two finite chains or a non-positive mean."""
    values = [v for v in per_chain if math.isfinite(v)]
    if len(values) < 2:
        return None
    mean = _mean(values)
    if mean <= 0:
        return None
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) / mean


def loss_rise(traces: Sequence[Sequence[float]], burn_in: int, init_loss: float) -> float | None:
    """Mean loss of the post-burn-in draws, over all chains, above the init loss (None without finite draws)."""
    draws = [x for trace in traces for x in trace[burn_in:] if math.isfinite(x)]
    return sum(draws) / len(draws) - init_loss if draws else None


def below_init(traces: Sequence[Sequence[float]], burn_in: int, init_loss: float) -> float | None:
    """Share of post-burn-in draws, over all chains, whose loss is below the init loss."""
    draws = [x for trace in traces for x in trace[burn_in:] if math.isfinite(x)]
    if not draws:
        return None
    return sum(x < init_loss for x in draws) / len(draws)


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _var(xs: Sequence[float]) -> float:
    m = _mean(xs)
    return sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1)


def mala_acceptance(
    model: Any,
    input_ids: Any,
    loss_fn: Any,
    params: Sequence[Any],
    *,
    lr: float,
    n_beta: float,
    localization: float,
    steps: int,
    seed: int,
    preconditioner: Sequence[Any] | None = None,
) -> float:
    """Mean Metropolis-Hastings acceptance probability of SGLD's Langevin proposal along a short chain.

    devinterp 2.0.1 no longer ships its MALA observable, so this recomputes it: from the checkpoint
    w0, `steps` proposals w' = w - lr/2 grad U(w) + sqrt(lr) N(0, 1) (devinterp's SGLD update, on the
    full batch `input_ids`), with U(w) = n_beta L(w) + localization/2 |w - w0|^2 the potential SGLD
    samples. Each step records min(1, exp(U(w) - U(w') + log q(w | w') - log q(w' | w))) and moves
    to w' (unadjusted, as SGLD does). `params` are the sampled tensors; they are restored afterwards.
    With `preconditioner` (one tensor G per parameter, held fixed), the proposal is the preconditioned
    one, w' = w - lr/2 G grad U(w) + sqrt(lr G) N(0, 1), as devinterp's rmsprop_sgld steps.
    """
    import torch

    params = list(params)
    start = [p.detach().clone() for p in params]
    gen = torch.Generator(device=params[0].device).manual_seed(seed)

    def potential(ps: list[Any]) -> tuple[float, list[Any]]:
        loss = loss_fn(model, input_ids).float().mean()
        u = n_beta * loss + 0.5 * localization * sum(((p - s) ** 2).sum() for p, s in zip(ps, start, strict=True))
        grads = torch.autograd.grad(u, ps)
        return float(u.detach()), [g.detach() for g in grads]

    gs = list(preconditioner) if preconditioner is not None else [None] * len(params)
    rates = []
    try:
        u, grad = potential(params)
        for _ in range(steps):
            old = [p.detach().clone() for p in params]
            noise = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in params]
            with torch.no_grad():
                for p, g, z, c in zip(params, grad, noise, gs, strict=True):
                    if c is None:
                        p.add_(g, alpha=-0.5 * lr).add_(z, alpha=lr**0.5)
                    else:
                        p.add_(c * g, alpha=-0.5 * lr).add_(c.sqrt() * z, alpha=lr**0.5)
            u_new, grad_new = potential(params)
            # log q(w' | w) = -|w' - w + lr/2 G grad(w)|^2_{G^-1} / (2 lr) = -|z|^2 / 2; log q(w | w') with grad(w')
            forward = sum(float((z.double() ** 2).sum()) for z in noise) / 2
            backward = 0.0
            for o, p, g, c in zip(old, params, grad_new, gs, strict=True):
                step = o.double() - p.detach().double()
                if c is None:
                    backward += float(((step + 0.5 * lr * g.double()) ** 2).sum())
                else:
                    c = c.double()
                    backward += float(((step + 0.5 * lr * c * g.double()) ** 2 / c).sum())
            backward /= 2 * lr
            log_ratio = u - u_new - backward + forward
            rates.append(1.0 if log_ratio >= 0 else math.exp(log_ratio))
            u, grad = u_new, grad_new
    finally:
        with torch.no_grad():
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
    return _mean(rates) if rates else float("nan")


def rmsprop_preconditioner(
    model: Any, input_ids: Any, loss_fn: Any, params: Sequence[Any], *, steps: int, alpha: float = 0.99, eps: float = 0.1
) -> list[Any]:
    """devinterp's RMSprop preconditioner G = 1 / (sqrt(V) + eps) midway through a chain of `steps` steps,
    taking the loss gradient as the checkpoint's throughout: V = (1 - alpha^(steps/2)) (grad L)^2."""
    import torch

    loss = loss_fn(model, input_ids).float().mean()
    grads = torch.autograd.grad(loss, list(params))
    scale = 1 - alpha ** (steps / 2)
    return [1.0 / ((scale * g.detach() ** 2).sqrt() + eps) for g in grads]
