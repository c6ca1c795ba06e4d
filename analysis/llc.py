"""Local learning coefficients over a run's adapter checkpoints, with devinterp's samplers.

    uv run analysis/llc.py --run runs/quickstart                 # calibrates the lr first, then every checkpoint
    uv run analysis/llc.py --run runs/quickstart --calibrate     # the lr x n_beta grid on first and last checkpoint
    uv run analysis/llc.py --run runs/quickstart --restrict attn-mlp
    uv run analysis/llc.py --run runs/quickstart --probe rollouts --probe-from 24
    uv run grpo-llc --run runs/quickstart                        # the same command, as a console script

The base model is loaded once, through the training backends; each `checkpoints/adapter-<step>/`
is swapped in by loading its LoRA weights into the same model. Only the LoRA parameters are
sampled (devinterp `param_masks`). By default each checkpoint is measured on its own completions
(`--probe self`): held-out prompts of the run's task, one completion sampled from that checkpoint
with the run's sampler, loss on the completion tokens, built as the run's training saw completions
(see `analysis/probe.py`). `--probe rollouts` samples once from one checkpoint for all of them;
`--probe reference` uses the gold answers.

On a CPU, a run whose `model.name` is a pre-quantized (bitsandbytes) repo is analysed on the
16-bit base that repo was made from, when that is in the local Hugging Face cache.

Writes `<run>/analysis/`: `llc.csv` (one row per checkpoint), `llc_settings.json`, `traces/`
(per-checkpoint loss traces), `llc_traces.png` (trace diagnostics), the calibration files when it
calibrates, and the combined figure. A row is healthy when every chain is positive and settled, the
chains agree and the checkpoint is a minimum of its probe loss (`analysis/llc_health.py`); `notes`
says why not, then the share of draws below the init loss and the MALA acceptance rate.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

LLC_COLUMNS = ("step", "llc_mean", "llc_std")


@dataclass(frozen=True)
class Settings:
    """SGLD and probe settings; recorded in `llc_settings.json` so reruns never mix settings.

    Defaults (evidence in docs/analysis.md): the probe is each checkpoint's own completions (`self`),
    sampled on the full probe batch (no minibatch noise), n_beta = batch / ln(batch), localization
    100; lr is the one `--calibrate` picks when the run has no recorded settings.
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
    draws: int = 20
    burn_in: int = 10
    batch_size: int | None = None  # None: the whole probe set every step
    seed: int = 0
    probe: str = "self"
    probe_from: int | None = None
    num_probes: int = 4
    restrict: str | None = None
    max_drift: float = 0.25
    sampler: str = "rmsprop_sgld"
    mala_steps: int = 4
    # Bumped when the probe rows change meaning, so llc.csv rows of an older probe are never mixed with new ones.
    probe_format: int = 3


LR_GRID = (3e-5, 1e-4, 3e-4, 1e-3)
SAMPLERS = {"sgld": "sgmcmc_sgld", "rmsprop_sgld": "rmsprop_sgld"}  # ours -> devinterp's sampling_method
PROBES = ("self", "rollouts", "reference")


# ----------------------------------------------------------------------------- run and model


def load_run(path: str | Path):
    """The run directory and its resolved config."""
    from training_with_unsloth.config import validate
    from training_with_unsloth.errors import UserError
    from training_with_unsloth.rundir import RunDir
    from training_with_unsloth.yaml_reader import read_yaml_mapping

    run = RunDir(path)
    if not run.config.is_file():
        raise UserError(f"{run.path} is not a run directory (no config.yaml): pass --run runs/<name>")
    cfg = validate(read_yaml_mapping(run.config, what="run's config"))
    if not run.adapter_steps():
        raise UserError(f"{run.checkpoints} holds no adapter checkpoints (adapter-<step>/ with meta.json)")
    return run, cfg


