"""The --dry-run memory estimate: parameter counts, the parts each backend allocates, and the 16 GB verdict."""

from __future__ import annotations

import ast
import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.helpers import REPO, tiny_config
from training_with_unsloth.config import validate
from training_with_unsloth.memory import (
    GIB,
    KNOWN,
    UNSLOTH_KV_INCREMENT,
    estimate,
    memory_text,
    peak,
    shape_of,
    target,
    unsloth_chunk_rows,
    unsloth_rows_per_forward,
)

QWEN = KNOWN["Qwen/Qwen2.5-1.5B-Instruct"]


def _args(**kw):
    base = dict(per_device_train_batch_size=16, max_completion_length=160, gradient_checkpointing=True,
                optim="adamw_8bit", generation_batch_size=None, steps_per_generation=4, gradient_accumulation_steps=4,
                num_iterations=1, beta=0.0)  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def _cfg(tmp_path, **overrides):
    return validate(tiny_config(tmp_path, tmp_path, **{"model.name": "Qwen/Qwen2.5-1.5B-Instruct", **overrides}))


def _parts(cfg, args, **where) -> dict[str, float]:
    return {p.name: p.bytes for p in estimate(cfg, args, QWEN, **where)}


def _installed(module: str) -> Path | None:
    """The source file of an installed module, found without importing it (importing Unsloth patches the stack)."""
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def test_the_parameter_count_is_the_models_own():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert shape_of(config).params == sum(p.numel() for p in model.parameters())


def test_the_published_qwen_shapes_give_their_published_sizes():
    assert QWEN.params == pytest.approx(1.54e9, rel=0.01)
    assert KNOWN["Qwen/Qwen2.5-0.5B-Instruct"].params == pytest.approx(0.494e9, rel=0.01)
    assert KNOWN["Qwen/Qwen3-0.6B"].params == pytest.approx(0.596e9, rel=0.02)


def test_parts_follow_precision_checkpointing_and_optimizer(tmp_path):
    four = _parts(_cfg(tmp_path, **{"model.load_in_4bit": True}), _args())
    sixteen = _parts(_cfg(tmp_path), _args())
    assert four["base weights"] < 0.4 * sixteen["base weights"]
    assert sixteen["base weights"] == pytest.approx(QWEN.params * 2)
    off = _parts(_cfg(tmp_path), _args(gradient_checkpointing=False))
    assert off["activations"] > 5 * sixteen["activations"]
    adam = _parts(_cfg(tmp_path), _args(optim="adamw_torch"))
    assert adam["optimizer"] == 4 * sixteen["optimizer"]
    assert peak(estimate(_cfg(tmp_path), _args(), QWEN)) > sixteen["base weights"]


def test_the_log_prob_head_is_unsloths_chunk_not_a_full_logits_buffer(tmp_path):
    """Unsloth applies the LM head to row chunks of hidden states: one 512-row float32 chunk for Qwen's vocabulary,
    whatever the batch; the CPU fallback keeps the float32 log-softmax and its exp of every completion token."""
    cfg = _cfg(tmp_path)
    unsloth = _parts(cfg, _args())
    assert unsloth_chunk_rows(16 * 160, QWEN) == 512
    assert unsloth["logits"] == 512 * 151936 * 4  # 0.29 GiB, not 16 x 160 x 151936 x 6 = 2.3 GiB
    assert _parts(cfg, _args(per_device_train_batch_size=64))["logits"] == unsloth["logits"]
    trl_cuda = _parts(cfg, _args(), backend="transformers", cuda=True)
    assert trl_cuda["logits"] == 2560 * 32768 * 2  # TRL's fused head: one token x vocabulary tile in bfloat16
    cpu = _parts(cfg, _args(), backend="transformers", cuda=False)
    assert cpu["logits"] == 2560 * 151936 * 8 + 1024 * 151936 * 8


