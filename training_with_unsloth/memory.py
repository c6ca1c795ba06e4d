"""Peak GPU memory of a run, estimated before any model loads (what `--dry-run` prints).

Each part is a line: the base weights at their precision (4-bit NF4 with its quantisation constants, or
16/32-bit), the LoRA weights, their gradients and optimizer states, the activations of one loss
micro-batch (with and without gradient checkpointing), the logits (or log-prob) buffer of
`batch x completion x vocabulary`, and the KV cache of one generation batch. Training and generation
do not overlap, so the peak is the resident part (weights, LoRA, gradients, optimizer) plus the larger
of the two transient ones. The formulas are upper-bound style and omit the CUDA context and allocator
slack, which the verdict adds as a fixed margin. `bench/vram_profile.py` measures the same phases on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
USABLE_16GB = 15.0 * GIB  # what a "16 GB" card (T4, V100-16GB) reports as total memory
CONTEXT = 0.5 * GIB  # CUDA context, cuBLAS workspace, allocator fragmentation (not in the estimate's parts)


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder-only transformer's config."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear module of one layer (Llama/Qwen naming)."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }  # fmt: skip

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linear_shapes().values())

    @property
    def params(self) -> int:
        return self.embedding_params + self.linear_params + (2 * self.layers + 1) * self.hidden


# The shipped configs' hub models, for a dry run on a machine where they are not cached (from their config.json).
KNOWN = {
    "Qwen/Qwen2.5-0.5B-Instruct": Shape(151936, 896, 24, 14, 2, 64, 4864, True),
    "Qwen/Qwen2.5-1.5B-Instruct": Shape(151936, 1536, 28, 12, 2, 128, 8960, True),
    "Qwen/Qwen2.5-3B-Instruct": Shape(151936, 2048, 36, 16, 2, 128, 11008, True),
    "Qwen/Qwen3-0.6B": Shape(151936, 1024, 28, 16, 8, 128, 3072, True),
    "Qwen/Qwen3-1.7B": Shape(151936, 2048, 28, 16, 8, 128, 6144, True),
}


def shape_of(hf_config: Any) -> Shape:
    """The Shape of a transformers config (text part)."""
    c = getattr(hf_config, "text_config", None) or hf_config
    heads = int(c.num_attention_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
    return Shape(
        vocab=int(c.vocab_size),
        hidden=int(c.hidden_size),
        layers=int(c.num_hidden_layers),
        heads=heads,
        kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
        head_dim=head_dim,
        intermediate=int(c.intermediate_size),
        tied=bool(getattr(c, "tie_word_embeddings", False)),
    )


def model_shape(model_cfg: Any) -> tuple[Shape, str] | None:
    """The model's Shape and where it came from: its cached config.json, else the table of shipped models."""
    from training_with_unsloth.errors import UserError
    from training_with_unsloth.models import backends

    try:
        path = backends.resolve_model_path(model_cfg.name, allow_download=False)
    except UserError:
        known = KNOWN.get(model_cfg.name)
        return (known, "its published config (not cached here)") if known else None
    from transformers import AutoConfig

    return shape_of(AutoConfig.from_pretrained(path, local_files_only=True)), "its config.json"


@dataclass(frozen=True)
class Part:
    name: str
    bytes: float
    detail: str


def _lora_params(shape: Shape, r: int, targets: Any) -> tuple[int, int]:
    """(parameters, modules) of LoRA rank r on the target modules of every layer."""
    linear = shape.linear_shapes()
    if targets in ("all-linear", None):
        names = list(linear)
    else:
        names = [t for t in ([targets] if isinstance(targets, str) else targets) if t in linear]
    per_layer = sum(r * (linear[n][0] + linear[n][1]) for n in names)
    return shape.layers * per_layer, len(names)


