"""The LLC estimator of `analysis/llc_estimator.py` on singular models, whose learning coefficient is known.

A regular model has learning coefficient d/2 (`tests/test_llc_known.py`); the LLC is for singular models,
where parameters do not identify the distribution and lambda < d/2. Linear networks x -> W_L ... W_1 x
with Gaussian noise (sigma known) are singular and their lambda is known exactly. Each is sampled by the
same `llc_estimator.estimate_llc` as the regular test (devinterp SGLD on every parameter, one full batch
of n = 1024 rows [i, i], exact gradients, n_beta = n / ln n = 147.7) and must land within 15% of the
theory:

    model (widths, true rank)                 d    d/2   lambda  source
    reduced-rank regression 4-3-4, rank 3     24   12    15/2    (H(M+N) - H^2)/2: d less the H^2 of GL(H), halved
    reduced-rank regression 4-3-4, rank 1     24   12    6       Aoyagi & Watanabe (2005)
    deep linear network 4-2-2-4, rank 1       20   10    4       Aoyagi (2024); the two-layer 4-2-4 has 5

The formulas (`rrr_learning_coefficient`, `dln_learning_coefficient`) carry their sources; the fast tests
check them by hand and against each other (Aoyagi's DLN formula at two layers is Aoyagi and Watanabe's,
lambda and multiplicity, for every width up to 6). The models are chosen with multiplicity 1: a
multiplicity m lowers E[n_beta K] by (m - 1) / ln(n_beta) at finite n (to leading order).

The point sampled. The theory is for the true parameter; the estimator sits at a minimum of the empirical
loss. The data make the two coincide: x is whitened (x^T x = n I) and the noise orthogonal to it, so the
empirical loss is ||W_L ... W_1 - C0||^2 / (2 sigma^2) plus a constant and its minimum is the truth C0
(singular values 1), factored in balance with the spare units' weights at zero. The exact expectation of
n_beta K under the tempered posterior there (batched MALA, 128 chains, acceptance 0.58-0.77, seed 0,
gamma 1) is 7.49, 5.83 and 3.98: within 3% of lambda; the rest is the estimator's. With i.i.d. x ~ N(0,
I) (`designed=False`: the minimum is the reduced-rank least-squares fit, its spare singular values
O(sigma / sqrt(n)) instead of 0) the estimate also carries the data set's fluctuation: seeds 0-3 gave
1.05-1.07, 0.95-1.12 and 1.05-1.20 of lambda (the deep network's seed 2 outside 15%), against 1.04-1.07,
0.95-1.03 and 1.02-1.07 here.

Settings (`SETTINGS`, one for all three): sigma 0.5, `sgld`, lr 2e-4, localization 1, 4 chains of 500
burn-in + 1500 draws, seed 0; ~11-15 s per estimate on 2 loaded CPU cores. What they imply for the LLM
setting:
- Step size: a quadratic direction of curvature c (per-sample loss; c <= L / sigma^2 for L layers of unit
  singular values: 8, or 12 for the deep one) adds 1/2 (1 + lr n_beta c / 4) instead of 1/2: lr n_beta c
  <= 0.24 (0.36) here, +3-9%; the full-rank model lands 4-7% above lambda, the deep one 2-7%.
- Localization: the pull on a quadratic direction is gamma / (n_beta c), < 0.2% here; a singular
  direction (a spare unit's weights: flat along its in-weights while its out-weights are 0) spreads until
  the prior stops it, so gamma decides how much of it counts: for the rank-1 model the exact value is
  5.83 at gamma 1 and 5.30 at gamma 10, and SGLD gives 3.3 at gamma 100. A direction whose spread under
  n_beta L exceeds ~1 / sqrt(gamma) (0.03 at llc_estimator's default 1000) is cut off and counts less.
- Settling: quadratic directions settle in ~2 / (lr n_beta c) = 8-17 steps (c = 4-8); the singular ones
  take hundreds: over the first 250 steps the rank-1 model's n_beta (L - L0) averages 3.9-4.3 (then ~6),
  the deep one's stays ~5% low until step ~750. A chain of 10 burn-in + 20 draws (the LLM defaults) sees
  the stiff directions and only the start of the singular ones' rise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
import torch

from analysis import llc_estimator as llc

N = 1024  # samples; one full batch, so n_beta = n / ln n (the estimator's default) and the SGLD gradient is exact
SIGMA = 0.5  # the noise of y, known to the model
# One setting for all three models: lr x n_beta x (curvature <= layers / SIGMA^2) <= 0.24 (0.36 for three layers).
SETTINGS = llc.Settings(
    lr=2e-4, localization=1.0, chains=4, draws=1500, burn_in=500, batch_size=N, seed=0, sampler="sgld", mala_steps=0
)
FULL_RANK = ([4, 3, 4], 3)  # (widths, true rank): reduced-rank regression at a rank-H truth
RANK_DEFICIENT = ([4, 3, 4], 1)  # reduced-rank regression, truth of rank 1 < H = 3
DEEP = ([4, 2, 2, 4], 1)  # three-layer deep linear network, truth of rank 1


# ----------------------------------------------------------------------------- the theory


def rrr_learning_coefficient(m: int, n: int, h: int, r: int) -> Fraction:
    """lambda of reduced-rank regression y = B A x (A: h x m, B: n x h) at a true matrix of rank r <= h.

    Aoyagi and Watanabe (2005), "Stochastic complexities of reduced rank regression in Bayesian
    estimation", Neural Networks 18(7), 924-933, its main theorem; as `learnCoef.ReducedRankRegressions`
    implements it in the sBIC R package (github.com/Lucaweihs/sBIC, R/ReducedRankRegressions.R).
    """
    if n + r <= m + h and m + r <= n + h and h + r <= m + n:
        twice_four = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
        return Fraction(twice_four + (m + h + n + r) % 2, 8)
    if m + h < n + r:
        return Fraction(h * m - h * r + n * r, 2)
    if n + h < m + r:
        return Fraction(h * n - h * r + m * r, 2)
    return Fraction(m * n, 2)  # m + n < h + r


def dln_learning_coefficient(widths: list[int], r: int) -> tuple[Fraction, int]:
    """(lambda, multiplicity) of the deep linear network x -> W_L ... W_1 x, widths [input, hidden..., output],
    at a true matrix of rank r <= min(widths).

    Aoyagi (2024), "Consideration on the learning efficiency of multiple-layered neural networks with
    linear units", Neural Networks, doi:10.1016/j.neunet.2024.106132 (preprint SSRN 4404877), as Lau
    et al. (2023/2024, "Quantifying degeneracy in singular models via the learning coefficient") compute
    it in their experiments' code (github.com/edmundlth/validating_lambdahat, dln.py,
    `true_dln_learning_coefficient`):
    with M_i = widths[i] - r, take the set S of the l + 1 smallest M_i such that max(S) < min(rest),
    sum(S) >= l max(S) and sum(S) < l min(rest); with M = ceil(sum(S) / l) and a = sum(S) - (M - 1) l,
    lambda = (r (input + output) - r^2) / 2 + a (l - a) / (4 l) - l (l - 1) / 4 (sum(S) / l)^2
    + sum_{i<j in S} M_i M_j / 2, multiplicity a (l - a) + 1. With two layers it is Aoyagi and
    Watanabe's reduced-rank regression coefficient (`test_dln_with_two_layers_is_reduced_rank_regression`).
    """
    ms = sorted(w - r for w in widths)
    for size in range(2, len(ms) + 1):
        s, rest, ell = ms[:size], ms[size:], size - 1
        total = sum(s)
        if rest and not max(s) < min(rest):
            continue
        if total < ell * max(s) or (rest and total >= ell * min(rest)):
            continue
        a = total - (-(-total // ell) - 1) * ell
        pairs = sum(x * y for x, y in itertools.combinations(s, 2))
        lam = (
            Fraction(r * (widths[0] + widths[-1]) - r * r, 2)
            + Fraction(a * (ell - a), 4 * ell)
            - Fraction(ell * (ell - 1), 4) * Fraction(total, ell) ** 2
            + Fraction(pairs, 2)
        )
        return lam, a * (ell - a) + 1
    raise ValueError(f"no subset satisfies Aoyagi's conditions for widths {widths}, rank {r}")


# ----------------------------------------------------------------------------- the models


def linear_network(widths: list[int]) -> torch.nn.Sequential:
    """x -> W_L ... W_1 x: bias-free nn.Linear layers of the given widths (two layers: reduced-rank regression)."""
    return torch.nn.Sequential(*(torch.nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:], strict=True)))


LossFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]


def realizable_problem(
    widths: list[int], rank: int, seed: int = 0, *, designed: bool = True
) -> tuple[torch.nn.Sequential, Any, LossFn]:
    """A linear network at the minimum of its empirical loss on data from a rank-`rank` truth; its Gaussian NLL as loss_fn.

    The truth is C0 = U V^T (random orthonormal U, V with `rank` columns: singular values 1),
    y = C0 x + N(0, SIGMA^2 I). `designed`: x is whitened (x^T x = n I) and the noise made orthogonal
    to it (x^T noise = 0), so the empirical loss is ||W_L ... W_1 - C0||_F^2 / (2 SIGMA^2) plus a constant
    and its minimum is the truth itself; else x ~ N(0, I) i.i.d. and the minimum is the reduced-rank
    least-squares fit (the ordinary fit projected on the top principal directions of its fitted
    values). Either is factored in balance, W_l holding S^(1/L) of its SVD U S V^T, zero rows and
    columns for the units beyond its rank. Returns the model, the [i, i] index-row dataset and the loss_fn.
    """
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    m, n_out, layers = widths[0], widths[-1], len(widths) - 1

    def orthonormal(size: int, cols: int) -> torch.Tensor:
        return torch.linalg.qr(torch.randn(size, size, generator=g, dtype=torch.float64))[0][:, :cols]

    truth = orthonormal(n_out, rank) @ orthonormal(m, rank).T
    x = torch.randn(N, m, generator=g, dtype=torch.float64)
    noise = SIGMA * torch.randn(N, n_out, generator=g, dtype=torch.float64)
    if designed:
        x = math.sqrt(N) * torch.linalg.qr(x)[0]
        noise = noise - x @ (x.T @ noise) / N
    y = x @ truth.T + noise

    k = min(widths[1:-1])
    ols = torch.linalg.lstsq(x, y).solution.T  # n_out x m
    top = torch.linalg.svd(x @ ols.T, full_matrices=False)[2][:k]  # top-k principal directions of the fitted values
    u, s, vh = torch.linalg.svd(top.T @ top @ ols)
    root = s[:k] ** (1 / layers)
    model = linear_network(widths)
    with torch.no_grad():
        for i, layer in enumerate(model):
            w = torch.zeros(widths[i + 1], widths[i], dtype=torch.float64)
            if i == 0:
                w[:k] = root[:, None] * vh[:k]
            elif i == layers - 1:
                w[:, :k] = u[:, :k] * root
            else:
                w[:k, :k] = torch.diag(root)
            layer.weight.copy_(w)

    xf, yf = x.float(), y.float()
    # devinterp hands the loss integer rows only: row i is [i, i], a sample index (length 2: one "position").
    dataset = Dataset.from_dict({"input_ids": [[i, i] for i in range(N)]}).with_format("torch")
    const = 0.5 * n_out * math.log(2 * math.pi * SIGMA**2)

    def loss_fn(model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        rows = input_ids[:, 0].cpu()
        pred = model(xf[rows].to(input_ids.device))
        return (((yf[rows].to(input_ids.device) - pred) ** 2).sum(-1) / (2 * SIGMA**2) + const)[:, None]

    return model, dataset, loss_fn


def estimate(model: torch.nn.Module, dataset: Any, loss_fn: LossFn, settings: llc.Settings) -> dict[str, Any]:
    """`llc.estimate_llc` on every parameter, the whole data set one batch, single-threaded (tiny matrices)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return llc.estimate_llc(model, dataset, loss_fn, None, settings, "cpu", init_loss_batches=1)
    finally:
        torch.set_num_threads(threads)


