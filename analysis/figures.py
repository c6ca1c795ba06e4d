"""Every figure of the analysis tools that is not the combined run figure (`plot_run.py` draws that one).

- `plot_traces`: each checkpoint's SGLD loss traces (`llc_traces.png`);
- `plot_calibration`: the calibration grid's traces (`calibration.png`);
- `plot_component_heatmap`: a per-component table as a step x component heatmap;
- `plot_robustness`: the LLC curve beside its robustness recomputations, with their rank correlations;
- `plot_across_runs`: a statistic's mean across seeds with its 95% band, each run thin behind it.

All write PNGs atomically at 200 dpi and return the path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from training_with_unsloth.plots import save_figure  # noqa: E402

DPI = 200


def plot_traces(run: Any, steps: Sequence[int], settings: Any, path: Path) -> Path:
    """One panel per checkpoint: each chain's loss trace, the init loss and the burn-in boundary."""

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


def plot_component_heatmap(run: Any, table_name: str, prefix: str = "llc_mean", title: str | None = None) -> Path:
    """`analysis/<table_name>.csv`'s `<prefix>[<component>]` columns as a step x component heatmap (`<table_name>.png`).

    Each cell is annotated with its value; columns are checkpoints in step order (evenly spaced, labelled by step).
    """
    import numpy as np

    from analysis.runs import read_table

    path = run.analysis / f"{table_name}.csv"
    table = read_table(path)
    if table is None or not table.rows:
        raise ValueError(f"{path} has no rows to draw")
    comps = [h[len(prefix) + 1 : -1] for h in table.header if h.startswith(prefix + "[") and h.endswith("]")]
    values = np.array([table.column(f"{prefix}[{c}]") for c in comps])
    steps = [int(s) for s in table.steps]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(steps) + 2), max(2.5, 0.45 * len(comps) + 1.2)))
    im = ax.imshow(values, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], fontsize=8)
    ax.set_yticks(range(len(comps)), comps, fontsize=8)
    ax.set_xlabel("checkpoint step")
    for i in range(len(comps)):
        for j in range(len(steps)):
            v = values[i, j]
            if math.isfinite(v):
                ax.text(
                    j, i, f"{v:.2g}", ha="center", va="center", fontsize=6, color="white" if v < np.nanmean(values) else "black"
                )
    fig.colorbar(im, ax=ax, label=prefix)
    ax.set_title(title or f"{run.path.name}: {prefix} per component", fontsize=10)
    fig.tight_layout()
    out = run.analysis / f"{table_name}.png"
    save_figure(fig, out, dpi=DPI)
    plt.close(fig)
    return out


def plot_robustness(run: Any, curves: dict[str, tuple[list[int], list[float]]], rho: dict[str, float | None], path: Path) -> Path:
    """The LLC curve and each recomputation, each scaled by its own mean (the ranks are what is compared)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for label, (steps, values) in curves.items():
        finite = [v for v in values if math.isfinite(v)]
        scale = sum(finite) / len(finite) if finite else 1.0
        extra = "" if label == "llc" else f" (Spearman {_rho_text(rho.get(label))} with llc)"
        ax.plot(steps, [v / scale for v in values], marker="o", lw=1.5 if label == "llc" else 1, label=f"{label}{extra}")
    ax.set_xlabel("checkpoint step")
    ax.set_ylabel("LLC / its mean over checkpoints")
    ax.set_title(f"{run.path.name}: LLC robustness to the step size and the probe draw", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)
    return path


def _rho_text(rho: float | None) -> str:
    return "n/a" if rho is None or not math.isfinite(rho) else f"{rho:+.2f}"


def plot_across_runs(
    rows: Sequence[dict[str, Any]],
    per_run: dict[str, dict[int, float]],
    column: str,
    path: Path,
    *,
    title: str,
    beside: dict[str, Sequence[dict[str, Any]]] | None = None,
) -> Path:
    """The mean across runs with its 95% t-interval as a band and each run thin behind it; below it, the same
    for each series in `beside` (e.g. reward and greedy pass@1), on the same step axis."""
    panels = [(column, rows)] + list((beside or {}).items())
    fig, axes = plt.subplots(len(panels), 1, figsize=(7.0, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, table) in zip(axes[:, 0], panels, strict=True):
        steps = [r["step"] for r in table]
        mean = [r["mean"] for r in table]
        ax.fill_between(steps, [r["low"] for r in table], [r["high"] for r in table], alpha=0.3, color="tab:blue", lw=0,
                        label="95% t-interval across runs")  # fmt: skip
        ax.plot(
            steps, mean, color="tab:blue", marker="o", lw=1.8, label=f"mean of {max((r['n'] for r in table), default=0)} runs"
        )
        if label == column:
            for name, values in per_run.items():
                xs = sorted(values)
                ax.plot(xs, [values[x] for x in xs], lw=0.8, alpha=0.6, label=name)
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=6)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=DPI)
    plt.close(fig)
    return path
