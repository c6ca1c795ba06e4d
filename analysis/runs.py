"""The one reader of a run directory for analysis.

`open_run(path)` checks the folder is a run and returns a `Run`: the run directory's paths (a
`RunDir`) plus what analysis reads from them, each read once:

- `config` (the resolved config as written), `validated()` (the pydantic `Config`);
- `records`, `train`, `evals`, `summary`: the `metrics.jsonl` records by kind;
- `series(key)`: a train or eval metric as arrays, with each eval point's 95% interval (`<key>_ci`);
- `table(name)`: `analysis/<name>.csv`, a per-checkpoint table (one row per step), as `Table`;
- `tables()`, `columns()`: every per-checkpoint table, and every series the run offers by name.

Every module of `analysis/` reads runs through this one; nothing else parses these files.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from training_with_unsloth.errors import UserError
from training_with_unsloth.rundir import RunDir

# Columns of a per-checkpoint table that are not numeric series.
TABLE_TEXT_COLUMNS = ("step", "healthy", "notes", "probe_hash")


@dataclass
class Series:
    """A step-indexed series; `low`/`high` the 95% interval at each step (NaN where none was logged), if any was."""

    steps: np.ndarray
    values: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def __bool__(self) -> bool:
        return self.steps.size > 0


def to_number(text: Any) -> float:
    """A CSV or JSON cell as a float: numbers, 'true'/'false', numeric strings; anything else is NaN."""
    if text is None:
        return math.nan
    if isinstance(text, bool | int | float):
        return float(text)
    text = str(text).strip()
    if text.lower() in ("true", "false"):
        return float(text.lower() == "true")
    try:
        return float(text)
    except ValueError:
        return math.nan


@dataclass
class Table:
    """A per-checkpoint CSV (`analysis/<name>.csv`): its header and rows, sorted by step."""

    name: str
    path: Path
    header: list[str]
    rows: list[dict[str, str]]

    @property
    def steps(self) -> np.ndarray:
        return self.column("step")

    def column(self, name: str) -> np.ndarray:
        """A column as floats (NaN where a cell is empty or not a number; all NaN when the column is missing)."""
        return np.array([to_number(r.get(name)) for r in self.rows], dtype=float)

    def flags(self, name: str, default: bool = True) -> np.ndarray:
        """A true/false column as bools (`default` where the column or a cell is missing)."""
        out = []
        for r in self.rows:
            cell = r.get(name)
            out.append(default if cell in (None, "") else str(cell).strip().lower() not in ("false", "0", "no"))
        return np.array(out, dtype=bool)

    def by_step(self, name: str) -> dict[int, float]:
        """A column as {step: value}, finite values only ({} when the column is missing)."""
        if name not in self.header:
            return {}
        return {int(t): float(v) for t, v in zip(self.steps, self.column(name), strict=True) if math.isfinite(v)}

    def numeric_columns(self) -> list[str]:
        return [h for h in self.header if h not in TABLE_TEXT_COLUMNS]


def read_table(path: str | Path, name: str | None = None) -> Table | None:
    """A per-checkpoint CSV with a `step` column, rows sorted by step (None when missing, empty or without `step`)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if math.isfinite(to_number(r.get("step")))]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}: delete it to recompute it") from None
    if "step" not in header:
        return None
    rows.sort(key=lambda r: to_number(r["step"]))
    return Table(name or path.stem, path, header, rows)