def product(model: torch.nn.Sequential) -> torch.Tensor:
    """W_L ... W_1, the matrix the network computes."""
    out = model[0].weight.detach()
    for layer in list(model)[1:]:
        out = layer.weight.detach() @ out
    return out


def theory(widths: list[int], rank: int) -> float:
    """Aoyagi's lambda for the network (two layers: Aoyagi and Watanabe's, the same number)."""
    return float(dln_learning_coefficient(widths, rank)[0])


def check_llc(widths: list[int], rank: int, settings: llc.Settings = SETTINGS) -> dict[str, Any]:
    """Estimate the LLC at the problem's minimum; assert it is within 15% of the theory, and the model untouched."""
    model, dataset, loss_fn = realizable_problem(widths, rank, settings.seed)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    d = sum(p.numel() for p in model.parameters())
    lam = theory(widths, rank)
    assert lam < d / 2  # singular: the theory is well below the regular d/2

    est = estimate(model, dataset, loss_fn, settings)
    assert not est["failures"] and all(c > 0 for c in est["per_chain"])
    assert est["llc_mean"] == pytest.approx(lam, rel=0.15)
    for name, param in model.named_parameters():  # sampling moves copies, never the model
        assert torch.equal(param, before[name]), name
    return est


# ----------------------------------------------------------------------------- the formulas (fast)


