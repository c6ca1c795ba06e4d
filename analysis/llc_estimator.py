"""The LLC estimator: devinterp's SGLD on chosen parameters of any torch model, and its settings.

`Settings` holds every sampler and probe setting (recorded with each table so reruns never mix
settings); `estimate_llc` runs one devinterp estimate on any model, dataset and loss (the function
the known-answer tests in `tests/test_llc_known.py` and `tests/test_llc_singular.py` check);
`estimate` runs it on a probe set; `lora_groups` names the LoRA parameters sampled, all together or
per component (attention vs MLP, early / middle / late layers); `health` judges an estimate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    """SGLD and probe settings; recorded in `<table>_settings.json` so reruns never mix settings.

    Defaults (evidence in docs/analysis.md): one probe for the whole run (`rollouts`: completions
    sampled once from the checkpoints `probe_from` names, on `num_probes` held-out prompts of draw
    `probe_draw`), sampled on the full probe batch (no minibatch noise), n_beta = batch / ln(batch),
    localization 1000; lr is the one calibration picks when the run has no recorded settings.
    """

    def __post_init__(self) -> None:
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", self.num_probes)
        if self.n_beta is None:
            object.__setattr__(self, "n_beta", self.batch_size / math.log(self.batch_size) if self.batch_size > 1 else 1.0)

    lr: float = 1e-4
    n_beta: float | None = None  # None: batch_size / ln(batch_size), devinterp's usual default
    localization: float = 1000.0
    chains: int = 2
    draws: int = 12
    burn_in: int = 8
    batch_size: int | None = None  # None: the whole probe set every step
    seed: int = 0
    probe: str = "rollouts"
    probe_from: tuple[int, ...] | None = None  # checkpoints the rollouts are sampled from (None: resolved per run)
    probe_draw: int = 0  # which disjoint set of held-out prompts (draw k: prompts k*n .. (k+1)*n - 1)
    num_probes: int = 4
    max_drift: float = 0.25
    sampler: str = "rmsprop_sgld"
    mala_steps: int = 2
    # Bumped when the probe rows change meaning, so rows of an older probe are never mixed with new ones.
    probe_format: int = 4


def settings_record(settings: Settings) -> dict[str, Any]:
    """The settings as JSON has them (tuples as lists), for the settings files and comparisons with them."""
    import json
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(settings)))


SAMPLERS = {"sgld": "sgmcmc_sgld", "rmsprop_sgld": "rmsprop_sgld"}  # ours -> devinterp's sampling_method
PROBES = ("rollouts", "self", "reference")
# How --components groups the LoRA weights; `lora_groups(model, grouping)`.
GROUPINGS = ("attn-mlp", "thirds", "layers", "components")


def lora_groups(model: Any, grouping: str | None) -> dict[str, dict[str, None]]:
    """Parameter masks of the model's LoRA weights: all of them (group `all`), or per component (`group_names`)."""
    return group_names([n for n, _ in model.named_parameters() if "lora_" in n], grouping)


