"""`--resume`: set aside what an abandoned trajectory wrote after the checkpoint, and record the resume.

A run resumed from `trainer/checkpoint-<s>` redoes every step after s. What the interrupted run wrote for
those steps (adapter snapshots, Pass@K files, completion logs, later trainer checkpoints, metrics records,
the rows of every per-checkpoint table in `analysis/` and their traces) is moved to `abandoned/<UTC time>/`
under the same relative paths, so that nothing of the abandoned trajectory is mixed into the resumed one and
nothing written is lost. `checkpoints/best/` is put back to the best adapter as of step s, from the copy each
trainer checkpoint keeps of it.

Light on imports (no torch or transformers): the trainer and the callbacks import it too.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training_with_unsloth.errors import UserError
from training_with_unsloth.rundir import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    json_object_or_none,
    jsonl_lines,
    temp_dir_beside,
    to_json,
)
from training_with_unsloth.yaml_reader import read_yaml_mapping

RESEARCH_STATE_FILE = "research_state.json"  # in each trainer/checkpoint-<step>/, written before TRL's state
# The copy of checkpoints/best/ kept in each trainer checkpoint. Nested one level deeper on purpose: transformers
# loads every direct subfolder of a checkpoint holding adapter weights as an extra adapter instead of the trained one.
BEST_COPY = Path("research") / "best"


def checkpoint_step(checkpoint: str | Path) -> int:
    """The step of `trainer/checkpoint-<step>`."""
    return int(Path(checkpoint).name.rsplit("-", 1)[1])


def check_research_state(checkpoint: str | Path, stateful: Mapping[str, Any]) -> None:
    """Refuse to resume from a checkpoint without its research state when the run has stateful controls."""
    checkpoint = Path(checkpoint)
    if stateful and not (checkpoint / RESEARCH_STATE_FILE).is_file():
        where = f"{checkpoint.parent.name}/{checkpoint.name}"
        raise UserError(
            f"--resume: {checkpoint} has no {RESEARCH_STATE_FILE} (the run stopped while saving it), so "
            f"{', '.join(sorted(stateful))} would restart from scratch: delete {where} to resume from the previous "
            "checkpoint, or start a new run"
        )


# ---------------------------------------------------------------------------- copies that cost no disk space


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, dst)


def _build_dir(final: Path, fill: Callable[[Path], None]) -> None:
    """Fill a temporary folder beside `final`, then rename it to `final` (which must not exist)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(final)
    try:
        fill(tmp)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _link_files(src: Path, dst: Path, skip: tuple[str, ...] = ()) -> None:
    """Hard-link (or copy) every file under `src` into the existing folder `dst`.

    Safe because adapters are never rewritten in place: a new adapter or meta.json is a new file renamed over the
    old name, so a linked copy keeps the old content.
    """
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in skip:
            continue
        if path.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, dst / rel)


def keep_best_copy(best: Path, checkpoint: Path) -> None:
    """Keep `checkpoints/best/` (when there is one) inside a trainer checkpoint being saved, hard-linked."""
    if not (best / "meta.json").is_file():
        return
    target = checkpoint / BEST_COPY
    if target.exists():  # a checkpoint of this step saved again: its old copy is stale
        shutil.rmtree(target)
    _build_dir(target, lambda tmp: _link_files(best, tmp))


# ---------------------------------------------------------------------------- setting the abandoned steps aside


@dataclass
class SetAside:
    """`abandoned/<time>/` of one resume, created when the first thing is moved there."""

    run: RunDir
    folder: Path
    moved: list[str] = field(default_factory=list)
    kinds: Counter = field(default_factory=Counter)

    def move(self, path: Path, kind: str) -> None:
        rel = path.relative_to(self.run.path)
        target = self.folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, target)  # same filesystem: atomic, and nothing is copied
        self.moved.append(str(rel))
        self.kinds[kind] += 1

    def write(self, rel: str, text: str, kind: str, count: int = 1) -> None:
        atomic_write_text(self.folder / rel, text)
        self.moved.append(rel)
        self.kinds[kind] += count

    @property
    def relative(self) -> str:
        return str(self.folder.relative_to(self.run.path))


