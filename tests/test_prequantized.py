"""Pre-quantized repos: detection, their 16-bit bases (Unsloth's table or the name), the cached one for the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training_with_unsloth.errors import UserError
from training_with_unsloth.models import prequantized

from .helpers import REPO

NAME = "unsloth/Qwen2.5-1.5B-Instruct-unsloth-bnb-4bit"
HAS_UNSLOTH = importlib.util.find_spec("unsloth") is not None


def fake_cache(root: Path, repo: str, config: dict | None = None, files: Path | None = None) -> Path:
    """A Hugging Face hub cache entry for `repo`: snapshots/<sha>/config.json (or `files`) and refs/main."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    entry = root / f"models--{repo.replace('/', '--')}"
    snapshot = entry / "snapshots" / sha
    snapshot.mkdir(parents=True)
    if files is not None:
        for f in files.iterdir():
            (snapshot / f.name).write_bytes(f.read_bytes())
    else:
        (snapshot / "config.json").write_text(json.dumps(config or {"model_type": "qwen2"}))
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(sha)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty hub cache in place of the real one (huggingface_hub reads the constant at call time)."""
    import huggingface_hub.constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    return root


@pytest.fixture
def no_unsloth_table(monkeypatch):
    monkeypatch.setattr(prequantized, "_load_unsloth_table", lambda: None)
    prequantized._mapper.cache_clear()
    yield
    prequantized._mapper.cache_clear()


@pytest.mark.skipif(not HAS_UNSLOTH, reason="Unsloth is not installed here")
def test_candidates_come_from_unsloths_table():
    candidates = prequantized.sixteen_bit_candidates(NAME)
    assert candidates[:2] == ["unsloth/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct"]
    assert not any("4bit" in c for c in candidates)
    assert prequantized.sixteen_bit_candidates(NAME.lower())[:2] == candidates[:2]
    # a 4-bit sibling named in the same entry maps to the same bases
    assert "Qwen/Qwen2.5-1.5B-Instruct" in prequantized.sixteen_bit_candidates("unsloth/Qwen2.5-1.5B-Instruct-bnb-4bit")
    # the table also holds 16-bit keys (copies, renames): they are not pre-quantized
    assert not prequantized.is_prequantized("unsloth/Qwen3-30B-A3B-Instruct-2507")


def test_without_unsloth_the_name_suffix_gives_the_base(no_unsloth_table, hub_cache):
    assert prequantized.sixteen_bit_candidates(NAME) == ["unsloth/Qwen2.5-1.5B-Instruct"]
    assert prequantized.sixteen_bit_candidates("Qwen/Qwen2.5-1.5B-Instruct-bnb-4bit") == ["Qwen/Qwen2.5-1.5B-Instruct"]
    assert prequantized.sixteen_bit_candidates("Qwen/Qwen2.5-1.5B-Instruct") == []
    assert prequantized.is_prequantized(NAME) and not prequantized.is_prequantized("Qwen/Qwen2.5-1.5B-Instruct")


def test_a_cached_bitsandbytes_config_marks_a_repo_prequantized(hub_cache, tmp_path):
    fake_cache(hub_cache, "someone/packed", {"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}})
    fake_cache(hub_cache, "someone/plain", {"model_type": "llama"})
    assert prequantized.is_prequantized("someone/packed")
    assert not prequantized.is_prequantized("someone/plain") and not prequantized.is_prequantized("someone/absent")
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "bitsandbytes"}}))
    assert prequantized.is_prequantized(str(local))
    with pytest.raises(UserError, match="no 16-bit base is known"):
        prequantized.cpu_base("someone/packed", allow_download=False)


@pytest.mark.skipif(not HAS_UNSLOTH, reason="Unsloth is not installed here")
def test_cpu_base_is_the_first_cached_candidate(hub_cache):
    fake_cache(hub_cache, "Qwen/Qwen2.5-1.5B-Instruct")
    assert prequantized.cpu_base(NAME, allow_download=False) == "Qwen/Qwen2.5-1.5B-Instruct"
    fake_cache(hub_cache, "unsloth/Qwen2.5-1.5B-Instruct")  # Unsloth's own 16-bit copy ranks first
    assert prequantized.cpu_base(NAME, allow_download=False) == "unsloth/Qwen2.5-1.5B-Instruct"


def test_cpu_base_from_the_name_alone(no_unsloth_table, hub_cache):
    fake_cache(hub_cache, "unsloth/Qwen2.5-1.5B-Instruct")
    assert prequantized.cpu_base(NAME, allow_download=False) == "unsloth/Qwen2.5-1.5B-Instruct"


def test_cpu_base_names_the_repo_to_fetch_when_none_is_cached(hub_cache):
    with pytest.raises(UserError) as err:
        prequantized.cpu_base(NAME, allow_download=False)
    message = str(err.value)
    assert "\n" not in message and "pre-quantized" in message and "CUDA" in message
    assert "`huggingface-cli download unsloth/Qwen2.5-1.5B-Instruct`" in message and "model.download: true" in message
    assert prequantized.cpu_base(NAME, allow_download=True) == "unsloth/Qwen2.5-1.5B-Instruct"  # fetched on load


def test_using_it_imports_no_ml_library(tmp_path):
    code = f"""
import sys
from training_with_unsloth.models import prequantized as q
from training_with_unsloth.errors import UserError
assert q.is_prequantized({NAME!r}) and not q.is_prequantized("someone/plain")
assert q.sixteen_bit_candidates({NAME!r})
try:
    q.cpu_base({NAME!r}, allow_download=False)
except UserError:
    pass
print(sorted(m for m in ("unsloth", "trl", "transformers", "torch") if m in sys.modules))
"""
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