def test_settings_follow_the_estimator_defaults():
    assert SETTINGS.n_beta == pytest.approx(N / math.log(N))


def test_rrr_at_full_rank_is_half_the_dimension_of_rank_h_matrices():
    # r = H: H(M + N) parameters less the H^2 of the GL(H) symmetry (A, B) -> (gA, B g^-1), halved.
    for m, n in itertools.product(range(1, 7), repeat=2):
        for h in range(1, min(m, n) + 1):
            assert rrr_learning_coefficient(m, n, h, h) == Fraction(h * (m + n) - h * h, 2), (m, n, h)


@pytest.mark.parametrize(
    ("m", "n", "h", "r", "expected"),
    [
        (4, 4, 3, 1, Fraction(6)),  # case 1, M+H+N+r even: [2*4*8 - 0 - 4^2] / 8 (the rank-deficient test's model)
        (4, 4, 3, 0, Fraction(5)),  # case 1, odd: [2*3*8 - 0 - 3^2 + 1] / 8
        (5, 5, 3, 0, Fraction(13, 2)),  # devinterp tests/slt/rrr_test.py cases (m, h, n) = (5, 3, 5): [60 - 9 + 1] / 8
        (5, 5, 4, 0, Fraction(8)),  # (5, 4, 5), even: [80 - 16] / 8
        (4, 8, 3, 0, Fraction(6)),  # (4, 3, 8): M + H < N + r, HM / 2
        (8, 4, 3, 0, Fraction(6)),  # (8, 3, 4): N + H < M + r, HN / 2
        (3, 4, 8, 0, Fraction(6)),  # (3, 8, 4): M + N < H + r, MN / 2
        (2, 6, 2, 1, Fraction(4)),  # M + H < N + r with r > 0: (HM - Hr + Nr) / 2 = (4 - 2 + 6) / 2
        (6, 2, 2, 1, Fraction(4)),  # the transpose: (HN - Hr + Mr) / 2
        (2, 2, 4, 1, Fraction(2)),  # M + N < H + r: MN / 2 (hidden units beyond use)
    ],
)
def test_rrr_cases_by_hand(m: int, n: int, h: int, r: int, expected: Fraction):
    assert rrr_learning_coefficient(m, n, h, r) == expected


