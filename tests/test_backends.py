"""training_with_unsloth/models/backends.py: backend choice, model resolution, and loading exactly the model named."""

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

from training_with_unsloth.config import validate
from training_with_unsloth.errors import ConfigError, UserError
from training_with_unsloth.models import backends


def test_auto_picks_unsloth_only_with_cuda(monkeypatch):
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    assert backends.resolve_backend("auto", cuda=True) == "unsloth"
    assert backends.resolve_backend("auto", cuda=False) == "transformers"
    monkeypatch.setattr(backends, "unsloth_installed", lambda: False)
    assert backends.resolve_backend("auto", cuda=True) == "transformers"
    assert backends.resolve_backend("transformers", cuda=True) == "transformers"


def test_unsloth_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        backends.resolve_backend("unsloth", cuda=False)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: False)
    with pytest.raises(ConfigError, match="not installed"):
        backends.resolve_backend("unsloth", cuda=True)


def test_model_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache") as info:
        backends.resolve_model_path("Qwen/Qwen2.5-1.5B-Instruct")
    assert "\n" not in str(info.value) and "huggingface-cli download" in str(info.value)
    assert backends.resolve_model_path("Qwen/Qwen2.5-1.5B-Instruct", allow_download=True) == "Qwen/Qwen2.5-1.5B-Instruct"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without config.json"):
        backends.resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="not a directory"):
        backends.resolve_model_path(str(tmp_path / "nowhere"))


def test_load_in_4bit_on_cpu_fails_clearly(tiny_model_dir):
    from training_with_unsloth.config import ModelConfig

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: 4-bit loading is allowed")
    with pytest.raises(ConfigError, match="load_in_4bit needs a CUDA GPU"):
        backends.load(ModelConfig(name=str(tiny_model_dir), load_in_4bit=True), "transformers", seed=0)


def test_transformers_backend_loads_lora_config(tiny_model_dir):
    from training_with_unsloth.config import ModelConfig

    loaded = backends.load(ModelConfig(name=str(tiny_model_dir), lora={"r": 4, "alpha": 8}), "transformers", seed=0)
    assert loaded.backend == "transformers" and loaded.peft_config.r == 4 and loaded.peft_config.lora_alpha == 8
    assert loaded.tokenizer.pad_token is not None
    assert next(loaded.model.parameters()).dtype == torch.float32


def test_nothing_imports_trl_transformers_or_peft_before_the_backend_is_chosen():
    """Unsloth must be imported before these (docs/architecture.md).

    Config, tasks, rewards and the runner must not pull them in.
    """
    import subprocess
    import sys

    from .helpers import REPO

    code = (
        "import sys, training_with_unsloth.experiment, training_with_unsloth.config, tasks, rewards; "
        "from training_with_unsloth.config import load_config; "
        "from training_with_unsloth.experiment import prepare; "
        "prepare(load_config('experiment_configs/research_controls.yaml'), cuda=False); "  # every check prepare makes
        "print(sorted(m for m in ('trl', 'transformers', 'peft', 'unsloth') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- Unsloth loads exactly the model named


def _loader_signature() -> set[str]:
    """Parameters of the installed FastLanguageModel.from_pretrained, read from source (importing unsloth patches trl)."""
    spec = importlib.util.find_spec("unsloth")
    source = Path(next(iter(spec.submodule_search_locations))) / "models" / "loader.py"
    tree = ast.parse(source.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FastLanguageModel")
    fn = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "from_pretrained")
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs}


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is installed on Linux x86-64 only")
def test_unsloths_loader_takes_the_arguments_we_pass_and_would_remap_otherwise():
    from training_with_unsloth.models.prequantized import _mapper

    assert {"use_exact_model_name", "on_model_resolved", "dtype", "max_seq_length", "load_in_4bit"} <= _loader_signature()
    remapped = [k for k, bases in _mapper().items() if "Qwen/Qwen2.5-1.5B-Instruct" in bases]
    # loaded without use_exact_model_name
    assert "unsloth/qwen2.5-1.5b-instruct-unsloth-bnb-4bit" in [k.lower() for k in remapped]


@pytest.fixture
def fake_unsloth(monkeypatch):
    """An `unsloth` module whose FastLanguageModel records its arguments (its real loader needs a GPU)."""
    calls: dict[str, dict] = {}

    class FastLanguageModel:
        resolve_to: str | None = None

        @staticmethod
        def from_pretrained(**kwargs):
            calls["from_pretrained"] = kwargs
            kwargs["on_model_resolved"](FastLanguageModel.resolve_to or kwargs["model_name"])
            tokenizer = types.SimpleNamespace(pad_token="<pad>", eos_token="<eos>")
            return object(), tokenizer

        @staticmethod
        def get_peft_model(model, **kwargs):
            calls["get_peft_model"] = kwargs
            return model

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    return calls, FastLanguageModel


@pytest.fixture
def fake_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    revision = "a" * 40
    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-1.5B-Instruct"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return revision


def test_unsloth_loads_the_named_repo_and_env_records_its_revision(fake_unsloth, fake_hub_cache, monkeypatch):
    import torch

    calls, _ = fake_unsloth
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    cfg = validate({"name": "x", "model": {"name": "Qwen/Qwen2.5-1.5B-Instruct", "load_in_4bit": True}})
    loaded = backends.load(cfg.model, "unsloth", seed=1)
    asked = calls["from_pretrained"]
    assert asked["model_name"] == "Qwen/Qwen2.5-1.5B-Instruct" and asked["use_exact_model_name"] is True
    assert asked["dtype"] == torch.float16  # the dtype bf16/fp16 were derived from, not Unsloth's own choice
    assert loaded.record == {
        "name": "Qwen/Qwen2.5-1.5B-Instruct",
        "loaded": "Qwen/Qwen2.5-1.5B-Instruct",
        "path": str(Path(huggingface_hub_cache_dir(fake_hub_cache))),
        "revision": fake_hub_cache,
        "dtype": "float16",
    }


def huggingface_hub_cache_dir(revision: str) -> str:
    import huggingface_hub.constants

    return f"{huggingface_hub.constants.HF_HUB_CACHE}/models--Qwen--Qwen2.5-1.5B-Instruct/snapshots/{revision}"


def test_a_model_other_than_the_one_named_is_refused(fake_unsloth, fake_hub_cache, monkeypatch):
    import torch

    _, fast = fake_unsloth
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
    fast.resolve_to = "unsloth/Qwen2.5-1.5B-Instruct-unsloth-bnb-4bit"
    cfg = validate({"name": "x", "model": {"name": "Qwen/Qwen2.5-1.5B-Instruct", "load_in_4bit": True}})
    with pytest.raises(UserError, match=r"Unsloth loaded 'unsloth/Qwen2.5-1.5B-Instruct-unsloth-bnb-4bit' instead"):
        backends.load(cfg.model, "unsloth", seed=1)
