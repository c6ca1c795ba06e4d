"""The --dry-run memory estimate: parameter counts from a config, the parts, and the 16 GB verdict."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.helpers import tiny_config
from training_with_unsloth.config import validate
from training_with_unsloth.memory import GIB, KNOWN, estimate, memory_text, peak, shape_of


def _args(**kw):
    base = dict(per_device_train_batch_size=16, max_completion_length=160, gradient_checkpointing=True,
                optim="adamw_8bit", generation_batch_size=None, steps_per_generation=4)  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_the_parameter_count_is_the_models_own():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert shape_of(config).params == sum(p.numel() for p in model.parameters())


def test_the_published_qwen_shapes_give_their_published_sizes():
    assert KNOWN["Qwen/Qwen2.5-1.5B-Instruct"].params == pytest.approx(1.54e9, rel=0.01)
    assert KNOWN["Qwen/Qwen2.5-0.5B-Instruct"].params == pytest.approx(0.494e9, rel=0.01)
    assert KNOWN["Qwen/Qwen3-0.6B"].params == pytest.approx(0.596e9, rel=0.02)


def _cfg(tmp_path, **overrides):
    return validate(tiny_config(tmp_path, tmp_path, **{"model.name": "Qwen/Qwen2.5-1.5B-Instruct", **overrides}))


def test_parts_follow_precision_checkpointing_and_optimizer(tmp_path):
    shape = KNOWN["Qwen/Qwen2.5-1.5B-Instruct"]
    four = {p.name: p.bytes for p in estimate(_cfg(tmp_path, **{"model.load_in_4bit": True}), _args(), shape)}
    sixteen = {p.name: p.bytes for p in estimate(_cfg(tmp_path), _args(), shape)}
    assert four["base weights"] < 0.4 * sixteen["base weights"]
    assert sixteen["base weights"] == pytest.approx(shape.params * 2)
    off = {p.name: p.bytes for p in estimate(_cfg(tmp_path), _args(gradient_checkpointing=False), shape)}
    assert off["activations"] > 5 * sixteen["activations"]
    adam = {p.name: p.bytes for p in estimate(_cfg(tmp_path), _args(optim="adamw_torch"), shape)}
    assert adam["optimizer"] == 4 * sixteen["optimizer"]
    assert sixteen["logits"] == 16 * 160 * 151936 * 6
    assert peak(estimate(_cfg(tmp_path), _args(), shape)) > sixteen["base weights"]


def test_the_verdict_for_a_16_gb_card(tmp_path):
    text = memory_text(_cfg(tmp_path, **{"model.load_in_4bit": True}), _args())
    assert text.startswith("memory     peak GPU memory, estimated (Qwen/Qwen2.5-1.5B-Instruct")
    assert "fits a 16 GB card" in text and "does not fit" not in text
    assert {"base weights", "LoRA weights", "gradients", "optimizer", "activations", "logits", "KV cache", "peak"} <= {
        line.split("  ")[1].strip() for line in text.splitlines()[1:]
    }
    huge = memory_text(_cfg(tmp_path), _args(per_device_train_batch_size=256, gradient_checkpointing=False))
    assert "does not fit a 16 GB card" in huge
    unknown = memory_text(_cfg(tmp_path, **{"model.name": "someone/unknown-model"}), _args())
    assert unknown.startswith("memory     no estimate") and GIB > 0