def load_model(cfg: Any, device: str, run: Any | None = None):
    """Base model + an empty LoRA adapter of the run's shape, loaded once (training's backend code).

    Off CUDA, a 4-bit run is loaded onto 16-bit weights: its adapters are plain PEFT LoRA files
    whose tensor names do not depend on the base's quantization (`swap_adapter` checks each one).
    """
    from training_with_unsloth.models import backends
    from training_with_unsloth.session import model_for_device

    cuda = device.startswith("cuda")
    backend = "unsloth" if cuda and backends.resolve_backend(cfg.model.backend) == "unsloth" else "transformers"
    backends.offline_environment(cfg.model.download)
    backends.prepare(backend)
    model_cfg, note = model_for_device(cfg.model, cuda)
    if note:
        revision = _trained_revision(run)
        print(f"note: {note}" + (f" (training used revision {revision} of {cfg.model.name})" if revision else ""))
    loaded = backends.load(model_cfg, backend, seed=cfg.seed, gradient_checkpointing=False)
    model = loaded.model
    # quantized weights are placed on the GPU at load and refuse .to()
    quantized = getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_loaded_in_4bit", False)
    if loaded.peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, loaded.peft_config)
    if not (quantized or (cuda and cfg.model.load_in_4bit)):
        model = model.to(device)
    model.eval()
    return model, loaded.tokenizer


def _trained_revision(run: Any | None) -> str | None:
    """The model revision the run's `env.json` records for training, if it records one."""
    if run is None or not run.env.is_file():
        return None
    try:
        entry = json.loads(run.env.read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    revision = entry.get("revision") if isinstance(entry, dict) else None
    return revision if isinstance(revision, str) and revision else None


def swap_adapter(model: Any, adapter_dir: Path) -> None:
    """Load a snapshot's LoRA weights into the live adapter, checking every LoRA tensor is replaced."""
    from training_with_unsloth.checkpoints import load_weights

    load_weights(model, adapter_dir)


def lora_groups(model: Any, restrict: str | None) -> dict[str, dict[str, None]]:
    """Parameter masks: all LoRA weights (group `all`), or one group per layer / attention vs MLP."""
    names = [n for n, p in model.named_parameters() if "lora_" in n]
    if restrict is None:
        return {"all": dict.fromkeys(names)}
    groups: dict[str, dict[str, None]] = {}
    for name in names:
        if restrict == "layers":
            m = re.search(r"\.layers\.(\d+)\.", name)
            key = f"layer{int(m.group(1)):02d}" if m else "other"
        else:
            key = "attn" if ("attn" in name or "attention" in name) else "mlp" if "mlp" in name else "other"
        groups.setdefault(key, {})[name] = None
    return dict(sorted(groups.items()))


# ----------------------------------------------------------------------------- probe


def build_run_probe(run: Any, cfg: Any, model: Any, tokenizer: Any, settings: Settings, device: str, step: int | None = None):
    """The probe for checkpoint `step`: its own sampled completions (`self`), completions sampled once from
    checkpoint `--probe-from` (`rollouts`, the same rows for every checkpoint) or gold answers (`reference`).

    Budget, chat-template arguments and sampler are the run's `trainer:` settings. `self` needs `step`;
    it swaps that checkpoint's adapter in to sample (cached in `probe-rollouts-<step>.jsonl`).
    """
    import tasks
    from analysis.probe import RunSampling, build_probe

    task = tasks.get(cfg.task.name, **cfg.task.params)
    _, eval_ds = task.build(cfg.seed)
    rows = list(eval_ds)[: settings.num_probes]
    if len(rows) < settings.batch_size:
        from training_with_unsloth.errors import UserError

        raise UserError(f"--num-probes/eval split gives {len(rows)} probe rows, fewer than --batch-size {settings.batch_size}")
    prompts = [r["prompt"] for r in rows]
    sampling = RunSampling.from_trainer(cfg.trainer)
    if settings.probe == "reference":
        completions = [task.gold(r) for r in rows]
    elif settings.probe == "self":
        if step is None:
            raise ValueError("the 'self' probe is built per checkpoint: pass its step")
        completions = _rollouts(run, model, tokenizer, prompts, sampling, settings, device, step)
    else:
        step = settings.probe_from if settings.probe_from is not None else run.adapter_steps()[-1]
        completions = _rollouts(run, model, tokenizer, prompts, sampling, settings, device, step)
    return build_probe(
        tokenizer, prompts, completions,
        max_completion_tokens=sampling.max_completion_length, chat_template_kwargs=sampling.chat_template_kwargs,
    )  # fmt: skip


def _rollouts(run, model, tokenizer, prompts, sampling: Any, settings: Settings, device: str, step: int) -> list[Any]:
    """Completions sampled once from checkpoint `step` with the run's sampler; cached per step."""
    from analysis.probe import sample_rollouts
    from training_with_unsloth.rundir import atomic_write_text, read_jsonl

    path = run.analysis / f"probe-rollouts-{step}.jsonl"
    sampler = {**sampling.record(), "seed": settings.seed}
    vocab = max(len(tokenizer), model.get_input_embeddings().weight.shape[0])
    cached = _cached_rollouts(list(read_jsonl(path)), prompts, sampler, vocab)
    if cached is not None:
        return cached
    if step not in run.adapter_steps():
        from training_with_unsloth.errors import UserError

        raise UserError(f"--probe-from {step}: no checkpoints/adapter-{step}; have {run.adapter_steps()}")
    swap_adapter(model, run.adapter_dir(step))
    rollouts = sample_rollouts(model, tokenizer, prompts, sampling, seed=settings.seed, device=device)
    records = [
        {"step": step, "prompt": p, "completion": r.text, "completion_ids": list(r.ids), "ended": r.ended,
         "end_token_id": r.end_token, "sampler": sampler}
        for p, r in zip(prompts, rollouts, strict=True)
    ]  # fmt: skip
    run.analysis.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(rec) + "\n" for rec in records))
    return rollouts


