"""Training curves from `metrics.jsonl`: rewards, KL and Pass@K, written to `plots/`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .rundir import RunDir


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), int | float)]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write the figure beside its final name, then rename (readers never see half a PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def plot_run(run: RunDir) -> list[Path]:
    """Redraw `plots/rewards.png`, `plots/kl.png` and `plots/passk.png`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = run.read_metrics()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    written = []

    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps, total = _series(train, "reward")
    if steps:
        ax.plot(steps, total, color="black", lw=2, label="total (weighted)")
    for key in sorted({k for r in train for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        ax.plot(*_series(train, key), lw=1, label=key.removeprefix("rewards/").removesuffix("/mean"))
    es, er = _series(evals, "eval/reward")
    if es:
        ax.plot(es, er, "o--", color="tab:red", label="held-out (eval)")
    ax.set(xlabel="step", ylabel="reward", title=f"{run.path.name}: reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, run.plots / "rewards.png")
    plt.close(fig)
    written.append(run.plots / "rewards.png")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps, kl = _series(train, "kl")
    if steps:
        ax.plot(steps, kl, color="tab:purple", label="KL(policy || reference), k3")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "KL not computed: trainer.beta is 0", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="KL", title=f"{run.path.name}: KL to the reference")
    ax.grid(alpha=0.3)
    save_figure(fig, run.plots / "kl.png")
    plt.close(fig)
    written.append(run.plots / "kl.png")

    if evals:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        keys = sorted({k for r in evals for k in r if k.startswith("eval/pass@")}, key=lambda k: int(k.split("@")[1]))
        for key in keys:
            ax.plot(*_series(evals, key), "o-", label=key.removeprefix("eval/"))
        gs, gv = _series(evals, "eval/greedy_pass@1")
        if gs:
            ax.plot(gs, gv, "s--", color="black", label="greedy pass@1")
        ax.set(xlabel="step", ylabel="fraction of held-out problems", ylim=(-0.02, 1.02), title=f"{run.path.name}: Pass@K")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, run.plots / "passk.png")
        plt.close(fig)
        written.append(run.plots / "passk.png")
    return written
