"""Pass@K after training: any checkpoint of a run, a base model, or several side by side on the same problems.

The evaluation settings (task, prompt formats, problems, samples, k, temperature) come from one config:
the run's own, `--config`, or the first run of a comparison, with `--set` overrides on top. Each model is
evaluated by `PassKEvaluator` through a `Session` (the run's trainer, built as training builds it), under
the RNG training-time Pass@K used for that step, so a checkpoint evaluated with its run's settings gives
the training-time evaluation exactly. Results go to `<out>/[<label>/]eval/passk-<step>.jsonl` and
`metrics.jsonl`, never into the run's own `eval/`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_with_unsloth.checkpoints import AdapterRef, adapter_folder, is_run_dir, parse_spec, resolve
from training_with_unsloth.config import ExperimentConfig, apply_override, parse_override, validate
from training_with_unsloth.errors import ConfigError, UserError
from training_with_unsloth.rundir import RunDir, atomic_write_text, file_in_the_way, to_json
from training_with_unsloth.yaml_reader import read_yaml_mapping


@dataclass(frozen=True)
class Target:
    """One model to evaluate: a label, the model section it loads, and the adapter (None: the base model alone)."""

    label: str
    model: dict[str, Any]  # the `model:` section (name, backend, dtype, LoRA shape)
    ref: AdapterRef | None
    run: RunDir | None = None

    @property
    def step(self) -> int:
        """The step whose RNG the evaluation uses: the snapshot's training step (0 for a base model)."""
        return self.ref.step if self.ref is not None and self.ref.step is not None else 0


@dataclass
class Result:
    target: Target
    metrics: dict[str, Any]
    folder: RunDir


def read_run_config(run: RunDir) -> dict[str, Any]:
    if not run.config.is_file():
        raise UserError(f"{run.path} is not a run directory (no config.yaml): pass --run runs/<name>")
    return read_yaml_mapping(run.config, what="run's config")


def targets_for_run(run: RunDir, checkpoint: str, label: str | None = None) -> list[Target]:
    """The run's snapshots `checkpoint` names (best, final, all, a step)."""
    model = read_run_config(run).get("model") or {}
    refs = resolve(run, checkpoint)
    name = label or run.path.name
    return [Target(name if len(refs) == 1 else f"{name}@{r.step}", model, r, run) for r in refs]


def parse_target(label: str, text: str, default_model: dict[str, Any]) -> list[Target]:
    """`runs/X[:best|final|all|STEP]` (a run; best by default), a PEFT adapter folder, or a model id / directory /
    `embedded` (the base model alone, with the evaluation config's model settings)."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", label):
        raise UserError(f"--compare label '{label}': use letters, digits, '.', '_' or '-' (e.g. base=embedded)")
    path, which = parse_spec(text)
    if is_run_dir(path):
        return targets_for_run(RunDir(path), which or "best", label)
    if which is not None:
        raise UserError(f"--compare {label}={text}: {path} is not a run directory (no config.yaml)")
    if (Path(path) / "adapter_config.json").is_file():
        ref = adapter_folder(path)
        from training_with_unsloth.checkpoints import owning_run

        run = owning_run(ref.path)
        model = (read_run_config(run).get("model") or {}) if run else {**default_model}
        if run is None:
            saved = _adapter_base(ref.path)
            if saved:
                model["name"] = saved
        return [Target(label, model, ref, run)]
    return [Target(label, {**default_model, "name": text}, None)]


def _adapter_base(folder: Path) -> str | None:
    from training_with_unsloth.checkpoints import adapter_config

    name = adapter_config(folder).get("base_model_name_or_path")
    return name if isinstance(name, str) and name else None


def evaluation_config(
    base: dict[str, Any], *, overrides: list[str] = (), task: str | None = None, options: dict[str, Any] | None = None
) -> ExperimentConfig:
    """The config every model is evaluated under: `base` (a run's or a YAML file's), a new `task` (its own
    parameters and default rewards), `--set` overrides, then the `eval.` options given on the command line."""
    raw = {k: v for k, v in base.items()}
    if task is not None:
        raw["task"] = {"name": task}
        raw["rewards"] = None
    for text in overrides:
        apply_override(raw, *parse_override(text))
    eval_section = dict(raw.get("eval") or {})
    eval_section["enabled"] = True
    eval_section.update({k: v for k, v in (options or {}).items() if v is not None})
    if "num_samples" in (options or {}) and options["num_samples"] is not None and "k" not in (options or {}):
        ks = [k for k in eval_section.get("k", [1]) if k <= options["num_samples"]]
        eval_section["k"] = ks or [1]
    raw["eval"] = eval_section
    return validate(raw)


def folder_name(overrides: list[str], options: dict[str, Any], task: str | None) -> str:
    """A readable, deterministic name for the evaluation's folder: `default`, or the settings changed."""
    parts = [f"task-{task}"] if task else []
    for text in overrides:
        key, _, value = text.partition("=")
        parts.append(f"{key.split('.')[-1]}-{value}")
    parts += [f"{k}-{v}" for k, v in sorted(options.items()) if v is not None]
    if not parts:
        return "default"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(parts)).strip("_")
    if len(slug) > 60:
        slug = slug[:50] + "-" + hashlib.sha1(slug.encode()).hexdigest()[:8]
    return slug


