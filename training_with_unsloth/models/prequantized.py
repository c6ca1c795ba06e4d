"""Pre-quantized model repos (bitsandbytes weights, loadable only on CUDA) and the 16-bit bases they came from.

Unsloth publishes repos such as `unsloth/Qwen2.5-1.5B-Instruct-unsloth-bnb-4bit`. Its own table of
them (`unsloth/models/mapper.py`, a file without imports) is read straight from the installed
file: importing the `unsloth` package would patch trl and transformers for the whole process.
Nothing here imports torch, transformers, trl or unsloth.
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from training_with_unsloth.errors import UserError

_SUFFIXES = ("-unsloth-bnb-4bit", "-bnb-4bit")  # longest first
_QUANTIZED_WORDS = re.compile(r"bnb|4bit", re.IGNORECASE)


def _strip_suffix(name: str) -> str | None:
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _load_unsloth_table() -> dict[str, Any] | None:
    """Unsloth's source table `__INT_TO_FLOAT_MAPPER` (4-bit name -> 16-bit names), None without unsloth."""
    try:
        spec = importlib.util.find_spec("unsloth")  # finds the package without importing it
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    files = [Path(d) / "models" / "mapper.py" for d in spec.submodule_search_locations]
    path = next((f for f in files if f.is_file()), None)
    if path is None:
        return None
    file_spec = importlib.util.spec_from_file_location("_unsloth_mapper_file", path)
    if file_spec is None or file_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(file_spec)
    try:
        file_spec.loader.exec_module(module)
    except Exception:  # another Unsloth release's file may not run on its own: fall back to the name suffix
        return None
    table = getattr(module, "__INT_TO_FLOAT_MAPPER", None)  # a module-level dunder name is not mangled
    return table if isinstance(table, dict) else None


@lru_cache(maxsize=1)
def _mapper() -> dict[str, tuple[str, ...]]:
    """Lower-cased pre-quantized repo name -> its 16-bit repos, Unsloth's order (its own copy first)."""
    table = _load_unsloth_table() or {}
    out: dict[str, list[str]] = {}
    for key, values in table.items():
        if isinstance(values, dict):  # {"16": (...), "8": (fp8 repos)}
            values = values.get("16", ())
        if not isinstance(key, str) or not isinstance(values, tuple | list):
            continue
        names = [v for v in values if isinstance(v, str)]
        sixteen = [v for v in names if not _QUANTIZED_WORDS.search(v)]
        # The table also lists 16-bit keys (renames, copies); only names that say they are 4-bit count.
        for quantized in [key, *names]:
            if _QUANTIZED_WORDS.search(quantized) and sixteen:
                known = out.setdefault(quantized.lower(), [])
                known += [v for v in sixteen if v not in known]
    return {k: tuple(v) for k, v in out.items()}


def _config(name: str) -> dict[str, Any] | None:
    """The model's `config.json`: from a local directory, else from the local Hugging Face cache."""
    path: Path | None = Path(name).expanduser() / "config.json"
    if not path.is_file():
        path = None
        if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
            path = Path(cached) if isinstance(cached, str) else None
    if path is None:
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def is_prequantized(name: str) -> bool:
    """Whether `name` holds bitsandbytes-quantized weights: Unsloth's table, the name suffix, or its cached config."""
    if name.lower() in _mapper() or _strip_suffix(name) is not None:
        return True
    config = _config(name)
    quantization = config.get("quantization_config") if config else None
    return isinstance(quantization, dict) and quantization.get("quant_method") == "bitsandbytes"


def sixteen_bit_candidates(name: str) -> list[str]:
    """The 16-bit repos a pre-quantized `name` corresponds to, best first (empty when none is known).

    From Unsloth's table when Unsloth is installed and lists `name`; else `name` without its
    `-unsloth-bnb-4bit` / `-bnb-4bit` suffix.
    """
    known = _mapper().get(name.lower())
    if known:
        return list(known)
    stripped = _strip_suffix(name)
    return [stripped] if stripped else []


def cpu_base(name: str, *, allow_download: bool) -> str:
    """The 16-bit base to load instead of pre-quantized `name` off CUDA: the first candidate in the local cache.

    With downloads allowed and none cached, the best candidate (to be fetched). Raises UserError,
    naming the repo to fetch, when none is cached and downloads are off.
    """
    from training_with_unsloth.models.backends import resolve_model_path

    candidates = sixteen_bit_candidates(name)
    if not candidates:
        raise UserError(
            f"model '{name}' is pre-quantized (bitsandbytes), which loads only on a CUDA GPU, and no 16-bit base is "
            "known for it: analyse the run on a CUDA GPU"
        )
    for candidate in candidates:
        try:
            return resolve_model_path(candidate, allow_download=False)
        except UserError:
            continue
    if allow_download:
        return resolve_model_path(candidates[0], allow_download=True)
    others = f" (or {', '.join(candidates[1:])})" if len(candidates) > 1 else ""
    raise UserError(
        f"model '{name}' is pre-quantized (bitsandbytes 4-bit), which loads only on a CUDA GPU; to analyse on the CPU "
        f"fetch its 16-bit base once: `huggingface-cli download {candidates[0]}`{others}, or set model.download: true"
    )
