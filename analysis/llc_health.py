"""Whether an LLC estimate can be trusted: chain values, trace settling, chain agreement, MALA acceptance.

An estimate is the dict `llc.estimate_llc` returns: per-chain LLCs, per-chain loss traces (one
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
# ... when the sampler's proposal would be accepted less often than this by a Metropolis-Hastings step:
# the step size is too large for the curvature and the chain is not sampling the tempered posterior.
MIN_MALA_ACCEPTANCE = 0.5


def health(est: dict[str, Any], burn_in: int, max_drift: float) -> tuple[bool, str]:
    """Whether an estimate can be trusted, and the notes: why not, then share below init and acceptance."""
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
    below = below_init(est["trace"], burn_in, est["init_loss"])
    if below is not None and below > MAX_BELOW_INIT:
        problems.append(
            f"{below:.0%} of draws below the init loss: the checkpoint is no minimum of the probe loss "
            "(use the checkpoint's own completions, --probe self)"
        )
    acceptance = est.get("mala_acceptance")
    if acceptance is not None and math.isfinite(acceptance) and acceptance < MIN_MALA_ACCEPTANCE:
        problems.append(f"MALA acceptance {acceptance:.2f} below {MIN_MALA_ACCEPTANCE}: lr too large")
    if not math.isfinite(est["llc_mean"]):
        problems.append("LLC is NaN")
    figures = []
    if below is not None:
        figures.append(f"below init {below:.0%}")
    if acceptance is not None and math.isfinite(acceptance):
        figures.append(f"MALA acceptance {acceptance:.2f}")
    if spread is not None:
        figures.append(f"chain spread {spread:.0%}")
    return not problems, "; ".join(problems + figures)


def unsettled(draws: Sequence[float], init_loss: float, max_drift: float) -> str | None:
    """Why a chain's post-burn-in trace has not settled, or None when it has.

    Settled: the mean of the last quarter of draws is within `max_drift` of the loss rise (mean of the
    second half minus the init loss) of the second quarter's mean, or within the noise of those two
    means. The noise counts the draws' autocorrelation (lag-1 effective sample size), so a slowly
    mixing but stationary chain is not called unsettled.
    """
    draws = [x for x in draws if math.isfinite(x)]
    if len(draws) < 8:
        return "has too few finite draws to judge its trace"
    q = len(draws) // 4
    second, last = draws[q : 2 * q], draws[-q:]
    half = draws[len(draws) // 2 :]
    rise = abs(_mean(half) - init_loss)
    drift = abs(_mean(last) - _mean(second))
    n_eff = max(2.0, effective_size(draws) / 4)
    noise = 2 * math.sqrt((_var(second) + _var(last)) / n_eff)
    if drift > max(max_drift * rise, noise):
        return f"trace not settled (last-quarter mean moved {drift:.3g}; loss rise {rise:.3g}, noise {noise:.3g})"
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
    model: Any, input_ids: Any, loss_fn: Any, params: Sequence[Any], *, lr: float, n_beta: float, localization: float,
    steps: int, seed: int,
) -> float:
    """Mean Metropolis-Hastings acceptance probability of SGLD's Langevin proposal along a short chain.

    devinterp 2.0.1 no longer ships its MALA observable, so this recomputes it: from the checkpoint
    w0, `steps` proposals w' = w - lr/2 grad U(w) + sqrt(lr) N(0, 1) (devinterp's SGLD update, on the
    full batch `input_ids`), with U(w) = n_beta L(w) + localization/2 |w - w0|^2 the potential SGLD
    samples. Each step records min(1, exp(U(w) - U(w') + log q(w | w') - log q(w' | w))) and moves
    to w' (unadjusted, as SGLD does). `params` are the sampled tensors; they are restored afterwards.
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

    rates = []
    try:
        u, grad = potential(params)
        for _ in range(steps):
            old = [p.detach().clone() for p in params]
            noise = [torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype) for p in params]
            with torch.no_grad():
                for p, g, z in zip(params, grad, noise, strict=True):
                    p.add_(g, alpha=-0.5 * lr).add_(z, alpha=lr**0.5)
            u_new, grad_new = potential(params)
            # log q(w' | w) = -|w' - w + lr/2 grad(w)|^2 / (2 lr) = -|z|^2 / 2; log q(w | w') likewise with grad(w')
            forward = sum(float((z**2).sum()) for z in noise) / 2
            backward = sum(
                float(((o.double() - p.detach().double() + 0.5 * lr * g.double()) ** 2).sum())
                for o, p, g in zip(old, params, grad_new, strict=True)
            ) / (2 * lr)
            log_ratio = u - u_new - backward + forward
            rates.append(1.0 if log_ratio >= 0 else math.exp(log_ratio))
            u, grad = u_new, grad_new
    finally:
        with torch.no_grad():
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
    return _mean(rates) if rates else float("nan")
