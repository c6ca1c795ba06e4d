"""Training curves from `metrics.jsonl`, one PNG per topic in `plots/`, redrawn while training.

`rewards.png` and `kl.png` are always written; `passk.png`, `entropy.png`, `length.png`,
`curriculum.png` and `time.png` (seconds per step in each phase) only once the run has logged
something for them. A key missing from some records (or from all) is skipped, never an error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training_with_unsloth.rundir import RunDir, temp_file_beside

KL_ESTIMATES = ("kl/k1", "kl/k2", "kl/k3")


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if _is_number(r.get(key)) and _is_number(r.get("step")) and math.isfinite(r[key])]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _interval_series(records: list[dict], key: str) -> tuple[list[int], list[float], list[float]]:
    """(steps, lows, highs) of the `[low, high]` intervals logged as `<key>_ci` (records without one skipped)."""
    pts = []
    for r in records:
        ci = r.get(f"{key}_ci")
        if (
            isinstance(ci, list | tuple)
            and len(ci) == 2
            and all(_is_number(v) and math.isfinite(v) for v in ci)
            and _is_number(r.get("step"))
        ):
            pts.append((r["step"], float(ci[0]), float(ci[1])))
    pts.sort()
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def _band(ax, records: list[dict], key: str, line) -> None:
    """The 95% interval of `key` as a shaded band in the colour of its line, where `<key>_ci` was logged."""
    steps, lows, highs = _interval_series(records, key)
    if steps:
        ax.fill_between(steps, lows, highs, color=line.get_color(), alpha=0.15, lw=0)


def _has(records: list[dict], key: str) -> bool:
    return bool(_series(records, key)[0])


def _keys(records: list[dict], prefix: str, suffix: str = "") -> list[str]:
    return sorted({k for r in records for k in r if k.startswith(prefix) and k.endswith(suffix) and _is_number(r[k])})


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """Write the figure beside its final name, then rename (readers never see half a PNG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _legend(*axes) -> None:
    """One legend for an axis and its twin."""
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:  # on the last (topmost) axis, so a twin's lines are not drawn over it
        axes[-1].legend(handles, labels, fontsize=8)


def _rewards(plt, name: str, train: list[dict], evals: list[dict]):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps, total = _series(train, "reward")
    if steps:
        ax.plot(steps, total, color="black", lw=2, label="total (weighted)")
    for key in _keys(train, "rewards/", "/mean"):
        ax.plot(*_series(train, key), lw=1, label=key.removeprefix("rewards/").removesuffix("/mean"))
    es, er = _series(evals, "eval/reward")
    if es:
        ax.plot(es, er, "o--", color="tab:red", label="held-out (eval)")
    ax.set(xlabel="step", ylabel="reward", title=f"{name}: reward")
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def _kl(plt, name: str, train: list[dict], evals: list[dict]):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {"kl/k1": "tab:blue", "kl/k2": "tab:green", "kl/k3": "tab:purple"}
    drawn = False
    for key in KL_ESTIMATES:
        steps, values = _series(train, key)
        if steps:
            ax.plot(steps, values, lw=1.2, color=colors[key], label=f"{key.removeprefix('kl/')} estimate")
            drawn = True
    steps, values = _series(train, "kl")
    if steps:
        ax.plot(steps, values, "--", lw=1.5, color="black", label="kl (TRL's beta term, k3)")
        drawn = True
    twin = None
    cs, cv = _series(train, "kl/coef")
    if cs:
        twin = ax.twinx()
        twin.plot(cs, cv, ":", lw=1.5, color="tab:orange", label="kl/coef (right axis)")
        twin.set_ylabel("KL coefficient")
        drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no KL logged (kl.diagnostics off and no KL term)", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="step", ylabel="KL (token mean)", title=f"{name}: KL(policy || reference)")
    ax.grid(alpha=0.3)
    _legend(ax, *([twin] if twin is not None else []))
    return fig


def _passk(plt, name: str, train: list[dict], evals: list[dict]):
    keys = sorted(_keys(evals, "eval/pass@"), key=lambda k: int(k.split("@")[1]) if k.split("@")[1].isdigit() else 0)
    if not keys and not _has(evals, "eval/greedy_pass@1"):
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in keys:
        (line,) = ax.plot(*_series(evals, key), "o-", label=key.removeprefix("eval/"))
        _band(ax, evals, key, line)
    # maj@k for k > 1 as dotted lines, without bands (maj@1 is the first sample's verdict: pass@1, noisier)
    majs = sorted(
        (k for k in _keys(evals, "eval/maj@") if k.split("@")[1].isdigit() and int(k.split("@")[1]) > 1),
        key=lambda k: int(k.split("@")[1]),
    )
    for key in majs:
        ax.plot(*_series(evals, key), "^:", label=key.removeprefix("eval/"))
    gs, gv = _series(evals, "eval/greedy_pass@1")
    if gs:
        (line,) = ax.plot(gs, gv, "s--", color="black", label="greedy pass@1")
        _band(ax, evals, "eval/greedy_pass@1", line)
    banded = any(_interval_series(evals, key)[0] for key in [*keys, "eval/greedy_pass@1"])
    title = f"{name}: Pass@K" + (" (bands: 95% intervals over problems)" if banded else "")
    ax.set(xlabel="step", ylabel="fraction of held-out problems", ylim=(-0.02, 1.02), title=title)
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def _entropy(plt, name: str, train: list[dict], evals: list[dict]):
    steps, values = _series(train, "entropy")
    cs, cv = _series(train, "entropy_coef")
    if not steps and not cs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if steps:
        ax.plot(steps, values, color="tab:green", label="entropy (token mean, nats)")
    twin = None
    if cs:
        twin = ax.twinx()
        twin.plot(cs, cv, ":", lw=1.5, color="tab:orange", label="entropy_coef (right axis)")
        twin.set_ylabel("entropy coefficient")
    ax.set(xlabel="step", ylabel="entropy", title=f"{name}: policy entropy")
    ax.grid(alpha=0.3)
    _legend(ax, *([twin] if twin is not None else []))
    return fig


def _length(plt, name: str, train: list[dict], evals: list[dict]):
    steps, mean = _series(train, "completions/mean_length")
    es, ev = _series(evals, "eval/completion_length")
    if not steps and not es:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if steps:
        ax.plot(steps, mean, color="tab:blue", label="mean length (tokens)")
        lo = dict(zip(*_series(train, "completions/min_length"), strict=True))
        hi = dict(zip(*_series(train, "completions/max_length"), strict=True))
        band = [s for s in steps if s in lo and s in hi]
        if band:
            ax.fill_between(band, [lo[s] for s in band], [hi[s] for s in band], color="tab:blue", alpha=0.15, label="min to max")
    if es:
        ax.plot(es, ev, "o--", color="tab:red", label="held-out (eval)")
    twin = None
    cs, cv = _series(train, "completions/clipped_ratio")
    if cs:
        twin = ax.twinx()
        twin.plot(cs, cv, ":", color="tab:gray", label="clipped at max length (right axis)")
        twin.set(ylabel="fraction clipped", ylim=(-0.02, 1.02))
    ax.set(xlabel="step", ylabel="completion length (tokens)", title=f"{name}: completion length")
    ax.grid(alpha=0.3)
    _legend(ax, *([twin] if twin is not None else []))
    return fig


CURRICULUM_RIGHT = ("curriculum/success_rate",)  # a fraction, beside the phase and task parameters
REPLAY_RIGHT = ("replay/buffer_size", "replay/dropped")  # counts, beside the fractions


def _time(plt, name: str, train: list[dict], evals: list[dict]):
    """Seconds per step in each phase (`time/<phase>`), stacked: where the step goes."""
    from training_with_unsloth.timing import PHASES

    keys = [f"time/{p}" for p in (*PHASES, "other") if _has(train, f"time/{p}")]
    if not keys:
        return None
    rows = [r for r in train if _is_number(r.get("time/step")) and _is_number(r.get("step"))]
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    layers = [[float(r[k]) if _is_number(r.get(k)) else 0.0 for r in rows] for k in keys]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.stackplot(steps, layers, labels=[k.removeprefix("time/") for k in keys], alpha=0.85, step="mid")
    ax.set(xlabel="step", ylabel="seconds per step", title=f"{name}: where each step's time goes")
    ax.grid(alpha=0.3)
    _legend(ax)
    return fig


def _curriculum(plt, name: str, train: list[dict], evals: list[dict]):
    """`curriculum/*` (phase, task parameters; success rate on the right) and `replay/*` (fractions; counts on the right)."""
    panels = [(title, keys, right) for title, keys, right in (
        ("curriculum", _keys(train, "curriculum/"), CURRICULUM_RIGHT),
        ("prompt replay", _keys(train, "replay/"), REPLAY_RIGHT),
    ) if keys]  # fmt: skip
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (title, keys, right) in zip(axes[:, 0], panels, strict=True):
        left_keys = [k for k in keys if k not in right]
        right_keys = [k for k in keys if k in right]
        for key in left_keys:
            if key == "curriculum/phase":
                ax.step(*_series(train, key), where="post", lw=2, color="black", label=key)
            else:
                ax.plot(*_series(train, key), label=key)
        if title == "prompt replay" and _has(train, "frac_reward_zero_std"):
            ax.plot(*_series(train, "frac_reward_zero_std"), ":", color="gray", label="frac_reward_zero_std (TRL)")
        twin = None
        if right_keys:
            twin = ax.twinx() if left_keys else ax
            for j, key in enumerate(right_keys):  # colours continue the left axis's cycle
                color = f"C{(len(left_keys) + 1 + j) % 10}"
                twin.plot(*_series(train, key), "--", color=color, label=f"{key} (right axis)" if twin is not ax else key)
        ax.set(ylabel=title, title=f"{name}: {title}")
        ax.grid(alpha=0.3)
        _legend(ax, *([twin] if twin is not None and twin is not ax else []))
    axes[-1, 0].set_xlabel("step")
    return fig


TOPICS: tuple[tuple[str, Callable], ...] = (
    ("rewards", _rewards),
    ("kl", _kl),
    ("passk", _passk),
    ("entropy", _entropy),
    ("length", _length),
    ("curriculum", _curriculum),
    ("time", _time),
)


def smooth_records(train: list[dict], window: int) -> list[dict]:
    """Training records with every numeric series replaced by its centred moving mean over `window` logged steps
    (shorter at the ends); steps, kinds and other values unchanged."""
    if window <= 1:
        return train
    out = [dict(r) for r in train]
    half_lo, half_hi = (window - 1) // 2, window // 2
    for key in {k for r in train for k in r if k != "step" and _is_number(r[k])}:
        idx = [i for i, r in enumerate(train) if _is_number(r.get(key)) and math.isfinite(r[key])]
        values = [float(train[i][key]) for i in idx]
        for j, i in enumerate(idx):
            chunk = values[max(0, j - half_lo) : j + half_hi + 1]
            out[i][key] = sum(chunk) / len(chunk)
    return out


def plot_run(run: RunDir, smooth: int | None = None) -> list[Path]:
    """Redraw `plots/<topic>.png` for every topic with data; returns the files written.

    With `smooth` N, every training series (not the evaluations) is drawn as its moving mean over N logged steps.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = run.read_metrics()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    name = run.path.name
    if smooth and smooth > 1:
        train = smooth_records(train, smooth)
        name = f"{name} (training curves: mean over {smooth} steps)"
    written = []
    for topic, draw in TOPICS:
        fig = draw(plt, name, train, evals)
        if fig is None:
            continue
        try:
            written.append(save_figure(fig, run.plots / f"{topic}.png"))
        finally:
            plt.close(fig)
    return written
