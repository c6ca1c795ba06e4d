"""Which SGLD step size and inverse temperature to use: devinterp's calibration, on a run's checkpoints.

`calibrate(ctx, base, lrs, n_betas)` estimates the LLC at each lr x n_beta on the first and last
checkpoint (or, with `first_healthy`, scans the lrs from the largest down and stops at the first
healthy estimate), draws the trace grid, recommends a setting (`recommend_setting`: the largest lr
healthy on every calibrated checkpoint) and writes `analysis/calibration.{csv,json,png}`.
`choose_settings` decides what an `llc.py` run uses: the command line, the recorded settings, a
matching calibration, or a calibration run now.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

from analysis.llc_estimator import Settings, estimate, health, lora_groups, settings_record
from analysis.per_checkpoint import write_rows
from analysis.run_probe import ProbeSource

LR_GRID = (3e-5, 1e-4, 3e-4, 1e-3)


def calibrate(
    ctx: Any,
    base: Settings,
    lrs: list[float],
    n_betas: list[float],
    *,
    steps: list[int] | None = None,
    first_healthy: bool = False,
) -> dict[str, Any]:
    """Grid of lr x n_beta on `steps` (default the first and last checkpoint); table, trace grid, recommendation.
    With `first_healthy` the lrs are tried in the order given and each checkpoint's scan stops at the first healthy one.

    Steps: estimate every grid point (`calibration_estimates`), draw the trace grid
    (`figures.plot_calibration`), pick a setting (`recommend_setting`), write `calibration.csv` and
    `calibration.json` (`write_calibration`), print the table (`print_calibration`).
    """
    from analysis.figures import plot_calibration

    run = ctx.run
    steps = steps or sorted({run.adapter_steps()[0], run.adapter_steps()[-1]})
    probes = ProbeSource(ctx, base)
    masks = lora_groups(ctx.model, None)["all"]
    print(
        f"calibrating on checkpoints {steps}: lr {lrs} x n_beta {n_betas}, probe '{base.probe}' ({probes.describe()}), "
        f"sampler {base.sampler}, {base.chains} chains x {base.burn_in}+{base.draws} steps",
        flush=True,
    )
    results, traces = calibration_estimates(ctx, probes, masks, base, steps, lrs, n_betas, first_healthy=first_healthy)
    plot_calibration(run, steps, lrs, n_betas, results, traces, run.analysis / "calibration.png")
    rec = recommend_setting(results, base.n_beta)
    write_calibration(run, steps, results, rec, base, traces)
    print_calibration(steps, results, rec)
    return {"results": results, "recommended": rec}


def calibration_estimates(
    ctx: Any,
    probes: ProbeSource,
    masks: dict[str, None],
    base: Settings,
    steps: list[int],
    lrs: list[float],
    n_betas: list[float],
    *,
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
        ctx.swap(step)
        for lr in lrs:
            for nb in n_betas:
                s = replace(base, lr=lr, n_beta=nb)
                est = estimate(ctx.model, probe, masks, s, ctx.device)
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

    write_rows(run.analysis / "calibration.csv", results)
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


def choose_settings(ctx: Any, settings: Settings, args: Any) -> Settings:
    """The settings to run: the command line's lr; else the lr and n_beta recorded in `llc_settings.json`
    when everything else matches; else a calibration's recommendation (run now unless --no-calibrate)."""
    from training_with_unsloth.rundir import read_json_object

    run = ctx.run

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
        rec = calibrate(ctx, settings, lrs, [settings.n_beta], steps=[last], first_healthy=True)["recommended"]
    if rec is None:
        print(
            f"warning: no calibrated setting was healthy on the first and last checkpoint; using lr {settings.lr:g}, "
            f"n_beta {settings.n_beta:.3g}: read the health column before trusting any value"
        )
        return settings
    return replace(settings, lr=rec["lr"], n_beta=rec["n_beta"])


def _calibration_key(settings: Settings) -> dict[str, Any]:
    """The settings a calibration holds fixed (everything but lr and n_beta), recorded with it."""
    return {k: v for k, v in settings_record(settings).items() if k not in ("lr", "n_beta")}
