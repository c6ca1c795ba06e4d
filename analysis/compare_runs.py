"""Several runs on one step axis: reward, pass@k (95% intervals), KL, entropy, completion length and the LLC (when
`analysis/llc.py` has run on them), a table of final and best metrics, and a `report.md` with both, ready to paste
into a write-up.

    uv run analysis/compare_runs.py runs/quickstart runs/quickstart-seed7 --out runs/comparisons/qs
    uv run analysis/compare_runs.py runs/qs-s1 runs/qs-s2 runs/lr-s1 runs/lr-s2 --group-by-config

With `--group-by-config`, runs whose configs differ only in `seed` and `name` form one group, drawn and tabled as the
mean over its runs with a 95% t-interval across seeds (each run's own interval over problems is not added in).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training_with_unsloth.cli import command_name, run_main

# (file stem, panel title, metric keys, kind of record, y label)
PANELS = (
    ("reward", "reward (training batches)", ("reward",), "train", "mean reward"),
    ("passk", "held-out pass@k", None, "eval", "fraction of problems"),
    ("kl", "KL(policy || reference)", ("kl/k3", "kl"), "train", "KL (token mean)"),
    ("entropy", "policy entropy", ("entropy",), "train", "nats per token"),
    ("length", "completion length", ("completions/mean_length",), "train", "tokens"),
    ("llc", "LLC (analysis/llc.csv)", ("llc_mean",), "llc", "LLC"),
)
IGNORED_FOR_GROUPS = ("name", "seed")


@dataclass
class Group:
    label: str
    runs: list[Any] = field(default_factory=list)  # analysis.runs.Run


def read_run(path: str | Path) -> Any:
    """A trained run (config.yaml and metrics.jsonl), read through `analysis.runs`."""
    from analysis.runs import open_run

    return open_run(path, metrics=True)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(runs: list[Any]) -> dict[str, list[Any]]:
    """The config keys whose values differ between runs (output_dir left out), with each run's value."""
    flats = [_flat(r.config_dict) for r in runs]
    keys = sorted({k for f in flats for k in f} - {"output_dir"})
    return {k: [f.get(k) for f in flats] for k in keys if len({repr(f.get(k)) for f in flats}) > 1}


def group_runs(runs: list[Any], by_config: bool) -> list[Group]:
    """One group per run, or (by_config) one per config once `seed` and `name` are set aside."""
    if not by_config:
        return [Group(r.name, [r]) for r in runs]
    groups: dict[str, Group] = {}
    for r in runs:
        key = repr(sorted((k, repr(v)) for k, v in _flat(r.config_dict).items() if k not in (*IGNORED_FOR_GROUPS, "output_dir")))
        groups.setdefault(key, Group("")).runs.append(r)
    out = list(groups.values())
    for g in out:
        names = [r.name for r in g.runs]
        prefix = _common_prefix(names).rstrip("-_.") or names[0]
        g.label = f"{prefix} (n={len(names)})" if len(names) > 1 else names[0]
    return out


def _common_prefix(names: list[str]) -> str:
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:i]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def series(records: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {int(r["step"]): float(r[key]) for r in records if _is_number(r.get(key)) and _is_number(r.get("step"))}


def ci_series(records: list[dict[str, Any]], key: str) -> dict[int, tuple[float, float]]:
    out = {}
    for r in records:
        ci = r.get(f"{key}_ci")
        if isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci) and _is_number(r.get("step")):
            out[int(r["step"])] = (float(ci[0]), float(ci[1]))
    return out


def group_series(g: Group, key: str, kind: str) -> tuple[list[int], list[float], list[float] | None, list[float] | None]:
    """(steps, values, lows, highs): one run's values and its own intervals, or a group's mean with a t-interval
    across its runs at the steps every run logged."""
    from training_with_unsloth.intervals import t_interval

    per_run = [_run_series(r, key, kind) for r in g.runs]
    if len(g.runs) == 1:
        s = per_run[0]
        steps = sorted(s)
        cis = ci_series(g.runs[0].evals, key) if kind == "eval" else {}
        if cis:
            lows = [cis[t][0] if t in cis else math.nan for t in steps]
            return steps, [s[t] for t in steps], lows, [cis[t][1] if t in cis else math.nan for t in steps]
        return steps, [s[t] for t in steps], None, None
    steps = sorted(set.intersection(*(set(s) for s in per_run))) if per_run else []
    values, lows, highs = [], [], []
    for t in steps:
        xs = [s[t] for s in per_run]
        values.append(sum(xs) / len(xs))
        lo, hi = t_interval(xs)
        lows.append(lo)
        highs.append(hi)
    return steps, values, lows, highs


