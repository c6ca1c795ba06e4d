"""Shared fixtures: a tiny random-weight Llama with the embedded tokenizer, and runs of it (helpers: helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .helpers import tiny_config, write_untrained_run

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The dequantized embedded model (created once per machine, ~25 s the first time)."""
    from training_with_unsloth.models.embedded import embedded_model_dir

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


@pytest.fixture(scope="session")
def tiny_run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 4-step run of the tiny model (adapters at steps 2 and 4). Treat as read-only."""
    from training_with_unsloth.config import validate
    from training_with_unsloth.experiment import run_experiment

    return run_experiment(validate(tiny_config(tmp_path_factory.mktemp("e2e"), tiny_model_dir))).path


@pytest.fixture(scope="session")
def untrained_run_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A run directory of the tiny model without training: config.yaml and random LoRA adapters at steps 2 and 4.

    For tests of what reads a run (analysis, probes) that do not need trained weights. Treat as read-only.
    """
    return write_untrained_run(tmp_path_factory.mktemp("untrained") / "tiny", tiny_model_dir)