def test_the_chunk_rows_are_unsloth_zoos_own_formula():
    """`unsloth_chunk_rows` against `fused_linear_rows` taken from the installed unsloth_zoo source (not imported:
    importing it patches torch), with its constants at their defaults and the 2 GiB budget."""
    path = _installed("unsloth_zoo")
    source = path.parent / "fused_losses" / "fused_linear.py" if path else None
    if source is None or not source.is_file():
        pytest.skip("unsloth_zoo is not installed here (Linux x86-64 only)")
    tree = ast.parse(source.read_text())
    wanted = {"_pow2", "fused_linear_rows", "_MIN_LOGITS", "_MIN_ROWS", "_MAX_ROWS"}
    nodes = [
        n for n in tree.body
        if (isinstance(n, ast.FunctionDef) and n.name in wanted)
        or (isinstance(n, ast.Assign) and any(getattr(t, "id", None) in wanted for t in n.targets))
    ]  # fmt: skip
    assert {getattr(n, "name", None) or n.targets[0].id for n in nodes} == wanted
    space = {"math": math, "_env_float": lambda name, default: default, "_budget_bytes": lambda device: 2 * GIB}
    exec(compile(ast.Module(body=nodes, type_ignores=[]), str(source), "exec"), space)  # noqa: S102 - the installed source
    for shape in (QWEN, KNOWN["Qwen/Qwen3-0.6B"], QWEN.__class__(49152, 576, 30, 9, 3, 64, 1536, True)):
        for tokens in (1, 100, 2560, 10240, 60000, 400000):
            assert unsloth_chunk_rows(tokens, shape) == space["fused_linear_rows"](tokens, shape.hidden, shape.vocab), (
                shape,
                tokens,
            )


def test_unsloth_offloads_checkpointed_activations_to_the_host(tmp_path):
    """Under Unsloth's checkpointing the layer inputs live in host memory: the GPU keeps one layer's recompute and
    its staging buffers, not the 28 layer inputs torch's checkpointing keeps."""
    cfg = _cfg(tmp_path)
    unsloth = _parts(cfg, _args())
    torch_gc = _parts(cfg, _args(), backend="transformers", cuda=True)
    layer_in = 2 * 16 * cfg.model.max_seq_length * QWEN.hidden
    assert torch_gc["activations"] - unsloth["activations"] == (QWEN.layers - 2) * layer_in
    detail = next(p.detail for p in estimate(cfg, _args(), QWEN) if p.name == "activations")
    assert "host memory" in detail and "offloaded" in detail
    assert 'use_gradient_checkpointing="unsloth"' in (REPO / "training_with_unsloth" / "models" / "backends.py").read_text()
    zoo = _installed("unsloth_zoo")
    if zoo is not None and (zoo.parent / "gradient_checkpointing.py").is_file():
        text = (zoo.parent / "gradient_checkpointing.py").read_text()
        assert "class Unsloth_Offloaded_Gradient_Checkpointer" in text
        assert 'hidden_states.to("cpu", non_blocking = True)' in text


def test_the_no_grad_scoring_passes_are_a_phase_of_their_own(tmp_path):
    """TRL's reference pass (beta), its old-policy pass (accumulation not aligned with generation) and the KL
    diagnostics each score the generation batch without autograd; none of them: no part."""
    quiet = _cfg(tmp_path, **{"kl.diagnostics": False})
    none = estimate(quiet, _args(), QWEN)
    assert next(p for p in none if p.name == "scoring").bytes == 0
    with_ref = {p.name: p for p in estimate(quiet, _args(beta=0.04), QWEN)}
    assert with_ref["scoring"].bytes > 0 and "reference (trainer.beta 0.04)" in with_ref["scoring"].detail
    old = {p.name: p for p in estimate(quiet, _args(gradient_accumulation_steps=3, steps_per_generation=2), QWEN)}
    assert "old policy" in old["scoring"].detail
    diagnostics = {p.name: p for p in estimate(_cfg(tmp_path), _args(), QWEN)}
    assert "reference (KL diagnostics, every 2 steps)" in diagnostics["scoring"].detail
    assert "policy (KL diagnostics" in diagnostics["scoring"].detail  # Unsloth's loss keeps no log-probs
    cpu = {p.name: p for p in estimate(_cfg(tmp_path), _args(), QWEN, backend="transformers", cuda=False)}
    assert "policy" not in cpu["scoring"].detail  # TRL's loss forward measures the policy for free
    # Unsloth puts the whole generation batch through one no-grad forward when the free memory allows
    assert unsloth_rows_per_forward(64, 512, QWEN, 2, 10 * GIB) == 64
    assert unsloth_rows_per_forward(64, 512, QWEN, 2, 1 * GIB) < 64
    by = {p.name: p.bytes for p in estimate(_cfg(tmp_path), _args(), QWEN)}
    assert by["scoring"] > max(by["gradients"] + by["activations"] + by["logits"], by["KV cache"], by["Pass@K cache"])
    assert peak(estimate(_cfg(tmp_path), _args(), QWEN)) == pytest.approx(
        by["base weights"] + by["LoRA weights"] + by["optimizer"] + by["scoring"]
    )  # the largest phase decides the peak


