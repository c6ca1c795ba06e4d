"""Figures of one run, written to `<run>/analysis/` at 200 dpi (the apart-physics figures, done right).

- `combined.png`: one shared step axis, stacked panels: LLC (mean with llc_std error bars from
  `analysis/llc.csv`, unhealthy estimates hollow and marked; the panel is left out without llc.csv),
  reward components (total `reward` and each `rewards/<fn>/mean`, raw thin and smoothed thick), and
  pass@k with greedy pass@1 from the eval records (their 95% intervals, the `<key>_ci` of each eval
  record, shaded as bands). Transition windows (from `analysis/phases.json`
  when present, else `detect_windows` on the headline series llc_mean, reward, eval/pass@1 and
  eval/greedy_pass@1, as `phases.py --run` does) are shaded on every panel, one colour per series.
- `rewards.png`: every reward component and the total on one axis, raw (thin) and smoothed (thick).
- `accuracy_grid.png`: only when the `eval/passk-*.jsonl` lines carry a `condition`: one small panel
  per condition, accuracy over steps.

Library: `plot_run(run_dir) -> list[Path]`; the figure builders (`build_combined_figure`, ...) return
matplotlib Figures so their panels can be inspected (`panel_titles`). CLI:

    uv run analysis/plot_run.py --run runs/<name>
    uv run grpo-plot --run runs/<name>                  # the same command, as a console script
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.phases import DEFAULT_RUN_COLUMNS, SeriesError, Window, detect_windows, read_phases_json, smooth_series  # noqa: E402
from analysis.runs import Run, Series  # noqa: E402
from training_with_unsloth.cli import command_name, run_main  # noqa: E402
from training_with_unsloth.errors import UserError  # noqa: E402
from training_with_unsloth.plots import save_figure  # noqa: E402
from training_with_unsloth.rundir import RunDir, read_jsonl  # noqa: E402

DPI = 200
LLC_TITLE = "LLC"
REWARD_TITLE = "Reward components"
PASSK_TITLE = "Pass@k (held-out)"
WINDOW_COLORS = ("#f4a261", "#8ecae6", "#b5e48c", "#cdb4db", "#ffd166", "#e5989b", "#a8dadc")


# ---------------------------------------------------------------------------------------- data
@dataclass
class LLCTable:
    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    healthy: np.ndarray  # bool
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # name -> (mean, std)


@dataclass
class RunData:
    name: str
    llc: LLCTable | None
    rewards: dict[str, Series]  # label -> series; "total" first
    passk: dict[str, Series]  # label ("pass@1", ..., "greedy pass@1") -> series
    conditions: dict[str, Series]  # condition -> sample accuracy over steps
    conditions_greedy: dict[str, Series]
    windows: list[Window]


def read_llc(run: Run) -> LLCTable | None:
    """analysis/llc.csv as arrays (None when the file is missing or has no llc_mean column)."""
    table = run.table("llc")
    if table is None or "llc_mean" not in table.header:
        return None
    std = table.column("llc_std") if "llc_std" in table.header else np.zeros(len(table.rows))
    groups = {}
    for h in table.header:
        m = re.fullmatch(r"llc_mean\[(.+)\]", h)
        if m:
            g = m.group(1)
            gstd = table.column(f"llc_std[{g}]") if f"llc_std[{g}]" in table.header else np.zeros(len(table.rows))
            groups[g] = (table.column(h), gstd)
    return LLCTable(table.steps, table.column("llc_mean"), std, table.flags("healthy"), groups)


def read_conditions(run: Run) -> tuple[dict[str, Series], dict[str, Series]]:
    """Per-condition sample accuracy and greedy accuracy over steps from eval/passk-*.jsonl ({} if no conditions)."""
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    greedy: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    files = []
    for p in run.eval_dir.glob("passk-*.jsonl"):
        m = re.fullmatch(r"passk-(\d+)\.jsonl", p.name)
        if m:
            files.append((int(m.group(1)), p))
    for file_step, p in sorted(files):
        for rec in read_jsonl(p):
            if rec.get("condition") is None:
                continue
            cond = str(rec["condition"])
            step = float(rec.get("step", file_step))
            correct = rec.get("correct")
            if isinstance(correct, list) and correct:
                acc[cond][step].append(float(np.mean([bool(c) for c in correct])))
            if "greedy_correct" in rec and rec["greedy_correct"] is not None:
                greedy[cond][step].append(float(bool(rec["greedy_correct"])))

    def to_series(d: dict[str, dict[float, list[float]]]) -> dict[str, Series]:
        out = {}
        for cond in sorted(d, key=_natural_key):
            steps = sorted(d[cond])
            out[cond] = Series(np.array(steps), np.array([np.mean(d[cond][s]) for s in steps]))
        return out

    return to_series(acc), to_series(greedy)


def _natural_key(text: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def load_run(run_dir: str | Path | RunDir, *, detect: bool = True) -> RunData:
    """Everything the figures need from a run directory."""
    run = Run(run_dir.path if isinstance(run_dir, RunDir) else run_dir)
    rewards: dict[str, Series] = {}
    if s := run.series("reward", "train"):
        rewards["total"] = s
    for key in sorted({k for r in run.train for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        if s := run.series(key, "train"):
            rewards[key.removeprefix("rewards/").removesuffix("/mean")] = s
    passk: dict[str, Series] = {}
    keys = sorted({k for r in run.evals for k in r if re.fullmatch(r"eval/pass@\d+", k)}, key=lambda k: int(k.split("@")[1]))
    for key in keys:
        if s := run.series(key, "eval"):
            passk[key.removeprefix("eval/")] = s
    if s := run.series("eval/greedy_pass@1", "eval"):
        passk["greedy pass@1"] = s
    conditions, conditions_greedy = read_conditions(run)
    data = RunData(run.name, read_llc(run), rewards, passk, conditions, conditions_greedy, [])
    if detect:
        found = read_phases_json(run)
        data.windows = found if found is not None else detect_all(data)
    return data


def plotted_series(data: RunData) -> dict[str, Series]:
    """The series combined.png draws, by the column name phases.py would use."""
    out: dict[str, Series] = {}
    if data.llc is not None:
        out["llc_mean"] = Series(data.llc.steps, data.llc.mean)
    for label, s in data.rewards.items():
        out["reward" if label == "total" else f"rewards/{label}/mean"] = s
    for label, s in data.passk.items():
        out["eval/greedy_pass@1" if label == "greedy pass@1" else f"eval/{label}"] = s
    return out


def detect_all(data: RunData, columns: tuple[str, ...] | None = DEFAULT_RUN_COLUMNS) -> list[Window]:
    """Windows of the headline series (those of `phases.py --run`); columns=None: every plotted series."""
    windows: list[Window] = []
    for col, s in plotted_series(data).items():
        if columns is None or col in columns:
            windows += detect_windows(s.steps, s.values, column=col)
    return windows


# ---------------------------------------------------------------------------------------- drawing
def _window_colors(windows: list[Window]) -> dict[str, str]:
    cols = list(dict.fromkeys(w.column for w in windows))
    return {c: WINDOW_COLORS[i % len(WINDOW_COLORS)] for i, c in enumerate(cols)}


def _shade(ax, windows: list[Window], colors: dict[str, str]) -> list:
    for w in windows:
        lo, hi = (w.start, w.end) if w.end > w.start else (w.start - 0.5, w.end + 0.5)
        ax.axvspan(lo, hi, color=colors[w.column], alpha=0.35, lw=0, zorder=0)
    return [Patch(facecolor=colors[c], alpha=0.35, label=f"window: {c}") for c in colors]


def _draw_llc(ax, llc: LLCTable) -> None:
    ok = llc.healthy & np.isfinite(llc.mean)
    bad = ~llc.healthy & np.isfinite(llc.mean)
    ax.plot(llc.steps[np.isfinite(llc.mean)], llc.mean[np.isfinite(llc.mean)], "-", color="tab:blue", lw=1.2, zorder=2)
    ax.errorbar(
        llc.steps[ok],
        llc.mean[ok],
        yerr=np.nan_to_num(llc.std[ok]),
        fmt="o",
        color="tab:blue",
        ms=4.5,
        capsize=3,
        lw=1,
        zorder=3,
        label="LLC mean ± std",
    )
    if bad.any():
        ax.errorbar(
            llc.steps[bad],
            llc.mean[bad],
            yerr=np.nan_to_num(llc.std[bad]),
            fmt="o",
            mfc="white",
            mec="tab:red",
            ecolor="tab:red",
            ms=6,
            capsize=3,
            lw=1,
            zorder=4,
            label="unhealthy estimate",
        )
        ax.plot(llc.steps[bad], llc.mean[bad], "x", color="tab:red", ms=4, zorder=5)
    if llc.groups:  # per-group LLCs have their own scale: a second y axis
        twin = ax.twinx()
        for i, (g, (gm, gs)) in enumerate(llc.groups.items()):
            fin = np.isfinite(gm)
            color = f"C{(i + 2) % 10}"
            twin.plot(llc.steps[fin], gm[fin], "--", color=color, lw=1, label=f"LLC [{g}] (right axis)")
            twin.fill_between(
                llc.steps[fin], (gm - np.nan_to_num(gs))[fin], (gm + np.nan_to_num(gs))[fin], color=color, alpha=0.12
            )
        twin.set_ylabel("group LLC", fontsize=8)
        twin.tick_params(labelsize=7)
        ax._group_twin = twin  # legend handles are collected from it
    ax.set_ylabel("LLC (λ̂)")


def _draw_rewards(ax, rewards: dict[str, Series], smooth: int | None = None) -> None:
    for i, (label, s) in enumerate(rewards.items()):
        color = "black" if label == "total" else f"C{i % 10}"
        ax.plot(s.steps, s.values, "-", color=color, lw=0.7, alpha=0.35)
        st, sv = smooth_series(s.steps, s.values, smooth)
        ax.plot(
            st, sv, "-", color=color, lw=2.2 if label == "total" else 1.8, label="total reward" if label == "total" else label
        )
    ax.set_ylabel("reward")


def _draw_passk(ax, passk: dict[str, Series]) -> None:
    for i, (label, s) in enumerate(passk.items()):
        color = "black" if label == "greedy pass@1" else f"C{(i + 3) % 10}"
        if label == "greedy pass@1":
            ax.plot(s.steps, s.values, "s--", color=color, ms=4, lw=1.2, label=label)
        else:
            ax.plot(s.steps, s.values, "o-", color=color, ms=4, lw=1.5, label=label)
        if s.low is not None and s.high is not None:  # the 95% interval over problems, as a band
            ax.fill_between(s.steps, s.low, s.high, color=color, alpha=0.12, lw=0, zorder=1)
    ax.set_ylabel("fraction solved")
    ax.set_ylim(-0.03, 1.03)


def build_combined_figure(run_dir: str | Path | RunDir | RunData, smooth: int | None = None) -> Figure:
    """The stacked figure: [LLC] / rewards / pass@k on one step axis, windows shaded on every panel.

    Panels without data are left out; each axis has a title (`panel_titles` lists them).
    """
    data = run_dir if isinstance(run_dir, RunData) else load_run(run_dir)
    panels = []
    if data.llc is not None and np.isfinite(data.llc.mean).any():
        panels.append((LLC_TITLE, lambda ax: _draw_llc(ax, data.llc), 1.2))
    if data.rewards:
        panels.append((REWARD_TITLE, lambda ax: _draw_rewards(ax, data.rewards, smooth), 1.0))
    if data.passk:
        panels.append((PASSK_TITLE, lambda ax: _draw_passk(ax, data.passk), 0.9))
    fig = Figure(figsize=(10, 2.2 + 2.6 * max(len(panels), 1)), layout="constrained")
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no LLC, train or eval records in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("no data")
        ax.set_axis_off()
        fig.suptitle(f"{data.name}", fontsize=13, fontweight="bold")
        return fig
    axes = fig.subplots(len(panels), 1, sharex=True, height_ratios=[p[2] for p in panels], squeeze=False)[:, 0]
    colors = _window_colors(data.windows)
    for k, (ax, (title, draw, _)) in enumerate(zip(axes, panels, strict=True)):
        draw(ax)
        patches = _shade(ax, data.windows, colors)
        ax.set_title(title, loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        h, lab = ax.get_legend_handles_labels()
        if (twin := getattr(ax, "_group_twin", None)) is not None:
            th, tl = twin.get_legend_handles_labels()
            h, lab = h + th, lab + tl
        if k == 0:  # the window colours are explained once, in the top panel's legend
            h, lab = h + patches, lab + [p.get_label() for p in patches]
        ax.legend(h, lab, fontsize=7, loc="center left", bbox_to_anchor=(1.06 if twin is not None else 1.01, 0.5), frameon=False)
    axes[-1].set_xlabel("training step")
    n_win = len(data.windows)
    sub = f"{n_win} transition window{'s' if n_win != 1 else ''} shaded" if n_win else "no transition windows detected"
    fig.suptitle(f"{data.name}: LLC, rewards and pass@k  ({sub})", fontsize=12, fontweight="bold")
    return fig


def build_rewards_figure(run_dir: str | Path | RunDir | RunData, smooth: int | None = None) -> Figure:
    """All reward components and the total on one axis: raw (thin) and smoothed (thick; over `smooth` points)."""
    data = run_dir if isinstance(run_dir, RunData) else load_run(run_dir, detect=False)
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.add_subplot()
    if data.rewards:
        _draw_rewards(ax, data.rewards, smooth)
        handles, labels = ax.get_legend_handles_labels()
        handles += [Line2D([], [], color="grey", lw=0.7, alpha=0.5), Line2D([], [], color="grey", lw=2)]
        labels += ["raw", "smoothed (local linear)"]
        ax.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    else:
        ax.text(0.5, 0.5, "no train records", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
    ax.set_title(f"{data.name}: reward components", loc="left")
    return fig


def build_accuracy_grid(run_dir: str | Path | RunDir | RunData) -> Figure | None:
    """One panel per eval condition: sample accuracy (and greedy accuracy) over steps; None without conditions."""
    data = run_dir if isinstance(run_dir, RunData) else load_run(run_dir, detect=False)
    if not data.conditions and not data.conditions_greedy:
        return None
    conds = list(dict.fromkeys([*data.conditions, *data.conditions_greedy]))
    ncols = min(4, len(conds))
    nrows = math.ceil(len(conds) / ncols)
    fig = Figure(figsize=(2.9 * ncols + 0.6, 2.3 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        if k >= len(conds):
            ax.set_axis_off()
            continue
        c = conds[k]
        if (s := data.conditions.get(c)) is not None:
            ax.plot(s.steps, s.values, "o-", color="tab:blue", ms=3.5, lw=1.4, label="sample accuracy")
        if (g := data.conditions_greedy.get(c)) is not None:
            ax.plot(g.steps, g.values, "s--", color="black", ms=3, lw=1, label="greedy")
        ax.set_title(c, fontsize=9)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        if k % ncols == 0:
            ax.set_ylabel("accuracy")
        if k // ncols == nrows - 1 or k + ncols >= len(conds):
            ax.set_xlabel("step")
            ax.tick_params(labelbottom=True)
    axes.ravel()[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{data.name}: accuracy per condition", fontsize=12, fontweight="bold")
    return fig


def panel_titles(fig: Figure) -> list[str]:
    """The titles of a figure's visible panels, top to bottom (for tests and checks)."""
    return [t for ax in fig.axes if ax.get_visible() and ax.axison and (t := ax.get_title(loc="left") or ax.get_title())]