def estimate(cfg: Any, args: Any, shape: Shape) -> list[Part]:
    """The parts of peak GPU memory for experiment `cfg` with GRPO config `args` on a model of `shape`."""
    m = cfg.model
    compute = 4 if m.dtype == "float32" else 2  # auto: bfloat16, or float16 on a card without it
    parts: list[Part] = []
    if m.load_in_4bit:
        quant = shape.linear_params * (0.5 + 1 / 64 + 4 / (64 * 256))  # NF4 + 8-bit absmax per 64 + fp32 per 256 blocks
        other = (shape.params - shape.linear_params) * 2
        parts.append(Part("base weights", quant + other, f"{shape.linear_params / 1e9:.2f}B linear weights in 4-bit NF4 "
                          f"(with double-quantised constants), {(shape.params - shape.linear_params) / 1e6:.0f}M embedding "
                          "and norm weights in 16-bit"))  # fmt: skip
    else:
        parts.append(Part("base weights", shape.params * compute, f"{shape.params / 1e9:.2f}B parameters in {8 * compute}-bit"))
    lora, modules = _lora_params(shape, m.lora.r, m.lora.target_modules)
    parts.append(Part("LoRA weights", lora * 4, f"r={m.lora.r} on {modules} modules x {shape.layers} layers: "
                      f"{lora / 1e6:.1f}M parameters in float32"))  # fmt: skip
    parts.append(Part("gradients", lora * 4, "float32, LoRA weights only (the base is frozen)"))
    optim = getattr(args, "optim", "adamw_torch")
    optim = str(getattr(optim, "value", optim))  # transformers holds an OptimizerNames enum
    eight_bit = "8bit" in optim
    parts.append(Part("optimizer", lora * (2 if eight_bit else 8), f"{optim}: 2 states x {'1 byte' if eight_bit else '4 bytes'}"))

    b = int(args.per_device_train_batch_size)
    s = int(m.max_seq_length)
    completion = int(args.max_completion_length)
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    per_layer = compute * s * b * (6 * h + 2 * kv + 4 * shape.intermediate)  # tensors a layer keeps for backward
    checkpointed = shape.layers * compute * s * b * h + per_layer  # layer inputs kept, one layer recomputed at a time
    full = shape.layers * per_layer
    gc = bool(getattr(args, "gradient_checkpointing", False))
    parts.append(Part(
        "activations", checkpointed if gc else full,
        f"loss micro-batch {b} x {s} tokens, gradient checkpointing {'on' if gc else 'off'} "
        f"({_gib(checkpointed)} on, {_gib(full)} off)",
    ))  # fmt: skip
    logits = b * completion * shape.vocab * (compute + 4)
    parts.append(Part(
        "logits", logits,
        f"{b} x {completion} completion tokens x {shape.vocab} vocabulary, {8 * compute}-bit logits and a float32 log-softmax "
        "(an upper bound: Unsloth computes log-probs in chunks)",
    ))  # fmt: skip
    rows = int(getattr(args, "generation_batch_size", None) or b * int(getattr(args, "steps_per_generation", None) or 1))
    cache = rows * s * shape.layers * 2 * kv * compute
    parts.append(Part("KV cache", cache, f"generation batch {rows} x {s} tokens x {shape.layers} layers x 2 x {kv}"))
    return parts


def peak(parts: list[Part]) -> float:
    """Resident parts plus the larger of training's (activations + logits) and generation's (KV cache)."""
    by = {p.name: p.bytes for p in parts}
    resident = by["base weights"] + by["LoRA weights"] + by["gradients"] + by["optimizer"]
    return resident + max(by["activations"] + by["logits"], by["KV cache"])


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def memory_text(cfg: Any, args: Any) -> str:
    """The --dry-run lines: one per part, the peak and whether it fits a 16 GB card."""
    found = model_shape(cfg.model)
    if found is None:
        return f"memory     no estimate: {cfg.model.name} is not cached and its shape is not in the toolkit's table"
    shape, source = found
    parts = estimate(cfg, args, shape)
    top = peak(parts)
    lines = [
        f"memory     peak GPU memory, estimated ({cfg.model.name}: {shape.params / 1e9:.2f}B parameters, shape from {source}):"
    ]
    lines += [f"  {p.name:<13} {_gib(p.bytes):>10}  {p.detail}" for p in parts]
    fits = top + CONTEXT <= USABLE_16GB
    verdict = "fits" if fits else "does not fit"
    lines.append(
        f"  {'peak':<13} {_gib(top):>10}  + {_gib(CONTEXT)} CUDA context: {verdict} a 16 GB card ({_gib(USABLE_16GB)} usable)"
    )
    return "\n".join(lines)
