"""The fast generation path (generation.py) gives plain `generate`'s completions and leaves the model as it was.

The tests that sample are in the slow tier (a second or so each on the tiny model; the trainer one about 5 s)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training_with_unsloth import generation


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    """The tiny Llama with a LoRA adapter on every linear layer whose B is non-zero (so the adapter matters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    return model.eval(), tok


def _batch(tok, prompts: list[str], copies: int) -> dict[str, torch.Tensor]:
    rows = [p for p in prompts for _ in range(copies)]
    return dict(tok(rows, return_tensors="pt", padding=True, padding_side="left"))


def _sample(model, generate, enc, *, seed: int, do_sample: bool = True, **config) -> torch.Tensor:
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=10, do_sample=do_sample, top_k=0, pad_token_id=0, eos_token_id=None, **config)
    torch.manual_seed(seed)
    with torch.no_grad():
        return generate(**enc, generation_config=cfg)


@pytest.mark.slow
@pytest.mark.parametrize("do_sample", [True, False])
def test_same_completions_as_plain_generate(lora_model, do_sample):
    model, tok = lora_model
    enc = _batch(tok, ["What is 2 + 3?", "Hi", "A much longer prompt than the others, to pad the rest"], copies=4)
    plain = [_sample(model, model.generate, enc, seed=s, do_sample=do_sample) for s in (0, 1)]
    fast = generation.fast_generate(model, model.generate)
    ours = [_sample(model, fast, enc, seed=s, do_sample=do_sample) for s in (0, 1)]
    for a, b in zip(plain, ours, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(plain[0], plain[1]) or not do_sample, "the seeds must give different samples"


@pytest.mark.slow
def test_prefill_is_shared_between_copies_of_a_prompt(lora_model, monkeypatch):
    """The distinct prompts are prefilled once (one forward of 2 rows) and the cache serves all 8 rows."""
    model, tok = lora_model
    enc = _batch(tok, ["What is 2 + 3?", "What is 40 + 2?"], copies=4)
    seen: list[tuple[int, int]] = []
    hook = model.get_base_model().model.embed_tokens.register_forward_hook(
        lambda _m, args, _out: seen.append(tuple(args[0].shape))
    )
    try:
        _sample(model, generation.fast_generate(model, model.generate), enc, seed=0)
    finally:
        hook.remove()
    length = enc["input_ids"].size(1)
    assert seen[0] == (2, length - 1)  # the shared prefill: each distinct prompt once, all but its last token
    assert seen[1] == (8, 1)  # generate continues from the cache with every row's last prompt token
    assert all(shape == (8, 1) for shape in seen[1:])


@pytest.mark.slow
def test_base_weights_and_generate_are_restored(lora_model):
    model, tok = lora_model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    methods = {n: m.__dict__.get("forward") for n, m in model.named_modules()}
    enc = _batch(tok, ["What is 2 + 3?"], copies=3)
    with generation.patched_generate([model, model], generation.fast_generate):
        assert "generate" in model.__dict__
        _sample(model, model.generate, enc, seed=0)
    assert "generate" not in model.__dict__
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert {n: m.__dict__.get("forward") for n, m in model.named_modules()} == methods


def test_merged_weight_is_what_the_lora_layer_computes(lora_model):
    from peft.tuners.lora import Linear as LoraLinear

    model, _ = lora_model
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    x = torch.randn(5, layer.in_features)
    merged = generation.merged_lora_weight(layer)
    with torch.no_grad():
        assert torch.allclose(F.linear(x, merged, layer.get_base_layer().bias), layer(x), atol=1e-5)
        with model.disable_adapter():
            assert generation.merged_lora_weight(layer) is layer.get_base_layer().weight


def test_merging_stops_at_the_memory_limit(lora_model, monkeypatch):
    """Every LoRA layer is merged (MKL kept: onednn off); above MERGE_LIMIT_BYTES of merged copies, none is."""
    from peft.tuners.lora import Linear as LoraLinear

    model, _ = lora_model
    count = sum(isinstance(m, LoraLinear) for m in model.modules())
    with generation._fast_linears(model, onednn=False) as replaced:
        assert replaced == count > 0
    monkeypatch.setattr(generation, "MERGE_LIMIT_BYTES", 0)
    with generation._fast_linears(model, onednn=False) as replaced:
        assert replaced == 0


def test_nothing_is_merged_where_merging_would_change_the_computation(tiny_model_dir):
    """Active LoRA dropout (training mode) draws random numbers; DoRA is not W + sBA; neither is merged."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as LoraLinear
    from transformers import AutoModelForCausalLM

    def first_layer(**lora):
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM", **lora))
        return model, next(m for m in model.modules() if isinstance(m, LoraLinear))

    model, layer = first_layer(lora_dropout=0.1)
    model.train()
    assert generation.merged_lora_weight(layer) is None
    assert generation.stochastic(model)
    model.eval()
    assert generation.merged_lora_weight(layer) is not None
    assert not generation.stochastic(model)
    _, layer = first_layer(use_dora=True)
    assert generation.merged_lora_weight(layer) is None


def test_no_shared_prefill_where_generate_is_asked_for_something_else(lora_model):
    from transformers import GenerationConfig

    model, tok = lora_model
    enc = _batch(tok, ["What is 2 + 3?"], copies=2)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    plain = GenerationConfig(max_new_tokens=2)
    assert generation._can_share_prefill(model, ids, mask, plain, {})
    assert not generation._can_share_prefill(model, ids, mask, GenerationConfig(cache_implementation="static"), {})
    assert not generation._can_share_prefill(model, ids, mask, GenerationConfig(num_beams=2), {})
    assert not generation._can_share_prefill(model, ids, mask, plain, {"pixel_values": torch.zeros(1)})
    assert not generation._can_share_prefill(model, ids[:1], mask[:1], plain, {})  # one row
    assert not generation._can_share_prefill(model, ids[:, -1:], mask[:, -1:], plain, {})  # one token: nothing to prefill


@pytest.mark.skipif(not generation.onednn_available(), reason="torch without oneDNN")
def test_onednn_products_agree_with_f_linear_and_single_rows_keep_mkl():
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=gen), torch.randn(96, generator=gen)
    x = torch.randn(2, 8, 64, generator=gen)
    assert torch.allclose(generation.linear(x, w, b, onednn=True), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    one = torch.randn(1, 64, generator=gen)
    assert torch.equal(generation.linear(one, w, b, onednn=True), F.linear(one, w, b))
    needs_grad = x.clone().requires_grad_()
    out = generation.linear(needs_grad, w, b, onednn=True)
    out.sum().backward()  # with autograd on, F.linear (oneDNN's op has no backward)
    assert needs_grad.grad is not None


@pytest.mark.slow
def test_plain_linear_layers_go_through_onednn_while_generating(lora_model):
    """The LM head (a plain nn.Linear, not adapted) is replaced during the call and restored after it."""
    model, tok = lora_model
    head = model.get_output_embeddings()
    calls: list[int] = []
    original = generation.linear

    def counting(x, weight, bias, *, onednn):
        if weight is head.weight:
            calls.append(int(onednn))
        return original(x, weight, bias, onednn=onednn)

    generation.linear = counting
    try:
        _sample(model, generation.fast_generate(model, model.generate, onednn=True), _batch(tok, ["Hi"], 2), seed=0)
    finally:
        generation.linear = original
    assert calls and all(calls)
    assert "forward" not in head.__dict__ and isinstance(head, nn.Linear)


@pytest.mark.slow
def test_the_trainer_generates_the_same_completions_with_and_without_it(tmp_path, tiny_model_dir):
    """TRL's generation path in training mode (GRPO's copies of each prompt) and Pass@K's, fast on and off."""
    from .helpers import tiny_trainer

    trainer, args, train_ds = tiny_trainer(tmp_path, tiny_model_dir, {"trainer.max_completion_length": 8}, callbacks=[])
    assert trainer.fast_generation
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    prompts = [train_ds[i]["prompt"] for i in range(2)]
    prompt_ids, _, _ = trainer._tokenize_prompts([p for p in prompts for _ in range(args.num_generations)])

    def both(fast: bool):
        trainer.fast_generation = fast
        trainer.model.train()
        torch.manual_seed(0)
        training, _ = trainer._generate_single_turn(prompt_ids, None, {}, args.num_generations)
        torch.manual_seed(0)
        texts, _ = trainer.generate_completions(
            prompts, num_samples=3, greedy=False, temperature=1.0, max_new_tokens=8, batch_size=6
        )
        return training, texts

    assert both(True) == both(False)
    assert trainer.model.training and "generate" not in trainer.model.__dict__