def _model_section(model: dict[str, Any], cfg: ExperimentConfig) -> dict[str, Any]:
    """The model section a target loads: `cfg`'s, with the target's keys on top (its snapshot replaces any init adapter)."""
    return {**cfg.model.model_dump(mode="json"), **model, "init_adapter": None}


def _model_key(model: dict[str, Any], cfg: ExperimentConfig) -> str:
    return to_json(_model_section(model, cfg), sort_keys=True)


def evaluate_targets(cfg: ExperimentConfig, targets: list[Target], out: Path, *, nested: bool) -> list[Result]:
    """Evaluate every target under `cfg`, loading each distinct base model once; results under `out`."""
    from tqdm.auto import tqdm

    from training_with_unsloth.evaluation import PassKEvaluator, seeded_evaluate
    from training_with_unsloth.session import open_session

    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(_model_key(t.model, cfg), []).append(t)
    results: dict[int, Result] = {}
    for members in groups.values():
        model_cfg = validate({**cfg.model_dump(mode="json"), "model": _model_section(members[0].model, cfg)})
        session = open_session(model_cfg)
        if session.note:
            print(f"note: {session.note}")
        try:
            for t in members:
                folder = RunDir(out / t.label) if nested else RunDir(out)
                folder.eval_dir.mkdir(parents=True, exist_ok=True)
                evaluator = PassKEvaluator(
                    task=session.prep.task,
                    eval_rows=session.eval_rows,
                    reward_funcs=session.reward_funcs,
                    reward_weights=session.reward_weights,
                    cfg=session.cfg.eval,
                    max_new_tokens=session.trainer.args.max_completion_length,
                    run=folder,
                )
                session.use(t.ref)
                what = t.ref.label if t.ref is not None else f"base model {t.model.get('name')}"
                with tqdm(total=evaluator.total_completions, desc=f"{t.label}: {what}", unit="completion") as bar:
                    evaluator.progress = bar.update
                    metrics = seeded_evaluate(evaluator, session.trainer, t.step, cfg.seed)
                record = {"step": t.step, "kind": "eval", "label": t.label, "model": t.model.get("name"), **metrics}
                record["checkpoint"] = str(t.ref.path) if t.ref is not None else None
                _append(folder.metrics, record)
                results[id(t)] = Result(t, metrics, folder)
        finally:
            session.close()
    return [results[id(t)] for t in targets]


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = []
    if path.is_file():  # one record per (label, step): a rerun replaces its own
        from training_with_unsloth.rundir import read_jsonl

        kept = [r for r in read_jsonl(path) if (r.get("label"), r.get("step")) != (record["label"], record["step"])]
    atomic_write_text(path, "".join(to_json(r) + "\n" for r in [*kept, record]))


# ------------------------------------------------------------------ the table


def conditions(metrics: dict[str, Any]) -> list[str]:
    found = {m.group(1) for key in metrics if (m := re.fullmatch(r"eval/condition/(.+)/sample_accuracy", key))}
    return sorted(found)


