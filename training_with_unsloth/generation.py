"""Faster `generate` on the transformers backend, with the completions plain `generate` gives.

What a GRPO step and Pass@K ask of `model.generate` on a CPU is dominated by matrix products of a
few rows (one token of each of 16 or 64 sequences per decode step), where the per-call cost of each
product matters more than its arithmetic. `fast_generation(model)` makes three changes for the
duration of each `generate` call; each computes the same numbers up to float32 rounding, consumes
the random number generator exactly as before, and is skipped wherever that would not hold:

1. **Shared prompt prefill.** Rows with the same prompt (GRPO's `num_generations` copies, Pass@K's
   `num_samples`) are prefilled once; their KV cache is copied to every row and `generate` continues
   from it (transformers' own "reuse a cache" path). Skipped when a dropout is active (the prefill
   would draw other random numbers), when the generation config names a cache implementation, beams
   or several sequences per row, or when `generate` gets inputs other than token ids and a mask.
2. **LoRA merged into temporary weights.** A LoRA layer costs two extra products per token
   (`x A^T`, then `B`); with `W + s B A` computed once per call it costs none. The base weights are
   never modified. Only float32 weights (in 16 bits the sum would round the adapter's small update
   away), vanilla LoRA (no DoRA or other variant, no LoRA bias) and inactive LoRA dropout; and only
   while the merged copies take at most `MERGE_LIMIT_BYTES` (they live for the call, beside the base).
3. **oneDNN products on a CPU.** Float32 linear layers of 8 rows or more go through oneDNN's inner
   product (`torch.ops.mkldnn._linear_pointwise`, which torch's compiler uses) instead of MKL's sgemm,
   which is 1.5-1.7x slower at 16-94 rows on the machines we measured (`bench/generation.py`).
   Single rows (streaming one answer) keep MKL, which is faster there.

The Unsloth backend keeps Unsloth's own generation. `model.fast_generation: false` turns all of this off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_MIN_ROWS = 8  # below this MKL's sgemm is faster (1 row: oneDNN 0.4-0.8x)
MERGE_LIMIT_BYTES = 2 * 1024**3  # temporary merged weights above this (a model past ~0.5B in float32): no merging


def onednn_available() -> bool:
    """Whether torch has oneDNN and the inner-product op torch's compiler uses on CPUs."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, onednn: bool) -> torch.Tensor:
    """`F.linear`, through oneDNN for float32 CPU inputs of `ONEDNN_MIN_ROWS` rows or more when `onednn`."""
    if (
        onednn
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() >= ONEDNN_MIN_ROWS * x.shape[-1]
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    ):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _dropout_active(module: nn.Module) -> bool:
    return isinstance(module, nn.Dropout) and module.training and module.p > 0


def stochastic(model: nn.Module) -> bool:
    """Whether a forward pass of `model` draws random numbers (a dropout in training mode)."""
    if not model.training:
        return False
    config = getattr(model, "config", None)
    if config is not None and float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return True
    return any(_dropout_active(m) for m in model.modules())


def merged_lora_weight(layer: nn.Module) -> torch.Tensor | None:
    """The weight `layer` (a PEFT LoRA Linear) currently computes with, as one tensor; None where merging is not exact.

    `W` with the adapters disabled, `W + sum of s B A` over the active adapters otherwise. None for
    non-float32 weights, LoRA variants (DoRA), a LoRA bias, an already merged layer and active dropout.
    """
    base = layer.get_base_layer()
    weight = getattr(base, "weight", None)
    if not isinstance(base, nn.Linear) or type(weight) is not nn.Parameter or weight.dtype != torch.float32:
        return None
    if layer.merged:
        return None
    if layer.disable_adapters:
        return weight
    merged = weight
    for name in layer.active_adapters:
        if name not in layer.lora_A:
            continue
        if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name, False):
            return None
        if _dropout_active(layer.lora_dropout[name]):
            return None
        if layer.lora_B[name].weight.dtype != torch.float32:
            return None
        merged = merged + layer.get_delta_weight(name)
    return merged


def _merged_forward(layer: nn.Module, weight: torch.Tensor, onednn: bool) -> Callable[..., torch.Tensor]:
    bias = layer.get_base_layer().bias

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:  # e.g. PEFT's adapter_names (a mixed batch): the layer's own forward
            return type(layer).forward(layer, x, *args, **kwargs)
        return linear(x, weight, bias, onednn=onednn)

    return forward


