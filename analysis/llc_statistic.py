"""The LLC as a per-checkpoint statistic: `LLCStatistic` (all LoRA weights, or per component, on one probe)
and `llc_over_run`, which runs it over a run's checkpoints through `per_checkpoint.for_each_checkpoint`
and draws the trace figure. `llc.py` is its command line; `llc_robustness.py` reruns it at other settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.llc_estimator import Settings, estimate, health, lora_groups, settings_record


class LLCStatistic:
    """The LLC of each checkpoint on one probe (a `per_checkpoint.Statistic`): all LoRA weights, or per component."""

    needs_model = True

    def __init__(self, settings: Settings, name: str = "llc", grouping: str | None = None):
        self.name, self.grouping, self.llc_settings = name, grouping, settings
        self._probes: Any = None

    def probe(self, ctx: Any, step: int | None = None) -> Any:
        """The probe: built once for the run (`rollouts`, `reference`), or per checkpoint (`self`)."""
        from analysis.run_probe import ProbeSource

        if self._probes is None:
            self._probes = ProbeSource(ctx, self.llc_settings)
        return self._probes.at(step)

    def settings(self, ctx: Any) -> dict[str, Any]:
        from analysis.run_probe import probe_hash

        fixed = "per checkpoint" if self.llc_settings.probe == "self" else probe_hash(self.probe(ctx))
        return {**settings_record(self.llc_settings), "grouping": self.grouping, "probe_hash": fixed}

    def measure(self, ctx: Any, step: int) -> dict[str, Any]:
        from analysis.run_probe import probe_hash
        from training_with_unsloth.rundir import atomic_write_json

        probe = self.probe(ctx, step)
        groups = lora_groups(ctx.model, self.grouping)
        ests = {g: estimate(ctx.model, probe, masks, self.llc_settings, ctx.device) for g, masks in groups.items()}
        row = row_for(ests, self.llc_settings)
        row["probe_hash"] = probe_hash(probe)
        atomic_write_json(
            trace_path(ctx.run, self.name, step),
            {"step": step, "healthy": row["healthy"], "notes": row["notes"], "estimates": ests},
        )
        return row

    def describe(self, row: dict[str, Any]) -> str:
        if "llc_mean" in row:
            text = f"llc {row['llc_mean']:.4g} +- {row['llc_std']:.3g}"
        else:
            text = ", ".join(f"{k[9:-1]} {v:.3g}" for k, v in row.items() if k.startswith("llc_mean["))
        return text + ("" if row["healthy"] else f"  UNHEALTHY: {row['notes']}")


def trace_path(run: Any, name: str, step: int) -> Path:
    """Where a checkpoint's traces go: `traces/step-<step>.json` for `llc`, `traces/<name>-step-<step>.json` else."""
    return run.analysis / "traces" / (f"step-{step}.json" if name == "llc" else f"{name}-step-{step}.json")


def row_for(ests: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """One table row: the `all` estimate (mean, std, per chain, init loss) or one column pair per group; health."""
    healthy_all, notes = True, []
    for group, est in ests.items():
        ok, why = health(est, settings)
        healthy_all &= ok
        if why:
            notes.append(why if group == "all" else f"[{group}] {why}")
    row: dict[str, Any] = {}
    if "all" in ests:
        main = ests["all"]
        row.update({"llc_mean": main["llc_mean"], "llc_std": main["llc_std"]})
        row.update({f"llc_chain_{i}": v for i, v in enumerate(main["per_chain"])})
        row["init_loss"] = main["init_loss"]
    else:
        for group, est in ests.items():
            row[f"llc_mean[{group}]"] = est["llc_mean"]
            row[f"llc_std[{group}]"] = est["llc_std"]
    row["healthy"] = healthy_all
    row["notes"] = "; ".join(notes)
    return row


def llc_over_run(ctx: Any, settings: Settings, steps: list[int], *, force: bool, name: str = "llc") -> list[dict[str, Any]]:
    """The LLC at each of `steps` (those not yet in `<name>.csv`), and the trace figure for the main table."""
    from analysis.figures import plot_traces
    from analysis.per_checkpoint import for_each_checkpoint

    stat = LLCStatistic(settings, name=name)
    s = settings
    print(
        f"LLC over checkpoints {steps}: probe '{s.probe}' ({s.num_probes} prompts, draw {s.probe_draw}"
        + (f", completions from checkpoints {list(s.probe_from)}" if s.probe == "rollouts" and s.probe_from else "")
        + f"), sampler {s.sampler}, lr {s.lr:g}, n_beta {s.n_beta:.3g}, localization {s.localization:g}, "
        f"{s.chains} chain(s) x {s.burn_in}+{s.draws} steps",
        flush=True,
    )
    rows = for_each_checkpoint(ctx.run, stat, steps, force=force, context=ctx, desc=name)
    if name == "llc":
        done = [int(r["step"]) for r in rows if trace_path(ctx.run, name, int(r["step"])).is_file()]
        if done:
            plot_traces(ctx.run, done, settings, ctx.run.analysis / "llc_traces.png")
    return rows