def new_set_aside(run: RunDir) -> SetAside:
    """A `SetAside` for a fresh `abandoned/<UTC time>/` (suffixed when a resume in the same second made one)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder, n = run.abandoned / stamp, 1
    while folder.exists():
        folder, n = run.abandoned / f"{stamp}-{n}", n + 1
    return SetAside(run, folder)


def set_aside_metrics(run: RunDir, step: int, aside: SetAside) -> int:
    """Move the metrics records after `step` (and the end-of-run summary) to the abandoned metrics.jsonl.

    Lines that are not JSON objects (a torn last line after a crash, a corrupt line) go, as they were, to the
    abandoned `metrics-unreadable.txt`: the resumed run appends to a file of whole records only."""
    if not run.metrics.is_file():
        return 0
    kept: list[bytes] = []
    dropped: list[dict[str, Any]] = []
    unreadable: list[bytes] = []
    for _, raw, record in jsonl_lines(run.metrics):
        line = raw if raw.endswith(b"\n") else raw + b"\n"
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int | float):
            unreadable.append(line)
        elif record.get("step", 0) <= step and record.get("kind") != "summary":
            kept.append(line)
        else:
            dropped.append(record)
    # Written there first: a crash in between leaves the lines in both places, never in neither.
    if dropped:
        aside.write("metrics.jsonl", "".join(to_json(r) + "\n" for r in dropped), "metrics record", len(dropped))
    if unreadable:
        text = b"".join(unreadable).decode("utf-8", errors="backslashreplace")
        aside.write("metrics-unreadable.txt", text, "unreadable metrics line", len(unreadable))
    if dropped or unreadable:
        atomic_write_text(run.metrics, b"".join(kept).decode("utf-8", errors="backslashreplace"))
    return len(dropped)


def set_aside_table_rows(run: RunDir, step: int, aside: SetAside) -> int:
    """Rewrite every `analysis/*.csv` with a `step` column without the rows of steps after `step`; those rows go
    to the same file under the abandoned folder. Whatever analysis wrote the table, training never names it."""
    if not run.analysis.is_dir():
        return 0
    moved = 0
    for path in sorted(run.analysis.glob("*.csv")):
        try:
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                columns, rows = list(reader.fieldnames or []), list(reader)
        except (OSError, UnicodeDecodeError, csv.Error):
            continue  # not a table we can read: left as it is, listed as stale analysis
        if "step" not in columns:
            continue
        kept: list[dict[str, str]] = []
        later: list[dict[str, str]] = []
        for r in rows:
            s = _int(r.get("step"))
            (later if s is not None and s > step else kept).append(r)
        if not later:
            continue

        def table(part: list[dict[str, str]], columns: list[str] = columns) -> str:
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=columns)
            writer.writeheader()
            writer.writerows(part)
            return buf.getvalue()

        aside.write(f"analysis/{path.name}", table(later), f"{path.stem} row", len(later))
        atomic_write_text(path, table(kept))
        moved += len(later)
    return moved


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def set_aside_step_files(run: RunDir, step: int, aside: SetAside) -> None:
    """Move every file or folder written for a step after `step` (trainer checkpoints included, complete or not)."""
    for kind, s, path in run.step_files():
        if s > step:
            aside.move(path, kind)


# ---------------------------------------------------------------------------- checkpoints/best as of the step


def _best_as_of(run: RunDir, checkpoint: Path, step: int, held: dict[str, Any] | None) -> dict[str, Any] | None:
    """Step, metric, mode and value of the best as of `step`: the checkpoint's research state, else the metrics."""
    state = (json_object_or_none(checkpoint / RESEARCH_STATE_FILE) or {}).get("best_checkpoint")
    if isinstance(state, dict):
        return state if state.get("step") is not None else None
    if not held or "metric" not in held:
        return None
    metric, mode = held["metric"], held.get("mode", "max")
    best: dict[str, Any] | None = None
    for r in run.read_metrics():
        value = r.get(metric)
        if r.get("kind") != "eval" or r.get("step", 0) > step or not isinstance(value, int | float) or math.isnan(value):
            continue
        if best is None or (value > best["value"] if mode == "max" else value < best["value"]):  # a tie keeps the first
            best = {"step": r["step"], "metric": metric, "mode": mode, "value": float(value)}
    return best