def _cached_rollouts(records: list[dict], prompts: list, sampler: dict[str, Any], vocab: int) -> list[Any] | None:
    """The cached rollouts when the file holds every prompt, sampled with these settings; else None (resample).

    A file from an older version (no `ended`, `completion_ids` or `sampler`) or one edited by hand
    does not count: its rows may have been cut or sampled differently.
    """
    from analysis.probe import Rollout

    if len(records) < len(prompts):
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


# ----------------------------------------------------------------------------- estimation


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


# ----------------------------------------------------------------------------- files


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from training_with_unsloth.rundir import atomic_write_text

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: int(r["step"])))
    atomic_write_text(path, buf.getvalue())


def row_for(step: int, ests: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """One llc.csv row: the `all` estimate (or the first group's), per-chain values, health, group columns."""
    main = ests.get("all") or next(iter(ests.values()))
    healthy_all, notes = True, []
    for group, est in ests.items():
        ok, why = health(est, settings)
        healthy_all &= ok
        if why:
            notes.append(why if group == "all" else f"[{group}] {why}")
    row: dict[str, Any] = {"step": step, "llc_mean": main["llc_mean"], "llc_std": main["llc_std"]}
    row.update({f"llc_chain_{i}": v for i, v in enumerate(main["per_chain"])})
    row["init_loss"] = main["init_loss"]
    row["healthy"] = healthy_all
    row["notes"] = "; ".join(notes)
    if "all" not in ests:
        for group, est in ests.items():
            row[f"llc_mean[{group}]"] = est["llc_mean"]
            row[f"llc_std[{group}]"] = est["llc_std"]
    return row


def plot_traces(run: Any, steps: Sequence[int], settings: Settings, path: Path) -> Path:
    """One panel per checkpoint: each chain's loss trace, the init loss and the burn-in boundary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training_with_unsloth.plots import save_figure

    n = len(steps)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, step in zip(axes.flat, steps, strict=False):
        data = json.loads((run.analysis / "traces" / f"step-{step}.json").read_text())
        for group, est in data["estimates"].items():
            for i, trace in enumerate(est["trace"]):
                ax.plot(trace, lw=1, label=f"{group} chain {i}" if group != "all" else f"chain {i}")
            ax.axhline(est["init_loss"], color="black", ls=":", lw=1)
        ax.axvline(settings.burn_in - 0.5, color="grey", ls="--", lw=1)
        ax.set_title(
            f"step {step}" + ("" if data["healthy"] else "  (unhealthy)"),
            fontsize=9,
            color="black" if data["healthy"] else "tab:red",
        )
        ax.set_xlabel("SGLD step", fontsize=8)
        ax.set_ylabel("probe loss", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"{run.path.name}: SGLD loss traces (dotted: init loss, dashed: end of burn-in)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=200)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- commands


class ProbeSource:
    """The probe each checkpoint is measured on: built once (`reference`, `rollouts`) or per checkpoint (`self`)."""

    def __init__(self, run: Any, cfg: Any, model: Any, tokenizer: Any, settings: Settings, device: str):
        self._args = (run, cfg, model, tokenizer, settings, device)
        self._fixed = None if settings.probe == "self" else build_run_probe(*self._args)

    def at(self, step: int) -> Any:
        """The probe for checkpoint `step` (sampling its completions first for `self`)."""
        return self._fixed if self._fixed is not None else build_run_probe(*self._args, step=step)

    def describe(self) -> str:
        settings = self._args[4]
        if self._fixed is not None:
            return f"{self._fixed.input_ids.shape[0]} x {self._fixed.input_ids.shape[1]} tokens, the same for every checkpoint"
        return f"{settings.num_probes} held-out prompts, completions sampled from each checkpoint"


def run_llc(run: Any, cfg: Any, settings: Settings, steps: list[int], *, device: str, force: bool) -> list[dict[str, Any]]:
    """LLC for each requested checkpoint not yet in llc.csv (all of them with `force`)."""
    from tqdm.auto import tqdm

    from training_with_unsloth.errors import UserError
    from training_with_unsloth.rundir import atomic_write_json, read_json_object

    run.analysis.mkdir(parents=True, exist_ok=True)
    csv_path = run.analysis / "llc.csv"
    settings_path = run.analysis / "llc_settings.json"
    existing = read_csv(csv_path)
    recorded = read_json_object(settings_path, remedy="delete it (and llc.csv, whose settings it records) to start afresh")
    if existing and recorded != asdict(settings):
        if not force:
            raise UserError(
                f"{csv_path} was computed with other settings ({settings_path.name}); pass --force to recompute, "
                "or repeat the recorded settings"
            )
        existing = []  # rows from other settings must not sit beside the new ones
    done = set() if force else {int(r["step"]) for r in existing}
    todo = [s for s in steps if s not in done]
    rows = [r for r in existing if int(r["step"]) not in todo]
    if not todo:
        print(f"all {len(steps)} requested checkpoints are already in {csv_path} (use --force to recompute)")
        return rows

    model, tokenizer = load_model(cfg, device, run)
    probes = ProbeSource(run, cfg, model, tokenizer, settings, device)
    groups = lora_groups(model, settings.restrict)
    atomic_write_json(settings_path, asdict(settings))
    print(
        f"LLC over {len(todo)} checkpoint(s) {todo}: {sum(len(g) for g in groups.values())} LoRA tensors in "
        f"{len(groups)} group(s), probe '{settings.probe}' ({probes.describe()}), sampler {settings.sampler}, "
        f"lr {settings.lr:g}, n_beta {settings.n_beta:.3g}, batch {settings.batch_size}",
        flush=True,
    )
    bar = tqdm(todo, desc="checkpoints", unit="ckpt")
    for step in bar:
        t0 = time.time()
        probe = probes.at(step)
        swap_adapter(model, run.adapter_dir(step))
        ests = {name: estimate(model, probe, masks, settings, device) for name, masks in groups.items()}
        row = row_for(step, ests, settings)
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        atomic_write_json(
            run.analysis / "traces" / f"step-{step}.json",
            {"step": step, "healthy": row["healthy"], "notes": row["notes"], "estimates": ests},
        )
        write_csv(csv_path, rows)  # after every checkpoint: an interruption loses at most the current one
        bar.write(
            f"step {step}: llc {row['llc_mean']:.4g} +- {row['llc_std']:.3g}"
            + ("" if row["healthy"] else f"  UNHEALTHY: {row['notes']}")
        )
    done_steps = sorted(int(r["step"]) for r in rows if (run.analysis / "traces" / f"step-{int(r['step'])}.json").is_file())
    if done_steps:
        plot_traces(run, done_steps, settings, run.analysis / "llc_traces.png")
    return rows


def calibrate(
    run: Any,
    cfg: Any,
    base: Settings,
    lrs: list[float],
    n_betas: list[float],
    *,
    device: str,
    steps: list[int] | None = None,
    first_healthy: bool = False,
) -> dict[str, Any]:
    """Grid of lr x n_beta on `steps` (default the first and last checkpoint); table, trace grid, recommendation.
    With `first_healthy` the lrs are tried in the order given and each checkpoint's scan stops at the first healthy one.

    Steps: estimate every grid point (`calibration_estimates`), draw the trace grid
    (`plot_calibration`), pick a setting (`recommend_setting`), write `calibration.csv` and
    `calibration.json` (`write_calibration`), print the table (`print_calibration`).
    """
    import matplotlib

    matplotlib.use("Agg")

    steps = steps or sorted({run.adapter_steps()[0], run.adapter_steps()[-1]})
    model, tokenizer = load_model(cfg, device, run)
    probes = ProbeSource(run, cfg, model, tokenizer, base, device)
    masks = lora_groups(model, None)["all"]
    print(
        f"calibrating on checkpoints {steps}: lr {lrs} x n_beta {n_betas}, probe '{base.probe}' ({probes.describe()}), "
        f"sampler {base.sampler}, {base.chains} chains x {base.burn_in}+{base.draws} steps",
        flush=True,
    )
    results, traces = calibration_estimates(
        run, model, probes, masks, base, steps, lrs, n_betas, device=device, first_healthy=first_healthy
    )
    plot_calibration(run, steps, lrs, n_betas, results, traces, run.analysis / "calibration.png")
    rec = recommend_setting(results, base.n_beta)
    write_calibration(run, steps, results, rec, base, traces)
    print_calibration(steps, results, rec)
    return {"results": results, "recommended": rec}


def calibration_estimates(
    run: Any,
    model: Any,
    probes: ProbeSource,
    masks: dict[str, None],
    base: Settings,
    steps: list[int],
    lrs: list[float],
    n_betas: list[float],
    *,
    device: str,
    first_healthy: bool = False,
) -> tuple[list[dict[str, Any]], list[list[list[float]]]]:
    """One LLC estimate per checkpoint x lr x n_beta, in that order, with progress and ETA printed.
    With `first_healthy`, a checkpoint's scan stops at the first lr with a healthy estimate.

    Returns the result rows (step, lr, n_beta, llc_mean, llc_std, below_init, mala_acceptance,
    healthy, notes) and, aligned with them, each estimate's per-chain loss traces.
    """
    from analysis.llc_health import below_init

    results: list[dict[str, Any]] = []
    traces: list[list[list[float]]] = []
    total = len(steps) * len(lrs) * len(n_betas)
    t0, k = time.time(), 0
    for step in steps:
        probe = probes.at(step)
        swap_adapter(model, run.adapter_dir(step))
        for lr in lrs:
            for nb in n_betas:
                s = replace(base, lr=lr, n_beta=nb)
                est = estimate(model, probe, masks, s, device)
                ok, why = health(est, s)
                results.append(
                    {
                        "step": step,
                        "lr": lr,
                        "n_beta": nb,
                        "llc_mean": est["llc_mean"],
                        "llc_std": est["llc_std"],
                        "below_init": below_init(est["trace"], s.burn_in, est["init_loss"]),
                        "mala_acceptance": est["mala_acceptance"],
                        "healthy": ok,
                        "notes": why,
                    }
                )
                traces.append(est["trace"])
                k += 1
                eta = (time.time() - t0) / k * (total - k)
                print(
                    f"[{k}/{total}] step {step} lr {lr:g} n_beta {nb:g}: llc {est['llc_mean']:.4g} "
                    f"{'healthy' if ok else 'UNHEALTHY: ' + why}" + ("" if first_healthy else f"  (ETA {eta:.0f}s)"),
                    flush=True,
                )
            if first_healthy and any(r["healthy"] for r in results if r["step"] == step and r["lr"] == lr):
                break
    return results, traces


def plot_calibration(
    run: Any,
    steps: list[int],
    lrs: list[float],
    n_betas: list[float],
    results: list[dict[str, Any]],
    traces: list[list[list[float]]],
    path: Path,
) -> Path:
    """One panel per lr x n_beta: each chain's loss trace on the first (blue) and last (orange) checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training_with_unsloth.plots import save_figure

    fig, axes = plt.subplots(len(lrs), len(n_betas), figsize=(3.6 * len(n_betas), 2.6 * len(lrs)), squeeze=False)
    for r, chains in zip(results, traces, strict=True):  # an early-stopped scan leaves some panels empty
        i, j = lrs.index(r["lr"]), n_betas.index(r["n_beta"])
        ax = axes[i][j]
        for trace in chains:
            ax.plot(trace, lw=1, color="tab:blue" if r["step"] == steps[0] else "tab:orange", label=f"step {r['step']}")
    for i, lr in enumerate(lrs):
        for j, nb in enumerate(n_betas):
            here = [r for r in results if r["lr"] == lr and r["n_beta"] == nb]
            status = "" if here and all(r["healthy"] for r in here) else " (unhealthy)" if here else " (not run)"
            axes[i][j].set_title(f"lr {lr:g}, n_beta {nb:g}{status}", fontsize=8)
            axes[i][j].tick_params(labelsize=6)
    handles, labels = axes[0][0].get_legend_handles_labels()
    uniq = dict(zip(labels, handles, strict=False))
    fig.legend(uniq.values(), uniq.keys(), fontsize=7, loc="upper right")
    fig.suptitle(f"{run.path.name}: calibration traces (blue: first checkpoint, orange: last)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=200)
    plt.close(fig)
    return path


def recommend_setting(results: list[dict[str, Any]], default_n_beta: float | None = None) -> dict[str, Any] | None:
    """The lr and n_beta to use, as devinterp's calibration guide picks them: among the settings healthy
    on every checkpoint, the largest lr (the fastest-mixing stable step); at that lr the default
    n_beta when it is healthy, else the n_beta whose chains agree best. None when nothing is healthy
    throughout. The returned dict says why (`reason`)."""
    by_setting: dict[tuple[float, float], list[dict]] = {}
    for r in results:
        by_setting.setdefault((r["lr"], r["n_beta"]), []).append(r)
    healthy = {k: v for k, v in by_setting.items() if all(r["healthy"] for r in v)}
    if not healthy:
        return None
    lr = max(k[0] for k in healthy)
    at_lr = {nb: v for (l_, nb), v in healthy.items() if l_ == lr}
    if default_n_beta is not None and any(math.isclose(nb, default_n_beta, rel_tol=1e-6) for nb in at_lr):
        nb = next(nb for nb in at_lr if math.isclose(nb, default_n_beta, rel_tol=1e-6))
        why = "the default n_beta"
    else:
        nb = min(at_lr, key=lambda n: max(r["llc_std"] / max(abs(r["llc_mean"]), 1e-12) for r in at_lr[n]))
        why = "the n_beta whose chains agree best"
    larger = sorted({k[0] for k in by_setting if k[0] > lr})
    reason = f"largest lr healthy on every calibrated checkpoint ({why})" + (
        f"; lr {', '.join(f'{x:g}' for x in larger)} failed" if larger else ""
    )
    return {"lr": lr, "n_beta": nb, "reason": reason}


def write_calibration(
    run: Any,
    steps: list[int],
    results: list[dict[str, Any]],
    rec: dict[str, Any] | None,
    settings: Settings,
    traces: list[list[list[float]]] | None = None,
) -> None:
    """`calibration.csv` (one row per grid point) and `calibration.json` (steps, results, recommendation)."""
    from training_with_unsloth.rundir import atomic_write_json

    write_csv(run.analysis / "calibration.csv", [{**r, "step": r["step"]} for r in results])
    atomic_write_json(
        run.analysis / "calibration.json",
        {"steps": steps, "settings": _calibration_key(settings), "results": results, "recommended": rec, "traces": traces},
    )


def print_calibration(steps: list[int], results: list[dict[str, Any]], rec: dict[str, float] | None) -> None:
    """The grid as a table, then the recommended flags (or what to widen when nothing was healthy)."""
    print()
    print(f"{'step':>6} {'lr':>9} {'n_beta':>7} {'llc_mean':>10} {'llc_std':>9} {'below':>6} {'MALA':>5}  healthy")
    for r in results:
        below, mala = r.get("below_init"), r.get("mala_acceptance")
        print(
            f"{r['step']:>6} {r['lr']:>9.3g} {r['n_beta']:>7.3g} {r['llc_mean']:>10.4g} {r['llc_std']:>9.3g} "
            f"{'-' if below is None else f'{below:.0%}':>6} {'-' if mala is None else f'{mala:.2f}':>5}  "
            f"{'yes' if r['healthy'] else 'no: ' + r['notes']}"
        )
    if rec:
        print(f"\nrecommended: --lr {rec['lr']:g} --n-beta {rec['n_beta']:g}: {rec['reason']} (steps {steps})")
    else:
        print(
            "\nno setting was healthy on both checkpoints: widen the grid (smaller --lr values), raise --localization or --draws"
        )


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _steps(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


INTERRUPTED = "interrupted: llc.csv holds every checkpoint finished so far; rerun to continue"


def build_parser() -> argparse.ArgumentParser:
    from training_with_unsloth.cli import command_name

    d = Settings()
    ap = argparse.ArgumentParser(
        prog=command_name("llc.py"),
        description="LLCs over a run's adapter checkpoints (devinterp SGLD on the LoRA weights).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--run", required=True, help="run directory (<output_dir>/<name>), e.g. runs/quickstart")
    ap.add_argument("--checkpoints", type=_steps, default=None, help="comma-separated steps (default: every adapter checkpoint)")
    ap.add_argument(
        "--probe",
        choices=list(PROBES),
        default=d.probe,
        help="each checkpoint's own sampled completions (self), completions sampled once from one checkpoint "
        "(rollouts, the same rows for all), or gold answers (reference)",
    )
    ap.add_argument(
        "--probe-from", type=int, default=None, help="checkpoint step the rollout probe is sampled from (default: the last)"
    )
    ap.add_argument("--num-probes", type=int, default=d.num_probes, help="held-out problems in the probe set")
    ap.add_argument(
        "--lr", type=float, default=None,
        help=f"SGLD step size (default: the recorded or calibrated one; {d.lr:g} with --no-calibrate)",
    )  # fmt: skip
    ap.add_argument(
        "--n-beta", type=float, default=None,
        help="SGLD inverse temperature (default: the recorded or calibrated one, else batch_size / ln(batch_size))",
    )  # fmt: skip
    ap.add_argument("--localization", type=float, default=d.localization, help="pull toward the checkpoint's weights (gamma)")
    ap.add_argument("--sampler", choices=list(SAMPLERS), default=d.sampler, help="devinterp sampler")
    ap.add_argument("--chains", type=int, default=d.chains)
    ap.add_argument("--draws", type=int, default=d.draws)
    ap.add_argument("--burn-in", type=int, default=d.burn_in)
    ap.add_argument("--batch-size", type=int, default=None, help="probe rows per SGLD step (default: all of them)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument(
        "--max-drift",
        type=float,
        default=d.max_drift,
        help="trace drift (last vs second quarter) tolerated, as a fraction of the loss rise",
    )
    ap.add_argument(
        "--mala-steps", type=int, default=d.mala_steps,
        help="Langevin proposals scored for the MALA acceptance rate in each estimate (0: skip; sgld only)",
    )  # fmt: skip
    ap.add_argument(
        "--restrict", choices=["layers", "attn-mlp"], default=None, help="refined LLCs per parameter group, one column each"
    )
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    ap.add_argument("--force", action="store_true", help="recompute steps already in llc.csv")
    ap.add_argument(
        "--calibrate", action="store_true",
        help="only the --lr-grid x --n-beta-grid calibration on the first and last checkpoint (it also runs by itself "
        "before the LLCs when the run has no recorded settings and --lr is not given)",
    )  # fmt: skip
    ap.add_argument("--no-calibrate", action="store_true", help="never calibrate: use --lr / --n-beta or their defaults")
    ap.add_argument("--lr-grid", type=_floats, default=list(LR_GRID), help="comma-separated lrs for calibration")
    ap.add_argument(
        "--n-beta-grid", type=_floats, default=None,
        help="comma-separated n_beta values for calibration (default: the default n_beta x 0.5, 1, 2)",
    )  # fmt: skip
    ap.add_argument("--no-figure", action="store_true", help="skip the combined figure at the end")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training_with_unsloth.cli import run_main

    return run_main(lambda: _run(args), interrupted=INTERRUPTED)


def _run(args: argparse.Namespace) -> int:
    """LLCs (calibrating first when nothing says which lr to use) for the run the arguments name, then the figure."""
    from training_with_unsloth.errors import UserError

    run, cfg = load_run(args.run)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.calibrate and args.no_calibrate:
        raise UserError("--calibrate and --no-calibrate contradict each other: pass one")
    settings = Settings(
        lr=args.lr if args.lr is not None else Settings.lr, n_beta=args.n_beta, localization=args.localization,
        chains=args.chains, draws=args.draws, burn_in=args.burn_in, batch_size=args.batch_size, seed=args.seed,
        probe=args.probe, probe_from=args.probe_from, num_probes=args.num_probes, restrict=args.restrict,
        max_drift=args.max_drift, sampler=args.sampler, mala_steps=args.mala_steps,
    )  # fmt: skip
    n_betas = args.n_beta_grid or [settings.n_beta * f for f in (0.5, 1.0, 2.0)]
    if args.calibrate:
        calibrate(run, cfg, settings, args.lr_grid, n_betas, device=device)
        return 0
    available = run.adapter_steps()
    steps = args.checkpoints or available
    missing = [s for s in steps if s not in available]
    if missing:
        raise UserError(f"--checkpoints {missing}: no such adapter checkpoints; the run has {available}")
    settings = choose_settings(run, cfg, settings, args, device=device)
    run_llc(run, cfg, settings, steps, device=device, force=args.force)
    print(f"wrote {run.analysis / 'llc.csv'} and {run.analysis / 'llc_traces.png'}")
    if not args.no_figure:
        from analysis.plot_run import plot_run

        for path in plot_run(run.path):
            print(f"wrote {path}")
    return 0


def choose_settings(run: Any, cfg: Any, settings: Settings, args: argparse.Namespace, *, device: str) -> Settings:
    """The settings to run: the command line's lr; else the lr and n_beta recorded in `llc_settings.json`
    when everything else matches; else a calibration's recommendation (run now unless --no-calibrate)."""
    from training_with_unsloth.rundir import read_json_object

    if args.lr is not None or args.no_calibrate:
        source = "from --lr" if args.lr is not None else "defaults (--no-calibrate)"
        print(f"lr {settings.lr:g}, n_beta {settings.n_beta:.3g}: {source}")
        return settings
    recorded_path = run.analysis / "llc_settings.json"
    if recorded_path.is_file():
        recorded = read_json_object(recorded_path, remedy="delete it (and llc.csv, whose settings it records) to start afresh")
        same = _calibration_key(settings)
        if {k: recorded.get(k) for k in same} == same and args.n_beta is None:
            print(f"lr {recorded['lr']:g}, n_beta {recorded['n_beta']:.3g}: recorded in {recorded_path}")
            return replace(settings, lr=recorded["lr"], n_beta=recorded["n_beta"])
    calib_path = run.analysis / "calibration.json"
    calibrated = read_json_object(calib_path, remedy="delete it to calibrate again") or {}
    if calibrated.get("settings") == _calibration_key(settings):  # a calibration of these settings: use it
        rec = calibrated.get("recommended")
        if rec:
            print(f"lr {rec['lr']:g}, n_beta {rec['n_beta']:.3g}: recommended by {calib_path} ({rec.get('reason', '')})")
    else:
        last = run.adapter_steps()[-1]
        lrs = sorted(args.lr_grid, reverse=True)
        print(
            f"no recorded LLC settings for this run: calibrating first, the largest healthy lr of {lrs} on the last "
            f"checkpoint ({last}) (--no-calibrate to skip, --lr to choose, --calibrate for the full lr x n_beta grid)",
            flush=True,
        )
        rec = calibrate(run, cfg, settings, lrs, [settings.n_beta], device=device, steps=[last], first_healthy=True)[
            "recommended"
        ]
    if rec is None:
        print(
            f"warning: no calibrated setting was healthy on the first and last checkpoint; using lr {settings.lr:g}, "
            f"n_beta {settings.n_beta:.3g}: read the health column before trusting any value"
        )
        return settings
    return replace(settings, lr=rec["lr"], n_beta=rec["n_beta"])


def _calibration_key(settings: Settings) -> dict[str, Any]:
    """The settings a calibration holds fixed (everything but lr and n_beta), recorded with it."""
    return {k: v for k, v in asdict(settings).items() if k not in ("lr", "n_beta")}


if __name__ == "__main__":
    sys.exit(main())
