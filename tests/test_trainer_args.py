"""training_with_unsloth/trainer_args.py: precision follows the card (bf16 / fp16 / float32) unless the YAML asks otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from training_with_unsloth.config import load_config, validate
from training_with_unsloth.errors import ConfigError
from training_with_unsloth.models import backends
from training_with_unsloth.rundir import RunDir

from .helpers import tiny_config

CONFIGS = Path(__file__).resolve().parent.parent / "experiment_configs"


@pytest.fixture
def card_without_bf16(monkeypatch):
    """A T4: CUDA, no bfloat16."""
    import torch

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")


@pytest.mark.parametrize("name", ["countdown", "gsm8k", "arithmetic", "addition", "anomaly_free"])
def test_gpu_configs_train_in_float16_on_a_card_without_bfloat16(card_without_bf16, name, tmp_path):
    import torch

    from training_with_unsloth.assembly import grpo_config_kwargs
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

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))
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