def _cell(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    if not isinstance(value, int | float) or (isinstance(value, float) and math.isnan(value)):
        return "-"
    ci = metrics.get(f"{key}_ci")
    if isinstance(ci, list | tuple) and len(ci) == 2:
        return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{value:.3f}"


def table_columns(results: list[Result], cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """(header, metric key) of each column: greedy pass@1 and pass@<largest k>, overall and per condition."""
    kmax = max(cfg.eval.k)
    metrics = ["greedy_pass@1"] if cfg.eval.greedy else []
    metrics += [f"pass@{kmax}"] if kmax > 1 else ["pass@1"]
    conds = sorted({c for r in results for c in conditions(r.metrics)})
    cols = [(m, f"eval/{m}") for m in metrics]
    for c in conds:
        cols += [(f"{c} {m}", f"eval/condition/{c}/{m}") for m in metrics]
    return cols


def markdown_table(results: list[Result], cfg: ExperimentConfig) -> str:
    cols = table_columns(results, cfg)
    head = ["model", "checkpoint", *(h for h, _ in cols)]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in results:
        ckpt = r.target.ref.label if r.target.ref is not None else f"base ({r.target.model.get('name')})"
        lines.append("| " + " | ".join([r.target.label, ckpt, *(_cell(r.metrics, k) for _, k in cols)]) + " |")
    return "\n".join(lines) + "\n"


def csv_table(results: list[Result]) -> str:
    """One line per model and metric (every `eval/` number, with its interval where it has one)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["label", "model", "checkpoint", "step", "metric", "value", "ci_low", "ci_high"])
    for r in results:
        ckpt = str(r.target.ref.path) if r.target.ref is not None else ""
        for key, value in r.metrics.items():
            if key.endswith("_ci") or not isinstance(value, int | float):
                continue
            ci = r.metrics.get(f"{key}_ci") or ["", ""]
            writer.writerow([r.target.label, r.target.model.get("name"), ckpt, r.target.step, key, value, *ci])
    return buf.getvalue()


def settings_line(cfg: ExperimentConfig, n_problems: int) -> str:
    e = cfg.eval
    formats = cfg.task.params.get("eval_formats") or cfg.task.params.get("eval_instructions")
    fmt = f", formats {', '.join(formats)}" if formats else ""
    return (
        f"task {cfg.task.name}{fmt}: {_rows_text(n_problems, len(formats or []))} (seed {cfg.seed}), {e.num_samples} samples at "
        f"T={e.temperature}, k={list(e.k)}, greedy {'on' if e.greedy else 'off'}; 95% intervals "
        "(bootstrap over problems; Wilson for greedy)"
    )


def _rows_text(n: int, n_formats: int) -> str:
    if n_formats > 1:
        return f"{n} held-out rows ({n // n_formats} problems x {n_formats} formats)"
    return f"{n} held-out problems"


def check_out(out: Path) -> None:
    """A UserError unless `out` can hold an evaluation: new, empty, or an evaluation's own folder (its table.csv
    and resolved config.yaml), whose records a rerun replaces. A folder of other files is never written into."""
    if file_in_the_way(out) is not None:
        raise UserError(f"--out {out} is a file, not a folder: name a folder for the evaluation")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / "table.csv").is_file() and RunDir(out).is_run():
        return
    shown = ", ".join(p.name for p in sorted(out.iterdir())[:5])
    raise UserError(
        f"--out {out} holds files that are not an evaluation's ({shown}): refusing to write into it; name a new or empty folder"
    )


def write_tables(results: list[Result], cfg: ExperimentConfig, out: Path, command: str) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    n = len(rows_evaluated(results[0])) if results else 0
    md = f"# Evaluation\n\n{settings_line(cfg, n)}.\n\n{markdown_table(results, cfg)}\n`{command}`\n"
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.csv", csv_table(results))
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    return out / "table.md", out / "table.csv"


def rows_evaluated(result: Result) -> list[Any]:
    """The lines of the result's `eval/passk-<step>.jsonl` (one per held-out row evaluated)."""
    path = result.folder.passk_file(result.target.step)
    return path.read_text().splitlines() if path.is_file() else []


def check_options(options: dict[str, Any]) -> None:
    if options.get("num_problems") is not None and options["num_problems"] < 1:
        raise ConfigError("--num-problems must be at least 1")
