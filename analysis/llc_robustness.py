"""Does the LLC curve survive a change of sampler setting and of probe? The check `llc.py` runs after every curve.

`robustness(ctx, settings, steps)` recomputes the curve twice, one chain each and no MALA measurement: at half the step size
(`llc_alt_lr.csv`) and on the next disjoint draw of held-out prompts with completions sampled anew
(`llc_alt_probe.csv`). It reports Spearman's rank correlation of the checkpoints' LLCs between the
curve and each recomputation: near +1, the ordering of checkpoints (what a researcher reads off the
curve) does not depend on that choice; near 0 or negative, it does, and the curve is not evidence.
The values and the settings go to `llc_robustness.json`, the picture to `llc_robustness.png`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

# Below this rank correlation the console calls the curve's ordering fragile.
FRAGILE_RHO = 0.5


def ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given their average rank."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), dtype=float)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        r[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of paired values (None with fewer than 3 finite pairs or a constant side)."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if len(pairs) < 3:
        return None
    ra, rb = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    if np.std(ra) == 0 or np.std(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def alternatives(settings: Any, eval_rows: int) -> dict[str, Any]:
    """The recomputations: half the step size, and the next probe draw when the eval split holds one."""
    out = {"llc_alt_lr": replace(settings, lr=settings.lr / 2, chains=1, mala_steps=0)}
    if settings.probe != "reference" and (settings.probe_draw + 2) * settings.num_probes <= eval_rows:
        out["llc_alt_probe"] = replace(settings, probe_draw=settings.probe_draw + 1, chains=1, mala_steps=0)
    return out


def _values(table: Any, steps: Sequence[int]) -> list[float]:
    by_step = table.by_step("llc_mean") if table is not None else {}
    return [by_step.get(s, math.nan) for s in steps]


def robustness(ctx: Any, settings: Any, steps: list[int], *, force: bool = False) -> dict[str, Any]:
    """Recompute the curve at the alternative settings, compare ranks, write `llc_robustness.{json,png}`, print a line."""
    from analysis.figures import plot_robustness
    from analysis.llc_statistic import llc_over_run
    from training_with_unsloth.rundir import atomic_write_json

    run = ctx.run
    from analysis.runs import read_table

    alts = alternatives(settings, len(ctx.held_out))
    main = _values(run.table("llc"), steps)
    curves = {"llc": (steps, main)}
    for name, alt in alts.items():
        llc_over_run(ctx, alt, steps, force=force, name=name)
        curves[name] = (steps, _values(read_table(run.analysis / f"{name}.csv"), steps))
    rho = {name: spearman(main, curves[name][1]) for name in alts}
    first_last = abs(main[-1] - main[0]) if len(main) > 1 and all(map(math.isfinite, (main[0], main[-1]))) else math.nan
    probe_gap = None
    if "llc_alt_probe" in curves:
        gaps = [abs(a - b) for a, b in zip(main, curves["llc_alt_probe"][1], strict=True) if math.isfinite(a - b)]
        probe_gap = float(np.mean(gaps)) if gaps else None
    record = {
        "steps": steps,
        "spearman": rho,
        "curves": {k: v[1] for k, v in curves.items()},
        "settings": {k: {"lr": a.lr, "probe_draw": a.probe_draw, "chains": a.chains} for k, a in alts.items()},
        "first_to_last_change": first_last,
        "mean_abs_difference_between_probe_draws": probe_gap,
    }
    run.analysis.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.analysis / "llc_robustness.json", record)
    figure = plot_robustness(run, curves, rho, run.analysis / "llc_robustness.png")
    print(robustness_line(record))
    print(f"wrote {run.analysis / 'llc_robustness.json'} and {figure}")
    return record


def robustness_line(record: dict[str, Any]) -> str:
    """One console line: the rank correlations, and a verdict when any is low."""
    names = {"llc_alt_lr": "half the step size", "llc_alt_probe": "a second probe draw"}
    rho = record["spearman"]
    parts = [f"{names.get(k, k)} {_fmt(v)}" for k, v in rho.items()]
    if "llc_alt_probe" not in rho:
        parts.append("no second probe draw (the eval split holds one draw only)")
    text = f"robustness over {len(record['steps'])} checkpoints, rank correlation (Spearman) with the curve: " + ", ".join(parts)
    fragile = [names.get(k, k) for k, v in rho.items() if v is not None and v < FRAGILE_RHO]
    if fragile:
        text += f"; the ordering of checkpoints changes with {' and '.join(fragile)}: do not read it as a finding"
    elif any(v is None for v in rho.values()):
        text += " (n/a: fewer than 3 checkpoints with finite values)"
    return text


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.2f}"