def test_pass_at_k_generation_is_sized_by_eval_batch_size(tmp_path):
    small = _parts(_cfg(tmp_path, **{"eval.batch_size": 8}), _args())
    large = _parts(_cfg(tmp_path, **{"eval.batch_size": 128}), _args())
    assert large["Pass@K cache"] == pytest.approx(16 * small["Pass@K cache"])
    wide = _parts(_cfg(tmp_path, **{"eval.batch_size": 8}), _args(per_device_train_batch_size=64))
    assert wide["Pass@K cache"] == small["Pass@K cache"]  # the training batch does not size Pass@K
    assert _parts(_cfg(tmp_path, **{"eval.enabled": False}), _args())["Pass@K cache"] == 0
    # the training generation batch is still the trainer's
    assert small["KV cache"] == _parts(_cfg(tmp_path, **{"eval.batch_size": 128}), _args())["KV cache"]


def test_generation_caches_follow_each_backend(tmp_path):
    """Unsloth's decode cache holds the prompt + 513 positions per layer; a transformers cache prompt + new tokens."""
    cfg = _cfg(tmp_path, **{"eval.enabled": False})
    s, per_position = cfg.model.max_seq_length, QWEN.layers * 2 * QWEN.kv_heads * QWEN.head_dim * 2
    logits = 64 * QWEN.vocab * 6
    unsloth = _parts(cfg, _args())["KV cache"]
    assert unsloth == 64 * (s - 160 + UNSLOTH_KV_INCREMENT + 1) * per_position + logits
    assert _parts(cfg, _args(), backend="transformers", cuda=True)["KV cache"] == 64 * s * per_position + logits
    zoo = _installed("unsloth")
    if zoo is not None and (zoo.parent / "models" / "_decode_graphs.py").is_file():
        assert "KV_CACHE_INCREMENT = 512" in (zoo.parent / "models" / "llama.py").read_text()
        graphs = (zoo.parent / "models" / "_decode_graphs.py").read_text()
        assert "(increment + seq_len + 1, 2, bsz, n_kv_heads, head_dim)" in graphs


def test_the_target_is_the_backend_and_device_that_run_the_config(tmp_path):
    four = target(_cfg(tmp_path, **{"model.load_in_4bit": True}), "transformers", False)
    assert (four.backend, four.cuda, four.compute) == ("unsloth", True, 2) and "needs" in four.why
    cpu = target(_cfg(tmp_path), "transformers", False)
    assert (cpu.backend, cpu.cuda, cpu.compute, cpu.dtype) == ("transformers", False, 4, "float32")
    gpu = target(_cfg(tmp_path, **{"model.dtype": "float16"}), "unsloth", True)
    assert (gpu.compute, gpu.dtype) == (2, "float16")


def test_the_verdict_for_a_16_gb_card(tmp_path):
    text = memory_text(_cfg(tmp_path, **{"model.load_in_4bit": True}), _args())
    assert text.startswith("memory     peak GPU memory, estimated for unsloth on a CUDA GPU")
    assert "fits a 16 GB card" in text and "does not fit" not in text
    assert {"base weights", "LoRA weights", "gradients", "optimizer", "activations", "logits", "KV cache", "Pass@K cache",
            "scoring", "peak"} <= {line.split("  ")[1].strip() for line in text.splitlines()[1:]}  # fmt: skip
    huge = memory_text(
        _cfg(tmp_path), _args(per_device_train_batch_size=256, gradient_checkpointing=False), backend="unsloth", cuda=True
    )
    assert "does not fit a 16 GB card" in huge
    cpu = memory_text(_cfg(tmp_path), _args(), backend="transformers", cuda=False)
    assert "memory (CPU RAM), estimated for transformers on the CPU, float32" in cpu and "no GPU verdict" in cpu
    assert "on a GPU" in cpu and "where auto picks unsloth on a CUDA GPU" in cpu
    unknown = memory_text(_cfg(tmp_path, **{"model.name": "someone/unknown-model"}), _args())
    assert unknown.startswith("memory     no estimate")