def test_dln_with_two_layers_is_reduced_rank_regression():
    # Two independent results agree: Aoyagi (2024) at L = 2 is Aoyagi and Watanabe (2005), lambda and multiplicity
    # (2 exactly in case 1 with M + H + N + r odd, as the sBIC package has it).
    for m, h, n in itertools.product(range(1, 7), repeat=3):
        for r in range(min(m, h, n) + 1):
            lam, mult = dln_learning_coefficient([m, h, n], r)
            case1_odd = n + r <= m + h and m + r <= n + h and h + r <= m + n and (m + h + n + r) % 2 == 1
            assert (lam, mult) == (rrr_learning_coefficient(m, n, h, r), 2 if case1_odd else 1), (m, h, n, r)


def test_dln_at_the_narrowest_width_rank_is_half_the_dimension_of_rank_r_matrices():
    # A truth of rank r = the narrowest width leaves no spare unit: lambda = (r (M + N) - r^2) / 2, multiplicity 1.
    for layers in (2, 3, 4):
        for widths in itertools.product(range(1, 5), repeat=layers + 1):
            r = min(widths)
            assert dln_learning_coefficient(list(widths), r) == (Fraction(r * (widths[0] + widths[-1]) - r * r, 2), 1)


@pytest.mark.parametrize(
    ("widths", "r", "expected"),
    [
        # M_i - r = [3, 1, 1, 3]; S = {1, 1}, l = 1, a = 1: 7/2 + 0 - 0 + 1/2 (the deep test's model)
        ([4, 2, 2, 4], 1, (Fraction(4), 1)),
        # [3, 3, 3, 3]; S = all, l = 3, sum 12, M = 4, a = 3: 0 + 0 - (3*2/4) 4^2 + 6*9/2 = -24 + 27
        ([3, 3, 3, 3], 0, (Fraction(3), 1)),
        # [2, 2, 3, 3]; S = all, l = 3, sum 10, M = 4, a = 1: 7/2 + 2/12 - (3/2)(10/3)^2 + 37/2, multiplicity 1*2 + 1
        ([4, 3, 3, 4], 1, (Fraction(11, 2), 3)),
    ],
)
def test_dln_cases_by_hand(widths: list[int], r: int, expected: tuple[Fraction, int]):
    assert dln_learning_coefficient(widths, r) == expected


