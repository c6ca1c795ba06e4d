"""Shared fixtures: a tiny random-weight Llama with the embedded tokenizer, and run helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The dequantized embedded model (created once per machine, ~25 s the first time)."""
    from training_with_unsloth.embedded import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer Llama with random weights and the embedded model's tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_config(tmp_path: Path, model_dir: Path, **overrides) -> dict:
    """A raw experiment mapping that trains the tiny model for a few CPU steps."""
    raw = {
        "name": "tiny",
        "seed": 7,
        "output_dir": str(tmp_path / "runs"),
        "model": {"name": str(model_dir), "lora": {"r": 4, "alpha": 8}},
        "task": {"name": "small_sums", "eval_size": 8},
        "trainer": {
            "max_steps": 4,
            "learning_rate": 1e-3,
            "per_device_train_batch_size": 4,
            "num_generations": 2,
            "max_completion_length": 6,
            "save_steps": 2,
            "save_total_limit": 3,
            "logging_steps": 1,
            "dataloader_num_workers": 0,
        },
        "eval": {"every": 2, "num_problems": 3, "num_samples": 2, "k": [1, 2], "batch_size": 16},
        "checkpoints": {"every": 2},
        "logging": {"wandb": "disabled", "plots": True},
    }
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return raw


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 4-step run of the tiny model (adapters at steps 2 and 4). Treat as read-only."""
    from training_with_unsloth.config import validate
    from training_with_unsloth.experiment import run_experiment

    return run_experiment(validate(tiny_config(tmp_path_factory.mktemp("e2e"), tiny_model_dir))).path
