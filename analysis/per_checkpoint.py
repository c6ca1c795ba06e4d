"""One statistic over a run's adapter checkpoints: the loop every per-checkpoint analysis shares.

A statistic (`Statistic`) says its table name, its settings and how to measure one checkpoint;
`for_each_checkpoint(run, statistic, steps)` does the rest, the same way for every statistic:

- loads the base model once (through the training backends, only when the statistic needs it) and
  swaps each `checkpoints/adapter-<step>/`'s LoRA weights into it;
- skips steps already in `analysis/<name>.csv` (all with `force`), and refuses to mix rows of other
  settings (`analysis/<name>_settings.json`) unless `force`;
- writes the CSV atomically after every checkpoint, so an interruption loses at most the current one;
- shows a progress bar and one line per checkpoint.

`--resume` of a training run trims every `analysis/*.csv` with a `step` column at the resume step,
so a statistic never has to be named by the training package.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from training_with_unsloth.errors import UserError


class Statistic(Protocol):
    """What `for_each_checkpoint` needs of a statistic."""

    name: str  # the table: analysis/<name>.csv, analysis/<name>_settings.json
    needs_model: bool  # False: measure() reads the adapter files only

    def settings(self, ctx: Context) -> dict[str, Any]:
        """Everything the values depend on; a rerun with other settings is refused without --force."""
        ...

    def measure(self, ctx: Context, step: int) -> dict[str, Any]:
        """One row (without `step` and `seconds`) for checkpoint `step`, its adapter already swapped in."""
        ...

    def describe(self, row: dict[str, Any]) -> str:
        """One line for the console after a checkpoint."""
        ...


class Context:
    """The run, its config and the base model, loaded once and shared by every statistic run with this context."""

    def __init__(self, run: Any, device: str, *, loaded: tuple[Any, Any] | None = None):
        self.run = run
        self.device = device
        self.cfg = run.validated()
        self._loaded = loaded  # (model, tokenizer) already loaded for this run's config, if any
        self.adapter_step: int | None = None

    @property
    def model(self) -> Any:
        return self._load()[0]

    @property
    def tokenizer(self) -> Any:
        return self._load()[1]

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            self._loaded = load_model(self.cfg, self.device, self.run)
        return self._loaded

    @cached_property
    def held_out(self) -> list[Any]:
        """The run's held-out problems (its task's eval split), built once."""
        import tasks

        task = tasks.get(self.cfg.task.name, **self.cfg.task.params)
        return list(task.build(self.cfg.seed)[1])

    def swap(self, step: int) -> None:
        """Load checkpoint `step`'s LoRA weights into the model (nothing when it is already there)."""
        if self.adapter_step != step:
            swap_adapter(self.model, self.run.adapter_dir(step))
            self.adapter_step = step


def load_model(cfg: Any, device: str, run: Any | None = None) -> tuple[Any, Any]:
    """Base model + an empty LoRA adapter of the run's shape, loaded once (training's backend code).

    Off CUDA, a 4-bit run is loaded onto 16-bit weights: its adapters are plain PEFT LoRA files
    whose tensor names do not depend on the base's quantization (`swap_adapter` checks each one).
    """
    from training_with_unsloth.models import backends
    from training_with_unsloth.session import model_for_device

    cuda = device.startswith("cuda")
    backend = "unsloth" if cuda and backends.resolve_backend(cfg.model.backend) == "unsloth" else "transformers"
    backends.offline_environment(cfg.model.download)
    backends.prepare(backend)
    model_cfg, note = model_for_device(cfg.model, cuda)
    if note:
        revision = _trained_revision(run)
        print(f"note: {note}" + (f" (training used revision {revision} of {cfg.model.name})" if revision else ""))
    loaded = backends.load(model_cfg, backend, seed=cfg.seed, gradient_checkpointing=False)
    model = loaded.model
    # quantized weights are placed on the GPU at load and refuse .to()
    quantized = getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_loaded_in_4bit", False)
    if loaded.peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, loaded.peft_config)
    if not (quantized or (cuda and cfg.model.load_in_4bit)):
        model = model.to(device)
    model.eval()
    return model, loaded.tokenizer


def _trained_revision(run: Any | None) -> str | None:
    """The model revision the run's `env.json` records for training, if it records one."""
    if run is None or not run.env.is_file():
        return None
    try:
        entry = json.loads(run.env.read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    revision = entry.get("revision") if isinstance(entry, dict) else None
    return revision if isinstance(revision, str) and revision else None


def swap_adapter(model: Any, adapter_dir: Path) -> None:
    """Load a snapshot's LoRA weights into the live adapter, checking every LoRA tensor is replaced."""
    from training_with_unsloth.checkpoints import load_weights

    load_weights(model, adapter_dir)


# ----------------------------------------------------------------------------- tables


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rows sorted by step, every column any row has, written atomically."""
    from training_with_unsloth.rundir import atomic_write_text

    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: int(r["step"])))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())


def table_paths(run: Any, name: str) -> tuple[Path, Path]:
    """`analysis/<name>.csv` and `analysis/<name>_settings.json`."""
    return run.analysis / f"{name}.csv", run.analysis / f"{name}_settings.json"


def for_each_checkpoint(
    run: Any,
    statistic: Statistic,
    steps: Sequence[int],
    *,
    device: str = "cpu",
    force: bool = False,
    context: Context | None = None,
    desc: str | None = None,
) -> list[dict[str, Any]]:
    """`statistic` at each of `steps` not yet in its table (all with `force`); returns every row of the table."""
    from tqdm.auto import tqdm

    from training_with_unsloth.rundir import atomic_write_json, read_json_object

    csv_path, settings_path = table_paths(run, statistic.name)
    available = run.adapter_steps()
    missing = [s for s in steps if s not in available]
    if missing:
        raise UserError(f"--checkpoints {missing}: no such adapter checkpoints; the run has {available}")
    ctx = context or Context(run, device)
    settings = statistic.settings(ctx)
    from analysis.runs import read_table

    table = read_table(csv_path)
    existing = table.rows if table is not None else []
    recorded = read_json_object(
        settings_path, remedy=f"delete it (and {csv_path.name}, whose settings it records) to start afresh"
    )
    if existing and recorded != json.loads(json.dumps(settings)):
        if not force:
            raise UserError(
                f"{csv_path} was computed with other settings ({settings_path.name}); pass --force to recompute, "
                "or repeat the recorded settings"
            )
        existing = []  # rows from other settings must not sit beside the new ones
    done = set() if force else {int(r["step"]) for r in existing}
    todo = [s for s in steps if s not in done]
    rows: list[dict[str, Any]] = [r for r in existing if int(r["step"]) not in todo]
    if not todo:
        print(f"{statistic.name}: all {len(steps)} requested checkpoints are already in {csv_path} (--force recomputes)")
        return sorted(rows, key=lambda r: int(r["step"]))
    run.analysis.mkdir(parents=True, exist_ok=True)
    atomic_write_json(settings_path, settings)
    bar = tqdm(todo, desc=desc or statistic.name, unit="ckpt")
    for step in bar:
        t0 = time.time()
        if statistic.needs_model:
            ctx.swap(step)
        row = {"step": step, **statistic.measure(ctx, step)}
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        write_rows(csv_path, rows)  # after every checkpoint: an interruption loses at most the current one
        bar.write(f"step {step}: {statistic.describe(row)}")
    return sorted(rows, key=lambda r: int(r["step"]))
