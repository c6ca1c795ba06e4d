"""The run that happens is the run the YAML describes: precision, lengths, the model Unsloth loads, vLLM refused."""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

from training_with_unsloth import backends
from training_with_unsloth.config import load_config, validate
from training_with_unsloth.errors import ConfigError, UserError
from training_with_unsloth.rundir import RunDir

from .conftest import tiny_config

CONFIGS = Path(__file__).resolve().parent.parent / "experiment_configs"


# --------------------------------------------------------------------------- trainer.use_vllm


def test_use_vllm_is_refused_at_config_time():
    with pytest.raises(ConfigError, match=r"trainer.use_vllm: not supported yet") as info:
        validate({"name": "x", "trainer": {"use_vllm": True}})
    assert "\n" not in str(info.value)
    assert validate({"name": "x", "trainer": {"use_vllm": False}}).trainer["use_vllm"] is False


# --------------------------------------------------------------------------- precision follows the card


@pytest.fixture
def card_without_bf16(monkeypatch):
    """A T4: CUDA, no bfloat16."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")


@pytest.mark.parametrize("name", ["countdown", "gsm8k", "arithmetic", "addition", "anomaly_free"])
def test_gpu_configs_train_in_float16_on_a_card_without_bfloat16(card_without_bf16, name, tmp_path):
    import torch

    from training_with_unsloth.experiment import grpo_config_kwargs
    from training_with_unsloth.trainer_args import resolve_precision

    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert "bf16" not in cfg.trainer and "fp16" not in cfg.trainer, "shipped configs let the card decide"
    assert resolve_precision(cfg, cuda=True) == ("float16", {"bf16": False, "fp16": True})
    assert backends.torch_dtype(cfg.model.dtype, True) == torch.float16  # what the model is loaded in
    kw = grpo_config_kwargs(cfg, RunDir(tmp_path), [1.0], cuda=True, backend="unsloth")
    assert (kw["bf16"], kw["fp16"]) == (False, True) and "use_cpu" not in kw


def test_precision_rules_on_a_card_without_bfloat16(card_without_bf16):
    from training_with_unsloth.trainer_args import resolve_precision

    def precision(**over):
        return resolve_precision(validate(tiny_config(Path("/tmp"), Path("/tmp"), **over)), cuda=True)

    with pytest.raises(ConfigError, match=r"trainer.bf16: true, but Tesla T4 has no bfloat16"):
        precision(**{"trainer.bf16": True})
    with pytest.raises(ConfigError, match=r"model.dtype: bfloat16 is not supported by Tesla T4"):
        precision(**{"model.dtype": "bfloat16"})
    assert precision(**{"model.dtype": "float32"}) == ("float32", {"bf16": False, "fp16": False})
    assert precision(**{"trainer.fp16": True}) == ("float16", {"bf16": False, "fp16": True})


def test_precision_rules_on_a_bfloat16_card_and_on_the_cpu(monkeypatch):
    import torch

    from training_with_unsloth.trainer_args import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A10")

    def cfg(**over):
        return validate(tiny_config(Path("/tmp"), Path("/tmp"), **over))

    assert resolve_precision(cfg(), cuda=True) == ("bfloat16", {"bf16": True, "fp16": False})
    with pytest.raises(ConfigError, match=r"trainer.fp16: true contradicts the model's dtype bfloat16"):
        resolve_precision(cfg(**{"trainer.fp16": True}), cuda=True)
    with pytest.raises(ConfigError, match=r"trainer.bf16 and trainer.fp16 are both true"):
        resolve_precision(cfg(**{"trainer.fp16": True, "trainer.bf16": True}), cuda=True)
    with pytest.raises(ConfigError, match=r"trainer.bf16: true contradicts the model's dtype float16"):
        resolve_precision(cfg(**{"trainer.bf16": True, "model.dtype": "float16"}), cuda=True)
    assert resolve_precision(cfg(), cuda=False) == ("float32", {"bf16": False, "fp16": False})
    with pytest.raises(ConfigError, match=r"trainer.bf16: true is mixed precision on a CUDA GPU"):
        resolve_precision(cfg(**{"trainer.bf16": True}), cuda=False)


def test_an_error_raised_building_the_trainer_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Unsloth's trainer raises TypeError for a float16 model with bf16: it must reach the user as one line."""
    from experiments.run_experiment import main
    from training_with_unsloth import research_trainer

    def refuse(self, *args, **kwargs):
        raise TypeError("Unsloth: Model is in float16 precision but you want to use bfloat16 precision.\nmore")

    monkeypatch.setattr(research_trainer.ResearchGRPOTrainer, "__init__", refuse)
    config = tmp_path / "tiny.yaml"
    import yaml

    config.write_text(yaml.safe_dump(tiny_config(tmp_path, tiny_model_dir)))
    assert main([str(config)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback"))]
    assert err == ["error: trainer: Unsloth: Model is in float16 precision but you want to use bfloat16 precision."]
    assert not (tmp_path / "runs" / "tiny").exists()


# --------------------------------------------------------------------------- lengths before the model loads


def _tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_lengths_are_measured_with_the_chat_template_and_refused_in_one_line(tiny_model_dir, tmp_path):
    import tasks
    from training_with_unsloth.experiment import check_sequence_lengths

    tok = _tokenizer(tiny_model_dir)
    raw = tiny_config(tmp_path, tiny_model_dir, **{"model.max_seq_length": 64, "trainer.max_completion_length": 40})
    raw["task"] = {"name": "countdown", "train_size": 50, "eval_size": 10}
    raw["eval"]["max_new_tokens"] = 48
    cfg = validate(raw)
    train, eval_ = tasks.get("countdown", train_size=50, eval_size=10).build(cfg.seed)
    longest = max(
        len(tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
        for p in list(train["prompt"]) + list(eval_["prompt"])
    )
    args = types.SimpleNamespace(max_completion_length=40, chat_template_kwargs=None)
    with pytest.raises(ConfigError) as info:
        check_sequence_lengths(cfg, args, tok, train, eval_)
    msg = str(info.value)
    assert "\n" not in msg and f"is {longest} tokens" in msg and "up to 48" in msg and "model.max_seq_length is 64" in msg
    assert f"at least {longest + 48}" in msg
    fits = validate({**raw, "model": {**raw["model"], "max_seq_length": longest + 48}})
    assert check_sequence_lengths(fits, args, tok, train, eval_).needed == longest + 48


def test_lengths_cover_the_longest_variant_a_schedule_serves(tiny_model_dir, tmp_path):
    """mix_oneshot serves one-shot prompts (the longest) early; a curriculum's later phases may be longer."""
    import tasks
    from training_with_unsloth.experiment import prompt_sets

    raw = tiny_config(tmp_path, tiny_model_dir)
    raw["task"] = {"name": "countdown", "train_size": 30, "eval_size": 6, "mix_oneshot": True}
    cfg = validate(raw)
    task = tasks.get("countdown", **cfg.task.params)
    train, eval_ = task.build(cfg.seed)
    task.set_progress(1.0)  # fetched now, every prompt would be zero-shot
    assert all(len(p) == 2 for p in train["prompt"])
    sets = prompt_sets(cfg, train, eval_)
    assert all(len(p) > 2 for p in sets["train set"]), "the stored one-shot prompts must be measured"

    raw = tiny_config(tmp_path, tiny_model_dir)
    raw["curriculum"] = {"phases": [{"params": {"max_operand": 9}, "advance": {"window": 2}}, {"params": {"max_operand": 900}}]}
    sets = prompt_sets(validate(raw), None, tasks.get("small_sums").build(7)[1])
    assert [k for k in sets if k.startswith("train set")] == ["train set, curriculum.phases[0]", "train set, curriculum.phases[1]"]
    longest = {k: max(len(p[-1]["content"]) for p in v) for k, v in sets.items()}
    assert longest["train set, curriculum.phases[1]"] > longest["train set, curriculum.phases[0]"]


def test_dry_run_refuses_a_max_seq_length_that_cannot_hold_the_completions(capsys):
    """countdown.yaml on a machine without its tokenizer: estimated with the embedded one, certain from the budget."""
    from experiments.run_experiment import main

    assert main([str(CONFIGS / "countdown.yaml"), "--dry-run", "--set", "model.max_seq_length=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the longest prompt (train set) is ") and "\n" not in err
    assert "completions take up to 160" in err and "model.max_seq_length is 64" in err


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
    from training_with_unsloth.prequantized import _mapper

    assert {"use_exact_model_name", "on_model_resolved", "dtype", "max_seq_length", "load_in_4bit"} <= _loader_signature()
    remapped = [k for k, bases in _mapper().items() if "Qwen/Qwen2.5-1.5B-Instruct" in bases]
    assert "unsloth/qwen2.5-1.5b-instruct-unsloth-bnb-4bit" in [k.lower() for k in remapped]  # loaded without use_exact_model_name


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
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
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
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    fast.resolve_to = "unsloth/Qwen2.5-1.5B-Instruct-unsloth-bnb-4bit"
    cfg = validate({"name": "x", "model": {"name": "Qwen/Qwen2.5-1.5B-Instruct", "load_in_4bit": True}})
    with pytest.raises(UserError, match=r"Unsloth loaded 'unsloth/Qwen2.5-1.5B-Instruct-unsloth-bnb-4bit' instead"):
        backends.load(cfg.model, "unsloth", seed=1)