def restore_best(run: RunDir, checkpoint: Path, step: int, aside: SetAside) -> str | None:
    """Make `checkpoints/best/` the best adapter as of `step`; returns a line saying what was done (None: nothing).

    A best/ of a later step is set aside. It comes back from the trainer checkpoint's copy, else from the
    adapter snapshot of the best step (with a meta.json from that step's eval record), else stays absent.
    """
    best = run.best
    held = json_object_or_none(best / "meta.json") if best.exists() else None
    if best.exists():
        if held is None or not isinstance(held.get("step"), int) or held["step"] <= step:
            return None  # the best of the kept steps already (or not one the toolkit wrote)
        aside.move(best, "best adapter")
    copy = checkpoint / BEST_COPY
    if (copy / "meta.json").is_file():
        _build_dir(best, lambda tmp: _link_files(copy, tmp))
        kept = (json_object_or_none(best / "meta.json") or {}).get("step")
        return f"checkpoints/best restored to step {kept} from {copy.relative_to(run.path)}"
    target = _best_as_of(run, checkpoint, step, held)
    if target is None:
        return "checkpoints/best set aside; the next evaluation rewrites it" if held is not None else None
    b = int(target["step"])
    adapter = run.adapter_dir(b)
    if not (adapter / "adapter_model.safetensors").is_file():
        return (
            f"checkpoints/best is absent: no copy of the adapter of step {b}, the best {target['metric']} as of step "
            f"{step}, survives; the next evaluation that improves on it rewrites it"
        )
    record = next((r for r in run.read_metrics() if r.get("kind") == "eval" and r.get("step") == b), {})
    meta = {
        "step": b,
        "metric": target["metric"],
        "value": target.get("value", record.get(target["metric"])),
        "mode": target.get("mode", "max"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "eval": {k: v for k, v in record.items() if k.startswith("eval/")},
        "restored_from": str(adapter.relative_to(run.path)),
    }

    def fill(tmp: Path) -> None:
        _link_files(adapter, tmp, skip=("meta.json",))
        atomic_write_json(tmp / "meta.json", meta)

    _build_dir(best, fill)
    return f"checkpoints/best restored to step {b} from {meta['restored_from']}"


# ---------------------------------------------------------------------------- config and the resume record


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): value}


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`{"trainer.max_steps": {"old": 40, "new": 80}, ...}`: the keys whose values differ (absent: None)."""
    a, b = _flat(dict(old)), _flat(dict(new))
    return {k: {"old": a.get(k), "new": b.get(k)} for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def update_config(run: RunDir, config_text: str, config: Mapping[str, Any], aside: SetAside) -> dict[str, dict[str, Any]]:
    """Rewrite `config.yaml` when the resumed config differs; the old one is kept in the abandoned folder."""
    if not run.config.is_file():
        atomic_write_text(run.config, config_text)
        return {}
    old_text = run.config.read_text()
    changes = config_changes(read_yaml_mapping(run.config, what="run's config"), config)
    if changes:
        aside.write("config.yaml", old_text, "config")
        atomic_write_text(run.config, config_text)
    return changes


def stale_analysis(run: RunDir) -> list[str]:
    """Analysis outputs a resume leaves in place that may still show abandoned steps (figures, phases, calibration)."""
    if not run.analysis.is_dir():
        return []
    return sorted(
        p.name for p in run.analysis.iterdir()
        if p.is_file() and not _trimmed_or_stepless(p) and not p.name.startswith((".", "probe-rollouts-"))
    )  # fmt: skip


def _trimmed_or_stepless(path: Path) -> bool:
    """A table the resume trims itself (a CSV with a step column), or a settings file, which holds no steps."""
    if path.name.endswith("_settings.json"):
        return True
    if path.suffix != ".csv":
        return False
    try:
        with path.open(newline="") as f:
            return "step" in (next(csv.reader(f), None) or [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False


def _summary(checkpoint: str, aside: SetAside, changes: dict[str, dict[str, Any]]) -> str:
    if aside.kinds:
        what = ", ".join(
            f"{n} {kind}{'s' * (n > 1 and not kind.endswith('s'))}" for kind, n in aside.kinds.items() if kind != "config"
        )
        text = f"resume from {checkpoint}: set aside {what or 'the old config'} -> {aside.relative}/"
    else:
        text = f"resume from {checkpoint}: nothing was written after it"
    if changes:
        shown = [f"{k} {v['old']} -> {v['new']}" for k, v in list(changes.items())[:3]]
        text += "; config: " + ", ".join(shown) + (f" (+{len(changes) - 3} more)" if len(changes) > 3 else "")
    return text


def resume_run(
    run: RunDir, checkpoint: str | Path, *, config_text: str, config: Mapping[str, Any], env: dict[str, Any]
) -> dict[str, Any]:
    """Prepare `run` to continue from `checkpoint`: set aside later steps, restore best/, rewrite config.yaml.

    Appends the resume (with `env`, the environment it runs in) to `env.json` under `resumes`, prints what
    was moved, and returns the record.
    """
    checkpoint = Path(checkpoint)
    step = checkpoint_step(checkpoint)
    aside = new_set_aside(run)
    set_aside_metrics(run, step, aside)
    set_aside_table_rows(run, step, aside)
    set_aside_step_files(run, step, aside)
    best_note = restore_best(run, checkpoint, step, aside)
    changes = update_config(run, config_text, config, aside)
    stale = stale_analysis(run) if any(kind != "config" for kind in aside.kinds) else []
    record = {
        **env,
        "from_step": step,
        "checkpoint": str(checkpoint.relative_to(run.path)) if checkpoint.is_relative_to(run.path) else str(checkpoint),
        "config_changes": changes,
        "set_aside_to": aside.relative if aside.kinds else None,
        "set_aside": aside.moved,
        "best": best_note,
        "stale_analysis": stale,
    }
    saved = json_object_or_none(run.env) or {}
    saved.setdefault("resumes", []).append(record)
    atomic_write_json(run.env, saved)
    print(_summary(record["checkpoint"], aside, changes), flush=True)
    if best_note:
        print(best_note, flush=True)
    if stale:
        print(f"analysis/{', '.join(stale)}: made before this resume, may show abandoned steps: rerun the analysis", flush=True)
    return record
