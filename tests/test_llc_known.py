"""The LLC estimator of `analysis/llc.py` on a model whose learning coefficient is known.

A regular model has learning coefficient d/2 (d parameters). Linear-Gaussian regression
y = x . w + b + noise (noise N(0, sigma^2) with sigma known) is one: its negative log-likelihood is
exactly quadratic in (w, b), so the tempered posterior SGLD samples is Gaussian and
n_beta * (E[L] - L(w*)) = d/2 up to the localization pull and the step-size error. The estimate
runs through `llc_estimator.estimate_llc`, the function `llc_estimator.estimate` runs on a run's probe set: the same
devinterp call, `loss_fn(model, input_ids) -> (batch, length - 1)` convention (the mean over a row
is that row's negative log-likelihood), n_beta default (batch / ln batch) and parameter masks by
name, as `lora_groups` gives for the LoRA weights.
"""

from __future__ import annotations

import math

import pytest
import torch

from analysis import llc_estimator as llc

N = 1024  # samples; one full batch, so n_beta = n / ln n (llc.py's default) and the SGLD gradient is exact
K = 5  # features; nn.Linear(K, 1) with its bias: d = K + 1 = 6 parameters
SIGMA = 0.5
# lr * n_beta / sigma^2 ~ 0.18 (curvature of every direction): chains mix in ~5 steps, step error ~ +5%.
SETTINGS = llc.Settings(
    lr=3e-4, localization=1.0, chains=4, draws=1000, burn_in=100, batch_size=N, seed=0, sampler="sgld", mala_steps=0
)


def regression(seed: int = 0):
    """Data, the least-squares (maximum-likelihood) nn.Linear, and its per-sample Gaussian NLL as devinterp's loss_fn."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, K, generator=g)
    y = x @ torch.randn(K, generator=g) + 0.3 + SIGMA * torch.randn(N, generator=g)
    design = torch.cat([x, torch.ones(N, 1)], dim=1).double()
    w_star = torch.linalg.lstsq(design, y.double()[:, None]).solution[:, 0].float()
    model = torch.nn.Linear(K, 1)
    with torch.no_grad():
        model.weight.copy_(w_star[:K][None])
        model.bias.copy_(w_star[K:])
    # devinterp hands the loss integer rows only: row i is [i, i], a sample index (length 2: one "position").
    dataset = Dataset.from_dict({"input_ids": [[i, i] for i in range(N)]}).with_format("torch")
    const = 0.5 * math.log(2 * math.pi * SIGMA**2)

    def loss_fn(m: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        rows = input_ids[:, 0].cpu()
        pred = m(x[rows].to(input_ids.device))[:, 0]
        return ((y[rows].to(input_ids.device) - pred) ** 2 / (2 * SIGMA**2) + const)[:, None]

    return model, dataset, loss_fn


def estimate(model, dataset, loss_fn, masks, settings=SETTINGS) -> dict:
    return llc.estimate_llc(model, dataset, loss_fn, masks, settings, "cpu", init_loss_batches=N // settings.batch_size)


def test_settings_follow_llc_defaults():
    assert SETTINGS.n_beta == pytest.approx(N / math.log(N))  # n_beta = n / ln n, as llc.py derives it from the batch


def test_least_squares_weights_are_the_loss_minimum():
    model, dataset, loss_fn = regression()
    ids = dataset[:]["input_ids"]
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model, ids).mean(), params)
    assert max(float(gr.abs().max()) for gr in grads) < 1e-4


@pytest.mark.slow
def test_llc_of_linear_gaussian_regression_is_half_the_sampled_parameters():
    model, dataset, loss_fn = regression()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    d = sum(p.numel() for p in model.parameters())

    full = estimate(model, dataset, loss_fn, None)  # every parameter, as llc.py's all-weights mode
    assert d == 6 and not full["failures"] and all(c > 0 for c in full["per_chain"])
    assert full["llc_mean"] == pytest.approx(d / 2, rel=0.15)

    # Only the weight tensor sampled (the bias held at w*), by name as llc.py samples only the LoRA tensors.
    masks = {"weight": None}
    d_sub = model.weight.numel()
    sub = estimate(model, dataset, loss_fn, masks)
    assert d_sub == 5 and not sub["failures"]
    assert sub["llc_mean"] == pytest.approx(d_sub / 2, rel=0.15)
    assert sub["llc_mean"] < full["llc_mean"]

    for name, param in model.named_parameters():  # sampling moves copies, never the model
        assert torch.equal(param, before[name]), name
