"""Sweeps over config keys with Optuna: a sweep file, its study in SQLite, one ordinary run per trial and seed.

A sweep file (`experiment_configs/sweeps/*.yaml`) names a base experiment, a search space over any config
keys, a sampler, the number of trials, the metric and its direction, and the seeds each trial repeats:

    name: quickstart_lr_rank
    base: quickstart                          # a shipped config name or a path (relative to this file)
    set: {trainer.max_steps: 20}              # fixed overrides for every trial
    space:
      trainer.learning_rate: {choices: [5.0e-5, 2.0e-4]}      # or {loguniform: [1e-5, 1e-3]}, {uniform: [a, b]},
      model.lora.r: {choices: [8, 16]}                        # {int: [lo, hi]} (optionally step: n)
    sampler: grid                             # grid (choices only), random or tpe
    trials: 4
    metric: eval/greedy_pass@1                # the last evaluation's value, averaged over the seeds
    direction: max
    seeds: [42, 43]
    pruner: none                              # median or hyperband: stop a trial early on its evaluations

The sweep lives in `<output_dir>/sweeps/<name>/`: `study.db` (the Optuna study), `trials/trial-<n>-seed<s>/`
(each an ordinary run directory), `logs/` (each run's output) and `report.md` with figures. A trial
interrupted by Ctrl-C is continued, in the same run directories (`--resume`), by the next `sweep.py` on
the same file; finished seeds are kept.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from training_with_unsloth.errors import ConfigError, UserError, closest

REPORT_ENV = "GRPO_SWEEP_TRIAL"  # set for a trial's first run: its evaluations are reported to the study
PRUNED_FILE = "pruned.json"  # written in a run directory the pruner stopped
INTERRUPTED = "interrupted"  # trial user attr: stopped by Ctrl-C (continued by the next sweep.py)
SURPLUS = "surplus"  # trial user attr: started when every trial was already finished or running; never trained
CONTINUES = "continues"  # trial user attr: the number of the interrupted trial whose run directories it reuses
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}


KINDS = {"choices": "choices", "uniform": "uniform", "loguniform": "loguniform", "int": "integers"}  # key -> field


class Param(BaseModel):
    """One searched config key: exactly one of `choices`, `uniform`, `loguniform`, `int`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    choices: list[Any] | None = Field(None, description="values to choose from (the only kind grid search takes)")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], uniform")
    loguniform: tuple[float, float] | None = Field(None, description="[low, high], uniform in log")
    integers: tuple[int, int] | None = Field(None, alias="int", description="[low, high], integers, both ends included")
    step: int = Field(1, ge=1, description="spacing of `int` values")

    @model_validator(mode="after")
    def _one_kind(self) -> Param:
        kinds = [k for k, f in KINDS.items() if getattr(self, f) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of choices, uniform, loguniform, int (got {', '.join(kinds) or 'none'})")
        if self.choices is not None and not self.choices:
            raise ValueError("choices is empty")
        for kind in ("uniform", "loguniform", "int"):
            bounds = getattr(self, KINDS[kind])
            if bounds is not None and not bounds[0] < bounds[1]:
                raise ValueError(f"{kind}: low {bounds[0]} must be below high {bounds[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError("loguniform needs a positive low bound")
        return self

    def suggest(self, trial: Any, key: str) -> Any:
        """The value Optuna's `trial` suggests for `key`."""
        if self.choices is not None:
            return trial.suggest_categorical(key, self.choices)
        if self.uniform is not None:
            return trial.suggest_float(key, *self.uniform)
        if self.loguniform is not None:
            return trial.suggest_float(key, *self.loguniform, log=True)
        return trial.suggest_int(key, *self.integers, step=self.step)


class SweepConfig(BaseModel):
    """A sweep file, validated."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="the sweep's folder under <output_dir>/sweeps/")
    base: str = Field(..., description="experiment config: a shipped name or a path relative to the sweep file")
    output_dir: str = Field("runs", description="the sweep lives in <output_dir>/sweeps/<name>")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides applied to every trial")
    space: dict[str, Param] = Field(..., description="config key -> values searched")
    sampler: Literal["grid", "random", "tpe"] = Field("tpe", description="Optuna sampler")
    trials: int | None = Field(None, ge=1, description="trials in all (default: the grid's size; required otherwise)")
    metric: str = Field("eval/greedy_pass@1", description="eval metric of the last evaluation, averaged over seeds")
    direction: str = Field("max", description="max or min")
    seeds: list[int] = Field(default_factory=lambda: [42], min_length=1, description="each trial runs once per seed")
    pruner: Literal["none", "median", "hyperband"] = Field("none", description="stop trials early on their evaluations")
    sampler_seed: int = Field(0, description="seed of the random and tpe samplers")

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction must be max or min, got {self.direction!r}")
        if not self.space:
            raise ValueError("space is empty: name at least one config key to search")
        if self.sampler == "grid":
            wrong = [k for k, p in self.space.items() if p.choices is None]
            if wrong:
                raise ValueError(f"sampler grid takes only `choices`: {', '.join(wrong)} use another kind; use random or tpe")
        elif self.trials is None:
            raise ValueError(f"sampler {self.sampler} needs `trials`: how many to run")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds repeat a value")
        return self

    @property
    def grid_size(self) -> int:
        return math.prod(len(p.choices or []) for p in self.space.values())

    @property
    def total_trials(self) -> int:
        return self.grid_size if self.sampler == "grid" and self.trials is None else int(self.trials or 0)

    @property
    def optuna_direction(self) -> str:
        return DIRECTIONS[self.direction]


class Sweep:
    """A loaded sweep: its file, its folder and the base experiment every trial starts from."""

    def __init__(self, path: str | Path):
        from training_with_unsloth.yaml_reader import read_yaml_file

        self.file = Path(path)
        if not self.file.is_file():
            raise ConfigError(f"sweep file not found: {self.file}")
        raw = read_yaml_file(self.file, what="sweep")
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"{self.file}: expected a mapping (name, base, space, ...)")
        try:
            self.cfg = SweepConfig.model_validate(raw)
        except ValidationError as exc:
            raise _one_line(exc, self.file) from None
        self.base = self._base_path()
        self.dir = (Path(self.cfg.output_dir) / "sweeps" / self.cfg.name).resolve()
        self._check_keys()

    def _base_path(self) -> Path:
        from training_with_unsloth.config_files import resolve_config

        local = (self.file.parent / self.cfg.base).resolve()
        return local if local.is_file() else resolve_config(self.cfg.base).resolve()

    def _check_keys(self) -> None:
        """Every searched and fixed key is a config key (a ConfigError naming the closest one otherwise)."""
        sample = {k: _first_value(p) for k, p in self.cfg.space.items()}
        self.experiment(trial_name="check", seed=self.cfg.seeds[0], params=sample)

    @property
    def trials_dir(self) -> Path:
        return self.dir / "trials"

    @property
    def storage(self) -> str:
        return f"sqlite:///{(self.dir / 'study.db').resolve()}"

    def overrides(self, *, trial_name: str, seed: int, params: dict[str, Any]) -> list[str]:
        """`--set` items of one run: the fixed `set`, the trial's parameters, its seed, name and folder."""
        items = {**self.cfg.set, **params, "seed": seed, "name": trial_name, "output_dir": str(self.trials_dir)}
        return [f"{k}={json.dumps(v)}" for k, v in items.items()]

    def experiment(self, *, trial_name: str, seed: int, params: dict[str, Any]) -> Any:
        """The validated ExperimentConfig of one run."""
        from training_with_unsloth.config import load_config

        return load_config(self.base, self.overrides(trial_name=trial_name, seed=seed, params=params))

    # ------------------------------------------------------------------ the Optuna study

    def sampler(self) -> Any:
        import optuna

        if self.cfg.sampler == "grid":
            return optuna.samplers.GridSampler({k: p.choices for k, p in self.cfg.space.items()}, seed=self.cfg.sampler_seed)
        if self.cfg.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.cfg.sampler_seed)
        return optuna.samplers.TPESampler(seed=self.cfg.sampler_seed)

    def pruner(self) -> Any:
        return make_pruner(self.cfg.pruner)

    def study(self) -> Any:
        """The study in `study.db`, created on first use (several workers may open it at once)."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dir.mkdir(parents=True, exist_ok=True)
        return optuna.create_study(
            study_name=self.cfg.name,
            storage=self.storage,
            sampler=self.sampler(),
            pruner=self.pruner(),
            direction=self.cfg.optuna_direction,
            load_if_exists=True,
        )

    def counted(self, study: Any, *, running: bool = False, besides: int | None = None) -> int:
        """Trials that count toward `trials`: finished ones, except those interrupted (they are continued) and
        surplus ones; with `running`, the running ones too (other than trial number `besides`)."""
        from optuna.trial import TrialState

        done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        n = 0
        for t in study.get_trials(deepcopy=False):
            if t.number == besides or t.user_attrs.get(INTERRUPTED) or t.user_attrs.get(SURPLUS):
                continue
            n += t.state in done or (running and t.state == TrialState.RUNNING)
        return n

    def continue_interrupted(self, study: Any) -> list[int]:
        """Queue a continuation of every interrupted trial not yet continued; returns their numbers."""
        with _locked(self.dir / ".continue.lock"):
            trials = study.get_trials(deepcopy=False)
            continued = {t.user_attrs.get(CONTINUES) for t in trials}
            todo = [t for t in trials if t.user_attrs.get(INTERRUPTED) and root(t) not in continued]
            for t in todo:
                study.enqueue_trial(t.params, user_attrs={CONTINUES: root(t)}, skip_if_exists=False)
            return [root(t) for t in todo]

    # ------------------------------------------------------------------ one trial

    def run_name(self, number: int, seed: int) -> str:
        return f"trial-{number:03d}-seed{seed}"

    def objective(self, trial: Any, *, log: Any = print) -> float:
        """Train the trial's parameters once per seed (a subprocess per run); the mean of the metric over seeds."""
        import optuna

        if self.counted(trial.study, running=True, besides=trial.number) >= self.cfg.total_trials:
            # another worker holds the last trial (grid sampling hands out a running grid point again): end here
            trial.set_user_attr(SURPLUS, True)
            trial.study.stop()
            raise optuna.TrialPruned("surplus: every trial is finished or running")
        params = {k: p.suggest(trial, k) for k, p in self.cfg.space.items()}
        number = trial.user_attrs.get(CONTINUES, trial.number)
        values: dict[str, float] = {}
        runs = []
        for i, seed in enumerate(self.cfg.seeds):
            name = self.run_name(number, seed)
            runs.append(str(self.trials_dir / name))
            trial.set_user_attr("runs", runs)
            value, pruned = self.run_one(trial, name, seed, params, report=(i == 0 and self.cfg.pruner != "none"), log=log)
            values[str(seed)] = value
            trial.set_user_attr("seed_values", values)
            if pruned:
                raise optuna.TrialPruned(f"pruned at its evaluation by the {self.cfg.pruner} pruner")
        return sum(values.values()) / len(values)

    def run_one(
        self, trial: Any, name: str, seed: int, params: dict[str, Any], *, report: bool, log: Any = print
    ) -> tuple[float, bool]:
        """One seed of one trial: reuse a finished run, resume an interrupted one, else train it; (metric, pruned)."""
        from training_with_unsloth.rundir import RunDir

        run = RunDir(self.trials_dir / name)
        if _finished(run):
            log(f"[sweep] {name}: finished before, reused")
            return self.metric_of(run), _was_pruned(run)
        argv = [sys.executable, str(Path(__file__).resolve().parent.parent / "experiments" / "run_experiment.py")]
        argv.append(str(self.base))
        for item in self.overrides(trial_name=name, seed=seed, params=params):
            argv += ["--set", item]
        if run.last_trainer_checkpoint() is not None:
            argv.append("--resume")
        elif run.has_run():
            argv.append("--overwrite")  # stopped before its first trainer checkpoint: nothing to continue
        env = dict(os.environ)
        if report:
            env[REPORT_ENV] = json.dumps({
                "storage": self.storage, "study": self.cfg.name, "trial_id": trial._trial_id,
                "metric": self.cfg.metric, "pruner": self.cfg.pruner,
            })  # fmt: skip
        logfile = self.dir / "logs" / f"{name}.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        log(f"[sweep] {name}: training (log {logfile})")
        started = time.time()
        with logfile.open("a") as out:
            out.write("$ " + " ".join(argv) + "\n")
            out.flush()
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
            try:
                status = proc.wait()
            except KeyboardInterrupt:
                trial.set_user_attr(INTERRUPTED, True)
                _stop(proc)
                raise
        if status == 130:  # the run itself was interrupted (its own Ctrl-C)
            trial.set_user_attr(INTERRUPTED, True)
            raise KeyboardInterrupt
        if status != 0:
            raise RuntimeError(f"{name}: run_experiment.py exited with status {status}; see {logfile}")
        value = self.metric_of(run)
        log(f"[sweep] {name}: {self.cfg.metric} = {value:.4g} ({time.time() - started:.0f} s)")
        return value, _was_pruned(run)

    def metric_of(self, run: Any) -> float:
        """The sweep's metric in the run's last evaluation (a UserError listing the metrics when it is absent)."""
        evals = [r for r in run.read_metrics() if r.get("kind") == "eval"]
        if not evals:
            raise UserError(f"{run.path}: no evaluation in metrics.jsonl: the sweep's metric needs eval enabled")
        last = evals[-1]
        if self.cfg.metric not in last:
            near = closest(self.cfg.metric, [k for k in last if k.startswith("eval/")])
            hint = f"did you mean '{near}'? " if near else ""
            raise UserError(f"sweep metric '{self.cfg.metric}' is not in {run.path}'s evaluation: {hint}")
        return float(last[self.cfg.metric])


def make_pruner(name: str) -> Any:
    """Optuna's pruner of that name (`none`: never prune), sized for sweeps of a few trials.

    `median` prunes from the third trial on (Optuna's default waits for five) and never on the first
    report: the step-0 evaluation is the base model's, the same for every trial.
    """
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def root(trial: Any) -> int:
    """The number of the trial whose run directories `trial` uses (itself, or the interrupted one it continues)."""
    return int(trial.user_attrs.get(CONTINUES, trial.number))


def _first_value(p: Param) -> Any:
    if p.choices is not None:
        return p.choices[0]
    if p.integers is not None:
        return p.integers[0]
    return (p.uniform or p.loguniform)[0]


def _finished(run: Any) -> bool:
    """Whether a run trained to its end (its summary line is written once, after the last step)."""
    return run.metrics.is_file() and any(r.get("kind") == "summary" for r in run.read_metrics())


def _was_pruned(run: Any) -> bool:
    return (run.path / PRUNED_FILE).is_file()


def _stop(proc: subprocess.Popen) -> None:
    """Let an interrupted run finish writing (it got the same Ctrl-C); SIGINT it if it was not in our group."""
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
        proc.kill()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _one_line(exc: ValidationError, file: Path) -> ConfigError:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    if err["type"] == "extra_forbidden":
        valid = sorted(SweepConfig.model_fields) if len(loc) == 1 else [*KINDS, "step"]
        near = closest(loc[-1], valid)
        hint = f"did you mean '{near}'? " if near else ""
        return ConfigError(f"{file}: unknown key '{'.'.join(loc)}': {hint}valid keys: {', '.join(valid)}")
    where = ".".join(loc) or "sweep"
    return ConfigError(f"{file}: {where}: {err['msg'].removeprefix('Value error, ')}")


# ---------------------------------------------------------------------- running and reporting a sweep


def optimize(sweep: Sweep, *, log: Any = print) -> Any:
    """This worker's share of the sweep: continue interrupted trials, then run trials until `trials` are done.

    Several workers (processes or SLURM jobs) may run this on the same sweep at once: they share `study.db`,
    and a worker that starts a trial when every trial is already finished or running ends it untrained
    (marked surplus) and stops.
    """
    study = sweep.study()
    for number in sweep.continue_interrupted(study):
        log(f"[sweep] trial {number} was interrupted: continuing it in its own run directories")
    total = sweep.cfg.total_trials

    def stop_when_done(study: Any, trial: Any) -> None:
        if sweep.counted(study) >= total:
            study.stop()

    remaining = total - sweep.counted(study)
    if remaining <= 0:
        log(f"[sweep] all {total} trials are done")
        return study
    study.optimize(lambda t: sweep.objective(t, log=log), n_trials=remaining, callbacks=[stop_when_done], catch=(RuntimeError,))
    return study


def trial_rows(sweep: Sweep, study: Any) -> list[dict[str, Any]]:
    """One row per trial (an interrupted trial and its continuation are one row, under the first number)."""
    from training_with_unsloth.intervals import t_interval

    rows: dict[int, dict[str, Any]] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        number = root(t)
        if t.user_attrs.get(SURPLUS) or (t.user_attrs.get(INTERRUPTED) and number in rows):
            continue
        values = {int(k): float(v) for k, v in t.user_attrs.get("seed_values", {}).items()}
        finite = [v for v in values.values() if math.isfinite(v)]
        ci = t_interval(finite) if len(finite) >= 2 else (math.nan, math.nan)
        state = "interrupted" if t.user_attrs.get(INTERRUPTED) else t.state.name.lower()
        rows[number] = {
            "trial": number,
            "state": state,
            "params": dict(t.params),
            "value": t.value if t.value is not None else (sum(finite) / len(finite) if finite else math.nan),
            "ci": ci,
            "seed_values": values,
            "runs": t.user_attrs.get("runs", []),
            "continued": number != t.number,
        }
    return list(rows.values())


def best_row(sweep: Sweep, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r["state"] == "complete" and math.isfinite(r["value"])]
    if not done:
        return None
    sign = 1 if sweep.cfg.optuna_direction == "maximize" else -1
    return max(done, key=lambda r: (sign * r["value"], -r["trial"]))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def write_report(sweep: Sweep, study: Any | None = None) -> Path:
    """`<sweep dir>/report.md`: the trials table (parameters, metric with its 95% interval across seeds,
    per-seed values, state), the best trial, and figures of the metric against each parameter and over trials."""
    study = study if study is not None else sweep.study()
    rows = trial_rows(sweep, study)
    cfg = sweep.cfg
    keys = list(cfg.space)
    out = sweep.dir / "report.md"
    figures = _report_figures(sweep, rows)
    lines = [
        f"# Sweep `{cfg.name}`",
        "",
        f"Base config `{sweep.base}`; {cfg.sampler} sampler; {sum(r['state'] == 'complete' for r in rows)} of "
        f"{cfg.total_trials} trials complete; "
        f"seeds {', '.join(map(str, cfg.seeds))}; metric `{cfg.metric}` ({cfg.direction}) from each run's last "
        "evaluation, averaged over the seeds, with a 95% t interval across seeds.",
        "",
        "| trial | " + " | ".join(f"`{k}`" for k in keys) + f" | {cfg.metric} | 95% CI (seeds) | per seed | state |",
        "|---" * (len(keys) + 5) + "|",
    ]
    for r in rows:
        ci = r["ci"]
        ci_text = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if math.isfinite(ci[0]) else "-"
        per = ", ".join(f"{s}: {_fmt(v)}" for s, v in r["seed_values"].items()) or "-"
        state = r["state"] + (" (continued after an interrupt)" if r["continued"] else "")
        params = " | ".join(_fmt(r["params"].get(k, "")) for k in keys)
        lines.append(f"| {r['trial']} | {params} | {_fmt(r['value'])} | {ci_text} | {per} | {state} |")
    best = best_row(sweep, rows)
    lines += ["", "## Best trial", ""]
    if best is None:
        lines.append("No trial has completed yet.")
    else:
        settings = ", ".join(f"`{k}` = {_fmt(v)}" for k, v in best["params"].items())
        lines.append(f"Trial {best['trial']}: {settings}; {cfg.metric} = {_fmt(best['value'])}.")
        lines.append("Runs: " + ", ".join(f"`{p}`" for p in best["runs"]))
        overlapping = [
            r["trial"] for r in rows
            if r is not best and r["state"] == "complete" and math.isfinite(r["ci"][0]) and math.isfinite(best["ci"][0])
            and r["ci"][1] >= best["ci"][0] and r["ci"][0] <= best["ci"][1]
        ]  # fmt: skip
        if overlapping:
            lines.append(
                f"Its interval overlaps those of trial(s) {', '.join(map(str, overlapping))}: "
                "more seeds are needed to tell them apart."
            )
    lines += ["", "## Figures", ""] + [f"![{name}]({path.relative_to(sweep.dir)})" for name, path in figures]
    out.write_text("\n".join(lines) + "\n")
    return out


def _report_figures(sweep: Sweep, rows: list[dict[str, Any]]) -> list[tuple[str, Path]]:
    """`report/metric_vs_<key>.png` for each searched key and `report/history.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = sweep.dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sweep.cfg
    done = [r for r in rows if math.isfinite(r["value"])]
    figures = []
    for key, param in cfg.space.items():
        fig, ax = plt.subplots(figsize=(5, 3.4))
        categorical = param.choices is not None and not all(isinstance(c, int | float) for c in param.choices)
        positions = {c: i for i, c in enumerate(param.choices or [])}
        for r in done:
            x = r["params"].get(key)
            x = positions.get(x, x) if categorical else x
            seeds = list(r["seed_values"].values())
            ax.scatter([x] * len(seeds), seeds, color="0.6", s=12, zorder=1)
            if math.isfinite(r["ci"][0]):
                ax.errorbar(x, r["value"], yerr=[[r["value"] - r["ci"][0]], [r["ci"][1] - r["value"]]], fmt="o",
                            color="C0", capsize=3, zorder=2)  # fmt: skip
            else:
                ax.scatter([x], [r["value"]], color="C0", zorder=2)
        if categorical:
            ax.set_xticks(range(len(positions)), [str(c) for c in positions])
        elif param.loguniform is not None or (param.choices and all(isinstance(c, float) for c in param.choices)):
            values = [r["params"].get(key) for r in done if isinstance(r["params"].get(key), int | float)]
            if values and min(values) > 0 and max(values) / min(values) > 10:
                ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(cfg.metric)
        ax.set_title("mean over seeds with 95% interval (grey: each seed)", fontsize=8)
        fig.tight_layout()
        path = folder / f"metric_vs_{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        figures.append((f"{cfg.metric} against {key}", path))
    fig, ax = plt.subplots(figsize=(5, 3.4))
    xs = [r["trial"] for r in done]
    ax.plot(xs, [r["value"] for r in done], "o", color="C0", label="trial")
    best, sign = [], 1 if cfg.optuna_direction == "maximize" else -1
    for r in done:
        best.append(r["value"] if not best or sign * r["value"] > sign * best[-1] else best[-1])
    ax.step(xs, best, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(cfg.metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "history.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    figures.append(("optimisation history", path))
    return figures


class SweepWorker:
    """One sweep worker as a submitit job (`sweep.py --slurm`); requeued after preemption, continuing the sweep."""

    def __init__(self, sweep_file: str):
        self.sweep_file = sweep_file

    def __call__(self, index: int) -> None:
        optimize(Sweep(self.sweep_file))

    def checkpoint(self, index: int) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SweepWorker(self.sweep_file), index)