@pytest.mark.parametrize(("widths", "rank"), [FULL_RANK, RANK_DEFICIENT, DEEP])
def test_problems_sit_at_a_minimum_of_their_loss(widths: list[int], rank: int):
    model, dataset, loss_fn = realizable_problem(widths, rank)
    ids = dataset[:]["input_ids"]
    grads = torch.autograd.grad(loss_fn(model, ids).mean(), list(model.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-4
    c = product(model)
    assert torch.linalg.matrix_rank(c, atol=1e-4) == rank  # designed data: the minimum is the rank-r truth itself
    assert float(torch.linalg.svdvals(c)[0]) == pytest.approx(1.0, abs=1e-5)


def test_iid_data_put_the_minimum_near_the_truth():
    model, _, _ = realizable_problem(*RANK_DEFICIENT, designed=False)
    s = torch.linalg.svdvals(product(model))
    assert float(s[0]) == pytest.approx(1.0, abs=0.1) and 0 < float(s[1]) < 0.1  # spare units at O(sigma / sqrt(n))


# ----------------------------------------------------------------------------- the estimates (slow)


@pytest.mark.slow
def test_llc_of_full_rank_reduced_rank_regression():
    check_llc(*FULL_RANK)  # lambda = 15/2, d/2 = 12


@pytest.mark.slow
def test_llc_of_rank_deficient_reduced_rank_regression():
    check_llc(*RANK_DEFICIENT)  # lambda = 6 (Aoyagi and Watanabe), d/2 = 12


@pytest.mark.slow
def test_llc_of_deep_linear_network():
    check_llc(*DEEP)  # lambda = 4 (Aoyagi 2024), d/2 = 10