def group_names(names: Sequence[str], grouping: str | None) -> dict[str, dict[str, None]]:
    """Parameter names by group: all (`all`), or one group per component of `grouping`: `attn-mlp` (attention vs
    MLP), `thirds` (early / middle / late layers), `components` (both: `attn.early`, ..., `mlp.late`) or
    `layers` (one group per layer)."""
    if grouping is None:
        return {"all": dict.fromkeys(names)}
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}: one of {GROUPINGS}")
    layers = sorted({int(m.group(1)) for n in names if (m := re.search(r"\.layers\.(\d+)\.", n))})
    groups: dict[str, dict[str, None]] = {}
    for name in names:
        m = re.search(r"\.layers\.(\d+)\.", name)
        kind = "attn" if ("attn" in name or "attention" in name) else "mlp" if "mlp" in name else "other"
        third = "other" if m is None else ("early", "middle", "late")[min(2, 3 * layers.index(int(m.group(1))) // len(layers))]
        key = {
            "layers": f"layer{int(m.group(1)):02d}" if m else "other",
            "attn-mlp": kind,
            "thirds": third,
            "components": f"{kind}.{third}",
        }[grouping]
        groups.setdefault(key, {})[name] = None
    order = {"attn": 0, "mlp": 1, "early": 0, "middle": 1, "late": 2, "other": 9}
    return dict(sorted(groups.items(), key=lambda kv: [order.get(p, 5) for p in kv[0].split(".")] + [kv[0]]))


def estimate(model: Any, probe: Any, masks: dict[str, None] | None, settings: Settings, device: str) -> dict[str, Any]:
    """One devinterp LLC estimate on the probe set; returns per-chain LLCs, the loss traces and the init loss."""
    return estimate_llc(
        model, probe.dataset(), probe.loss_fn(), masks, settings, device,
        init_loss_batches=max(1, len(probe.texts) // settings.batch_size),  # the whole probe set once
    )  # fmt: skip


def estimate_llc(
    model: Any,
    dataset: Any,
    loss_fn: Any,
    masks: dict[str, Any] | None,
    settings: Settings,
    device: str,
    *,
    init_loss_batches: int,
) -> dict[str, Any]:
    """One devinterp LLC estimate of any torch model; what `estimate` runs on the probe set.

    `dataset` is a HuggingFace Dataset with an integer `input_ids` column of rows of length >= 2;
    `loss_fn(model, input_ids)` returns the per-position loss, shape (batch, length - 1), whose mean
    over a row is that row's negative log-likelihood (devinterp averages over every position).
    `masks` names the parameters sampled (devinterp `param_masks`; None: every parameter, frozen
    ones included). devinterp's sampler `settings.sampler` uses `lr`, `n_beta`, `localization`,
    `chains`, `draws`, `burn_in`, `batch_size` and `seed`; the init loss is the mean over
    `init_loss_batches` batches.

    LLC = n_beta * (mean loss over the draws after burn-in - init loss), per chain. (devinterp 2.0.1's
    own `llc_mean` averages the burn-in steps in as well, which biases it toward 0 by the share of
    burn-in; it is kept as `llc_devinterp`.) With `settings.mala_steps`, the MALA acceptance rate of the
    sampler's proposal is measured on one batch (`llc_health.mala_acceptance`; for rmsprop_sgld with its
    preconditioner held at the checkpoint's, `llc_health.rmsprop_preconditioner`).
    """
    import tempfile
    import warnings

    from devinterp.slt.llc import llc

    from analysis.llc_health import mala_acceptance, rmsprop_preconditioner

    # All weights (masks None): PEFT froze the base, and SGLD only moves parameters that get gradients.
    frozen = [p for p in model.parameters() if not p.requires_grad] if masks is None else []
    for p in frozen:
        p.requires_grad_(True)
    try:
        with tempfile.TemporaryDirectory(prefix="llc-") as tmp, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = llc(
                model,
                dataset,
                {},
                lr=settings.lr,
                n_beta=settings.n_beta,
                param_masks=masks,
                loss_fn=loss_fn,
                num_chains=settings.chains,
                num_draws=settings.draws,
                num_burnin_steps=settings.burn_in,
                batch_size=settings.batch_size,
                localization=settings.localization,
                init_seed=settings.seed,
                num_init_loss_batches=init_loss_batches,
                sampling_method=SAMPLERS[settings.sampler],
                device=device,
                output_path=Path(tmp) / "samples.zarr",
            )
            trace = result["loss_trace"].values.tolist()
        acceptance = None
        if settings.mala_steps > 0:
            names = set(masks) if masks is not None else None
            params = [p for n, p in model.named_parameters() if (names is None or n in names) and p.requires_grad]
            ids = dataset[: min(len(dataset), settings.batch_size)]["input_ids"].to(device)
            precond = None
            if settings.sampler == "rmsprop_sgld":
                precond = rmsprop_preconditioner(model, ids, loss_fn, params, steps=settings.burn_in + settings.draws)
            acceptance = mala_acceptance(
                model, ids, loss_fn, params, lr=settings.lr, n_beta=settings.n_beta, localization=settings.localization,
                steps=settings.mala_steps, seed=settings.seed, preconditioner=precond,
            )  # fmt: skip
    finally:
        for p in frozen:
            p.requires_grad_(False)
    failures = [str(w.message) for w in caught if "Chain failed" in str(w.message)]
    init_loss = float(result["init_loss"])
    per_chain = [chain_llc(t, settings.burn_in, init_loss, settings.n_beta) for t in trace]
    finite = [v for v in per_chain if math.isfinite(v)]
    mean = sum(finite) / len(finite) if finite else float("nan")
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite)) if finite else float("nan")
    return {
        "llc_mean": mean if len(finite) == len(per_chain) else float("nan"),
        "llc_std": std,
        "per_chain": per_chain,
        "llc_devinterp": float(result["llc_mean"]),
        "trace": trace,
        "init_loss": init_loss,
        "failures": failures,
        "mala_acceptance": acceptance,
    }


def chain_llc(trace: Sequence[float], burn_in: int, init_loss: float, n_beta: float) -> float:
    """n_beta * (mean of a chain's losses after burn-in - init loss); NaN when a draw is not finite."""
    draws = list(trace[burn_in:])
    if not draws or not all(math.isfinite(x) for x in draws):
        return float("nan")
    return n_beta * (sum(draws) / len(draws) - init_loss)


def health(est: dict[str, Any], settings: Settings) -> tuple[bool, str]:
    """Whether an estimate can be trusted, and why not (see `analysis.llc_health.health`)."""
    from analysis.llc_health import health as judge

    return judge(est, settings.burn_in, settings.max_drift)