def plot_run(run_dir: str | Path | RunDir, smooth: int | None = None) -> list[Path]:
    """Write combined.png, rewards.png and (with eval conditions) accuracy_grid.png to <run>/analysis/.

    With `smooth` N, the reward curves are smoothed over N points and the training figures in <run>/plots/ are
    redrawn from metrics.jsonl with every training curve a moving mean over N logged steps.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if not run.path.is_dir():
        raise FileNotFoundError(f"no such run directory: {run.path}")
    data = load_run(run)
    written = [
        save_figure(build_combined_figure(data, smooth), run.analysis / "combined.png", dpi=DPI),
        save_figure(build_rewards_figure(data, smooth), run.analysis / "rewards.png", dpi=DPI),
    ]
    if smooth is not None:
        from training_with_unsloth.plots import plot_run as plot_training

        written += plot_training(run, smooth=smooth)
    grid = build_accuracy_grid(data)
    if grid is not None:
        written.append(save_figure(grid, run.analysis / "accuracy_grid.png", dpi=DPI))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=command_name("analysis/plot_run.py"),
        description="Draw a run's figures (combined LLC/reward/pass@k, rewards, per-condition accuracy) "
        "into <run>/analysis/ at 200 dpi.",
    )
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory (metrics.jsonl, eval/, analysis/llc.csv)")
    p.add_argument(
        "--smooth", type=int, metavar="N",
        help="also redraw every training figure in <run>/plots/ with training curves as moving means over N logged "
        "steps (and smooth the combined figure's rewards over N points)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.smooth is not None and args.smooth < 1:
        p.error("--smooth must be at least 1")
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    """Draw the figures and print each path written."""
    try:
        written = plot_run(args.run, smooth=args.smooth)
    except (OSError, SeriesError, ValueError) as e:
        raise UserError(str(e)) from None
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