@contextlib.contextmanager
def _fast_linears(model: nn.Module, onednn: bool) -> Iterator[int]:
    """Replace the forward of LoRA Linear layers (merged weights) and of float32 CPU Linear layers (oneDNN).

    Yields the number of layers replaced; every replacement is undone on exit.
    """
    from peft.tuners.lora import Linear as LoraLinear

    replaced: list[nn.Module] = []
    covered: set[int] = set()  # modules inside a merged LoRA layer: never called while it is replaced

    def replace(module: nn.Module, forward: Callable[..., torch.Tensor]) -> None:
        module.forward = forward
        replaced.append(module)

    lora_layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    weights = [getattr(m.get_base_layer(), "weight", None) for m in lora_layers]
    merge = sum(w.nbytes for w in weights if isinstance(w, torch.Tensor)) <= MERGE_LIMIT_BYTES
    try:
        with torch.no_grad():
            for module in model.modules():
                if id(module) in covered:
                    continue
                if isinstance(module, LoraLinear):
                    weight = merged_lora_weight(module) if merge else None
                    if weight is None:
                        continue
                    covered.update(id(m) for m in module.modules() if m is not module)
                    replace(module, _merged_forward(module, weight, onednn))
                elif onednn and type(module) is nn.Linear and module.weight.dtype == torch.float32:
                    if module.weight.device.type != "cpu":
                        continue
                    replace(module, lambda x, _m=module: linear(x, _m.weight, _m.bias, onednn=True))
        yield len(replaced)
    finally:
        for module in replaced:
            del module.forward


def _unique_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """(the first row of each distinct (ids, mask) row, the distinct-row index of every row)."""
    seen: dict[tuple, int] = {}
    firsts: list[int] = []
    inverse: list[int] = []
    for i, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist(), strict=True)):
        key = (tuple(ids), tuple(mask))
        if key not in seen:
            seen[key] = len(firsts)
            firsts.append(i)
        inverse.append(seen[key])
    return firsts, inverse


def _can_share_prefill(model: nn.Module, input_ids: Any, attention_mask: Any, config: Any, extra: dict) -> bool:
    if extra or not isinstance(input_ids, torch.Tensor) or not isinstance(attention_mask, torch.Tensor):
        return False
    if input_ids.dim() != 2 or input_ids.size(0) < 2 or input_ids.size(1) < 2 or attention_mask.shape != input_ids.shape:
        return False
    model_config = getattr(model, "config", None)
    if model_config is None or getattr(model_config, "is_encoder_decoder", False):
        return False
    if config is not None and (
        getattr(config, "cache_implementation", None) is not None
        or (getattr(config, "num_beams", 1) or 1) != 1
        or (getattr(config, "num_return_sequences", 1) or 1) != 1
        or getattr(config, "use_cache", True) is False
    ):
        return False
    return not stochastic(model)


def _prefilled_cache(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any | None:
    """A KV cache of every row's prompt but its last token, each distinct prompt computed once (None: all distinct)."""
    from transformers import DynamicCache

    firsts, inverse = _unique_rows(input_ids, attention_mask)
    if len(firsts) == input_ids.size(0):
        return None
    index = torch.tensor(firsts, device=input_ids.device)
    ids, mask = input_ids[index, :-1], attention_mask[index, :-1]
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as generate derives them from the mask
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.reorder_cache(torch.tensor(inverse, device=input_ids.device))
    return cache


def fast_generate(model: nn.Module, generate: Callable[..., Any], *, onednn: bool | None = None) -> Callable[..., Any]:
    """`generate` (the model's bound method) with the three changes above applied around each call."""
    onednn = onednn_available() if onednn is None else onednn

    def wrapped(input_ids: Any = None, attention_mask: Any = None, generation_config: Any = None, **kwargs: Any):
        config = generation_config if generation_config is not None else getattr(model, "generation_config", None)
        with torch.no_grad(), _fast_linears(model, onednn):
            if _can_share_prefill(model, input_ids, attention_mask, config, kwargs):
                cache = _prefilled_cache(model, input_ids, attention_mask)
                if cache is not None:
                    kwargs["past_key_values"] = cache
            return generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config, **kwargs)

    return wrapped


@contextlib.contextmanager
def patched_generate(models: list[nn.Module], wrap: Callable[[nn.Module, Callable[..., Any]], Callable[..., Any]]):
    """Replace `generate` on each distinct model by `wrap(model, its generate)`; restored on exit."""
    distinct = list({id(m): m for m in models}.values())
    originals = {id(m): m.__dict__.get("generate") for m in distinct}
    for m in distinct:
        m.generate = wrap(m, m.generate)
    try:
        yield
    finally:
        for m in distinct:
            if originals[id(m)] is None:
                del m.generate
            else:
                m.generate = originals[id(m)]