class Run(RunDir):
    """A run directory opened for analysis; each file is read once, when first asked for."""

    @cached_property
    def config_dict(self) -> dict[str, Any]:
        """The resolved config as the run wrote it."""
        from training_with_unsloth.yaml_reader import read_yaml_mapping

        return read_yaml_mapping(self.config, what="run's config")

    def validated(self) -> Any:
        """The resolved config as the training package's pydantic `Config`."""
        from training_with_unsloth.config import validate

        return validate(dict(self.config_dict))

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        return self.read_metrics() if self.metrics.is_file() else []

    @property
    def train(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == "train"]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == "eval"]

    @property
    def summary(self) -> dict[str, Any] | None:
        return next((r for r in reversed(self.records) if r.get("kind") == "summary"), None)

    def metric_keys(self, kind: str) -> list[str]:
        """Every numeric key logged in records of `kind` ('train' or 'eval'), in first-seen order."""
        keys: dict[str, None] = {}
        for rec in self.records:
            if rec.get("kind") != kind:
                continue
            for key, v in rec.items():
                if key not in ("step", "kind", "time") and (
                    v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                ):
                    keys.setdefault(key)
        return list(keys)

    def series(self, key: str, kind: str | None = None) -> Series:
        """A train or eval metric (kind None: eval for `eval/...` keys, else train), with its 95% intervals when logged."""
        kind = kind or ("eval" if key.startswith("eval/") else "train")
        records = self.evals if kind == "eval" else self.train
        points: dict[float, float] = {}
        cis: dict[float, tuple[float, float]] = {}
        for r in records:
            step, value = to_number(r.get("step")), to_number(r.get(key))
            if not (math.isfinite(step) and math.isfinite(value)):
                continue
            points[step] = value
            ci = r.get(f"{key}_ci")
            if isinstance(ci, list) and len(ci) == 2:
                cis[step] = (to_number(ci[0]), to_number(ci[1]))
        steps = np.array(sorted(points), dtype=float)
        values = np.array([points[s] for s in steps], dtype=float)
        if not cis:
            return Series(steps, values)
        low = np.array([cis.get(s, (math.nan, math.nan))[0] for s in steps], dtype=float)
        high = np.array([cis.get(s, (math.nan, math.nan))[1] for s in steps], dtype=float)
        return Series(steps, values, low, high)

    def table(self, name: str) -> Table | None:
        """`analysis/<name>.csv` (None when the run has no such table)."""
        return read_table(self.analysis / f"{name}.csv", name)

    def tables(self) -> list[str]:
        """The names of every per-checkpoint table in `analysis/` (a CSV with a `step` column)."""
        if not self.analysis.is_dir():
            return []
        return [p.stem for p in sorted(self.analysis.glob("*.csv")) if read_table(p) is not None]

    def columns(self) -> dict[str, str]:
        """Every series the run offers, as {column: source}: 'train', 'eval', or the name of its table.

        `llc.csv`'s columns come first under their own names; another table's column whose name is already
        taken is `<table>/<column>` (e.g. `calibration/llc_mean`).
        """
        out: dict[str, str] = {}
        tables = [read_table(p) for p in sorted(self.analysis.glob("*.csv"))] if self.analysis.is_dir() else []
        for table in sorted((t for t in tables if t is not None), key=lambda t: t.name != "llc"):
            for h in table.numeric_columns():
                out[h if h not in out else f"{table.name}/{h}"] = table.name
        for kind in ("train", "eval"):
            for key in self.metric_keys(kind):
                out.setdefault(key, kind)
        return out

    def column_series(self, column: str) -> Series:
        """Any column `columns()` names, as a series (a table column has no interval here; NaN rows dropped)."""
        source = self.columns().get(column)
        if source is None:
            raise KeyError(column)
        if source in ("train", "eval"):
            return self.series(column, source)
        table = self.table(source)
        steps, values = table.steps, table.column(column.removeprefix(f"{source}/"))
        ok = np.isfinite(values)
        return Series(steps[ok], values[ok])


def open_run(path: str | Path, *, checkpoints: bool = False, metrics: bool = False) -> Run:
    """The run at `path`, checked to be one: config.yaml, and adapter checkpoints / metrics.jsonl when asked."""
    run = Run(path)
    if not run.config.is_file():
        raise UserError(f"{run.path} is not a run directory (no config.yaml): pass a run's folder, e.g. runs/<name>")
    run.config_dict  # noqa: B018 - a config that is not a YAML mapping is one error line here, not later
    if metrics and not run.metrics.is_file():
        raise UserError(f"{run.path} is not a trained run directory (config.yaml and metrics.jsonl): pass runs/<name>")
    if checkpoints and not run.adapter_steps():
        raise UserError(f"{run.checkpoints} holds no adapter checkpoints (adapter-<step>/ with meta.json)")
    return run