def _run_series(run: Any, key: str, kind: str) -> dict[int, float]:
    """One run's `key`: a train or eval metric, or (kind `llc`) a column of its analysis/llc.csv."""
    if kind != "llc":
        return series(run.train if kind == "train" else run.evals, key)
    table = run.table("llc")
    return table.by_step(key) if table is not None else {}


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1:
        return values
    lo, hi = (window - 1) // 2, window // 2
    return [sum(c) / len(c) for j in range(len(values)) if (c := values[max(0, j - lo) : j + hi + 1])]


def passk_keys(groups: list[Group]) -> list[str]:
    keys = {k for g in groups for r in g.runs for e in r.evals for k in e if k.startswith("eval/") and _is_number(e.get(k))}
    ordered = ["eval/greedy_pass@1"] if "eval/greedy_pass@1" in keys else []
    ks = sorted((k for k in keys if k.startswith("eval/pass@") and k.split("@")[1].isdigit()), key=lambda k: int(k.split("@")[1]))
    return ordered + ks


def draw(groups: list[Group], out: Path, smooth: int) -> list[Path]:
    """One figure per panel (reward, pass@k, KL, entropy, length) and `overview.png` with all of them."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from training_with_unsloth.plots import save_figure

    written = []
    overview = Figure(figsize=(15, 8.5), layout="constrained")
    axes = overview.subplots(2, 3).ravel()
    colors = {g.label: f"C{i % 10}" for i, g in enumerate(groups)}
    for n, (stem, title, keys, kind, ylabel) in enumerate(PANELS):
        if kind == "llc" and not any(_run_series(r, keys[0], kind) for g in groups for r in g.runs):
            axes[n].set_axis_off()  # no run has LLCs yet: no panel, no file
            continue
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        single = fig.add_subplot()
        drawn = False
        for ax in (single, axes[n]):
            for g in groups:
                color = colors[g.label]
                if kind == "eval":
                    for key, style in zip(passk_keys(groups), ("s-", "o--", "^:", "d-."), strict=False):
                        steps, vals, lows, highs = group_series(g, key, kind)
                        if not steps:
                            continue
                        ax.plot(steps, vals, style, color=color, ms=4, label=f"{g.label}: {key.removeprefix('eval/')}")
                        if lows is not None:
                            ax.fill_between(steps, lows, highs, color=color, alpha=0.10, lw=0)
                        drawn = True
                    continue
                key = next((k for k in keys if group_series(g, k, kind)[0]), None)
                if key is None:
                    continue
                steps, vals, lows, highs = group_series(g, key, kind)
                if smooth > 1:
                    ax.plot(steps, vals, color=color, lw=0.7, alpha=0.35)
                    ax.plot(steps, _smooth(vals, smooth), color=color, lw=2, label=f"{g.label} ({key})")
                else:
                    ax.plot(steps, vals, color=color, lw=1.5, label=f"{g.label} ({key})")
                if lows is not None and len(g.runs) > 1:
                    ax.fill_between(steps, lows, highs, color=color, alpha=0.12, lw=0)
                drawn = True
            ax.set(xlabel="step", ylabel=ylabel, title=title)
            ax.grid(alpha=0.3)
            if drawn:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", transform=ax.transAxes)
        if kind == "eval":
            for ax in (single, axes[n]):
                ax.set_ylim(-0.02, 1.02)
        written.append(save_figure(fig, out / f"{stem}.png", dpi=150))
    for ax in axes[len(PANELS) :]:
        ax.set_axis_off()
    note = (
        "bands: 95% intervals over problems" if all(len(g.runs) == 1 for g in groups) else "bands: 95% t-intervals across seeds"
    )
    overview.suptitle(
        f"{' vs '.join(g.label for g in groups)}  ({note}; thin: raw, thick: mean over {smooth} steps)", fontsize=11
    )
    written.append(save_figure(overview, out / "overview.png", dpi=150))
    return written


def _cell(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None or not _is_number(value):
        return "-"
    if ci is not None and all(_is_number(c) for c in ci):
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


def table(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Final and best metrics per run or group: final pass@k (with intervals), the best greedy pass@1 and its step,
    mean reward over the last 10% of steps, final KL, entropy, length, and wall time."""
    keys = passk_keys(groups)
    best_key = keys[0] if keys else None
    head = ["run", "runs", "steps", *(f"final {k.removeprefix('eval/')}" for k in keys)]
    head += [f"best {best_key.removeprefix('eval/')} (step)"] if best_key else []
    head += ["reward (last 10%)", "KL (final)", "entropy (final)", "length (final)", "wall time"]
    rows = []
    for g in groups:
        row = [g.label, str(len(g.runs))]
        steps = [max((r["step"] for r in run.train), default=0) for run in g.runs]
        row.append(str(max(steps)))
        for key in keys:
            s, v, lo, hi = group_series(g, key, "eval")
            row.append(_cell(v[-1], (lo[-1], hi[-1]) if lo else None) if s else "-")
        if best_key:
            s, v, lo, hi = group_series(g, best_key, "eval")
            if s:
                i = max(range(len(v)), key=lambda j: (v[j], -s[j]))
                row.append(f"{_cell(v[i], (lo[i], hi[i]) if lo else None)} ({s[i]})")
            else:
                row.append("-")
        for key in ("reward",):
            finals = []
            for run in g.runs:
                vals = [float(r[key]) for r in run.train if _is_number(r.get(key))]
                tail = vals[-max(1, len(vals) // 10) :]
                if tail:
                    finals.append(sum(tail) / len(tail))
            row.append(_mean_cell(finals))
        for keys_ in (("kl/k3", "kl"), ("entropy",), ("completions/mean_length",)):
            finals = []
            for run in g.runs:
                key = next((k for k in keys_ if series(run.train, k)), None)
                if key:
                    s = series(run.train, key)
                    finals.append(s[max(s)])
            row.append(_mean_cell(finals))
        walls = [
            run.summary.get("train_runtime") for run in g.runs if run.summary and _is_number(run.summary.get("train_runtime"))
        ]
        row.append(f"{sum(walls) / len(walls) / 60:.1f} min" if walls else "-")
        rows.append(row)
    return head, rows


def _mean_cell(values: list[float]) -> str:
    from training_with_unsloth.intervals import t_interval

    if not values:
        return "-"
    mean = sum(values) / len(values)
    return _cell(mean, t_interval(values) if len(values) > 1 else None)


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def report(runs: list[Any], groups: list[Group], figures: list[Path], out: Path, command: str) -> Path:
    from training_with_unsloth.rundir import atomic_write_text

    head, rows = table(groups)
    diffs = config_differences(runs)
    lines = [f"# {' vs '.join(g.label for g in groups)}", ""]
    lines.append("Runs: " + ", ".join(f"`{r.path}`" for r in runs) + ".")
    lines.append("")
    if diffs:
        lines += ["Settings that differ:", "", "| key | " + " | ".join(r.name for r in runs) + " |",
                  "| --- | " + " | ".join("---" for _ in runs) + " |"]  # fmt: skip
        lines += [f"| `{k}` | " + " | ".join(f"`{v}`" for v in vals) + " |" for k, vals in diffs.items()]
        lines.append("")
    else:
        lines += ["The runs' configs are identical (apart from their output folders).", ""]
    grouped = any(len(g.runs) > 1 for g in groups)
    how = (
        "Groups: runs whose configs differ only in seed and name; values are means over a group's runs with 95% "
        "t-intervals across them."
        if grouped
        else "Intervals: 95%, bootstrap over held-out problems (Wilson for greedy pass@1), as each run logged them."
    )
    lines += ["## Final and best metrics", "", how, "", markdown(head, rows), "## Figures", ""]
    for fig in figures:
        lines.append(f"![{fig.stem}]({fig.name})")
        lines.append("")
    lines += ["Made with:", "", "```bash", command, "```", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("analysis/compare_runs.py"),
        description="Overlay several runs (reward, pass@k with 95%% intervals, KL, entropy, completion length), "
        "tabulate final and best metrics, and write report.md with the figures.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (runs/<name>)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: <first run's parent>/comparisons/<names>)")
    p.add_argument("--group-by-config", action="store_true", help="runs differing only in seed form one group: mean ± interval")
    p.add_argument(
        "--smooth", type=int, default=5, metavar="N", help="moving mean over N logged steps for training curves (1: raw)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _run(args, argv if argv is not None else sys.argv[1:]))


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    import shlex

    from training_with_unsloth.errors import UserError

    if len(set(map(str, args.runs))) < len(args.runs):
        raise UserError("a run is named twice: list each run directory once")
    if args.smooth < 1:
        raise UserError("--smooth must be at least 1")
    runs = [read_run(p) for p in args.runs]
    groups = group_runs(runs, args.group_by_config)
    out = Path(args.out) if args.out else runs[0].path.parent / "comparisons" / "-vs-".join(r.name for r in runs)[:100]
    figures = draw(groups, out, args.smooth)
    command = " ".join(["uv run analysis/compare_runs.py", *map(shlex.quote, argv)])
    figures = [f for f in figures if f.name == "overview.png"] + [f for f in figures if f.name != "overview.png"]
    path = report(runs, groups, figures, out, command)
    head, rows = table(groups)
    print(markdown(head, rows))
    print(f"written: {path} and {len(figures)} figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
