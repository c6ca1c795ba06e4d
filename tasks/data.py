"""Tables of problems from local files or the Hugging Face hub; the hub only from the cache unless downloads are on."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import datasets
import datasets.config
import huggingface_hub.constants
from datasets.exceptions import DatasetGenerationError, DatasetsError
from huggingface_hub import snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from rewards.errors import ConfigError

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Suffixes that mark a path as a local file (so a missing one is not looked up on the hub).
_FILE_SUFFIXES = {*BUILDERS, ".txt", ".tsv", ".arrow", ".gz", ".zip", ".xlsx", ".yaml", ".yml"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?")
# What reading a table can raise besides our own errors: unreadable files, bad JSON/CSV/Parquet, bad splits.
_READ_ERRORS = (DatasetsError, ValueError, OSError, TypeError, KeyError)


def load_table(
    source: str,
    *,
    split: str = "train",
    subset: str | None = None,
    download: bool = False,
    task: str,
    columns: Sequence[str] = (),
    param: str = "data",
) -> datasets.Dataset:
    """One table of problems from ``source``.

    ``source`` is a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file (read whole, whatever
    ``split``), a local dataset directory (``save_to_disk`` output or a folder of data files; its
    ``split``), or a hub dataset id (``split`` of ``subset``), read from the local cache unless
    ``download``. ``columns`` are checked to exist; ``param`` names the task setting in error
    messages. Every failure is a one-line ConfigError.
    """
    if not source.strip():
        raise ConfigError(f"task '{task}': task.{param} is empty: give a local data file or a hub dataset id")
    path = Path(source).expanduser()
    if path.is_file():
        table = _read_file(path, task)
    elif path.is_dir():
        table = _read_dir(path, split, task)
    elif path.suffix.lower() in _FILE_SUFFIXES or not _HUB_ID.fullmatch(source):
        raise ConfigError(f"task '{task}': data file '{source}' does not exist: check task.{param}")
    else:
        table = _read_hub(source, split=split, subset=subset, download=download, task=task, hint=_hint(param, columns))
    if len(table) == 0:
        raise ConfigError(f"task '{task}': dataset '{source}' (split '{split}') has no rows")
    require_columns(table, columns, source, task)
    return table


def require_columns(ds: datasets.Dataset, columns: Sequence[str], source: str, task: str) -> None:
    """A one-line ConfigError unless ``ds`` has every column in ``columns``."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ConfigError(
            f"task '{task}': dataset '{source}' lacks column(s) {', '.join(missing)} "
            f"(it has: {', '.join(ds.column_names) or 'none'})"
        )


def _read_file(path: Path, task: str) -> datasets.Dataset:
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ConfigError(
            f"task '{task}': cannot read '{path}': unsupported file type '{path.suffix}' "
            f"(use {', '.join(BUILDERS)} or a dataset directory)"
        )
    if path.stat().st_size == 0:  # `datasets` fails on an empty file with a bare StopIteration
        raise ConfigError(f"task '{task}': data file '{path}' is empty")
    reader = {
        "json": datasets.Dataset.from_json,
        "parquet": datasets.Dataset.from_parquet,
        "csv": datasets.Dataset.from_csv,
    }
    try:
        with _hub_offline(True):
            return reader[builder](str(path))
    except _READ_ERRORS as exc:
        raise ConfigError(f"task '{task}': cannot read '{path}': {_first_line(exc)}") from exc


def _read_dir(path: Path, split: str, task: str) -> datasets.Dataset:
    saved = any((path / name).is_file() for name in ("dataset_dict.json", "dataset_info.json", "state.json"))
    try:
        with _hub_offline(True):
            loaded = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
    except _READ_ERRORS as exc:
        raise ConfigError(f"task '{task}': cannot read dataset directory '{path}': {_first_line(exc)}") from exc
    return _pick_split(loaded, split, str(path), task)


def _read_hub(source: str, *, split: str, subset: str | None, download: bool, task: str, hint: str) -> datasets.Dataset:
    """``split`` of a hub dataset: downloaded when allowed, else from the datasets cache or the hub file cache."""
    of_subset = f" (subset '{subset}')" if subset else ""
    try:
        with _hub_offline(not download):
            return datasets.load_dataset(source, subset, split=split)
    except (ConnectionError, FileNotFoundError) as exc:
        if download:
            raise ConfigError(f"task '{task}': cannot download dataset '{source}'{of_subset}: {_first_line(exc)}") from exc
        cached = _hub_snapshot(source)
        if cached is None:
            raise ConfigError(
                f"task '{task}': dataset '{source}' is not in the local cache and downloads are off: "
                f"set task.download: true, or {hint}"
            ) from exc
    except _READ_ERRORS as exc:  # e.g. an unknown subset or split
        raise ConfigError(f"task '{task}': cannot load split '{split}' of '{source}'{of_subset}: {_first_line(exc)}") from exc
    try:
        with _hub_offline(True):
            return datasets.load_dataset(cached, subset, split=split)
    except _READ_ERRORS as exc:
        raise ConfigError(
            f"task '{task}': cannot load split '{split}' of '{source}'{of_subset} from the hub cache: {_first_line(exc)}"
        ) from exc


def _hub_snapshot(repo_id: str) -> str | None:
    """The local folder of a dataset repository in the hub file cache, or None when it is not there."""
    try:
        with _hub_offline(True):
            return snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        return None


def _pick_split(loaded: datasets.Dataset | datasets.DatasetDict, split: str, source: str, task: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.Dataset):
        return loaded
    if split not in loaded:
        raise ConfigError(f"task '{task}': dataset '{source}' has no split '{split}' (it has: {', '.join(loaded)})")
    return loaded[split]


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Set the hub's offline flag for one load: `datasets` and `huggingface_hub` read the environment only at import."""
    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _hint(param: str, columns: Sequence[str]) -> str:
    with_columns = f" with {'/'.join(columns)} columns" if columns else ""
    return f"task.{param}: <local .jsonl/.parquet file{with_columns}>"


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, DatasetGenerationError) and exc.__cause__ is not None:
        exc = exc.__cause__  # "An error occurred while generating the dataset" hides what was wrong
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
