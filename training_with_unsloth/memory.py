"""Peak memory of a run, estimated before any model loads (what `--dry-run` prints), for the backend that runs it.

Each part is a line that says what it assumes. Resident: the base weights at their precision (4-bit NF4
with its quantisation constants, or 16/32-bit), the LoRA weights and their optimizer states. Transient,
one phase at a time: the loss forward and backward of one micro-batch (its activations, the log-prob head
and the LoRA gradients, which exist from the first backward until `zero_grad`), the KV cache of a training
generation batch, the KV cache of a Pass@K batch (`eval.batch_size` sequences), and the no-grad log-prob
passes that score a generation batch (TRL's old-policy and reference passes, the KL diagnostics). The
peak is the resident part plus the largest phase.

What each backend allocates, read from the installed sources:

- **Log-probs, Unsloth** (`unsloth_zoo.rl_replacements.grpo_accumulated_loss` ->
  `unsloth_zoo.fused_losses.fused_linear.fused_linear_logprobs`): the model returns hidden states, and the
  LM head is applied to row chunks of them; one chunk of `R x vocab` float32 logits exists at a time
  (`_Buffers`), the forward keeps only per-token statistics and the backward recomputes each chunk.
  `R = fused_linear_rows(...)`: a power of two near `tokens x hidden / vocab`, at least 512 x 151,936 /
  vocab (rounded down to a power of two, at least 512), at most 4096 and at most 2 GiB of logits
  (`UNSLOTH_LOGPROB_CHUNK_GB`). No `batch x completion x vocabulary` buffer is ever built.
- **Log-probs, transformers on CUDA**: TRL 1.15's fused head (`trl.trainer.utils.add_fused_lm_head` ->
  `trl/kernels/chunked_logprob.py`): one 4096-token x 32,768-column tile in the compute dtype.
- **Log-probs, transformers on a CPU**: the plain-PyTorch fallback (`models/logprob_fallback.py`) in chunks
  of 1024 tokens, whose autograd keeps the float32 log-softmax and its exp (the loss asks for entropies)
  for every completion token: `tokens x vocab x 8` bytes.
- **Gradient checkpointing, Unsloth** (`use_gradient_checkpointing="unsloth"`,
  `unsloth_zoo.gradient_checkpointing.Unsloth_Offloaded_Gradient_Checkpointer`): each layer's input is
  copied to (pinned) host memory in the forward; the GPU holds one layer being recomputed and staging
  buffers for a layer input. On transformers (torch checkpointing) the layer inputs stay on the device.
- **Generation, Unsloth** (`unsloth/models/_decode_graphs.alloc_decode_buffers`): the decode cache of each
  layer holds `prompt + 513` positions (`KV_CACHE_INCREMENT` 512 beyond the prompt), not prompt + completion.
- **No-grad passes** (TRL's `_generate_and_score_completions`, `ResearchGRPOTrainer._trainer_logps`): the old
  policy when `gradient_accumulation_steps % (steps_per_generation x num_iterations) != 0`, the reference
  when `trainer.beta != 0` or the KL diagnostics / KL term need it, the policy for the KL diagnostics under
  Unsloth (its fused loss keeps no log-probs). They run one after another in micro-batches of
  `per_device_train_batch_size` rows (Unsloth sizes its own to the free memory), without autograd: one
  layer's transients at a time.

Sequence lengths are upper bounds: every sequence is counted at `model.max_seq_length` tokens (prompt +
completion; the length check guarantees that much room). The CUDA context and allocator slack are not in
the parts; the verdict adds them as a fixed margin. `bench/vram_profile.py` measures the same phases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
USABLE_16GB = 15.0 * GIB  # what a "16 GB" card (T4, V100-16GB) reports as total memory
CONTEXT = 0.5 * GIB  # CUDA context, cuBLAS workspace, allocator fragmentation (not in the estimate's parts)

# unsloth_zoo.fused_losses.fused_linear (2026.10): chunk rows of the GRPO log-prob head.
UNSLOTH_CHUNK_BYTES = 2 * GIB  # _CHUNK_GB (UNSLOTH_LOGPROB_CHUNK_GB), capped further by free memory
UNSLOTH_MIN_LOGITS = 512 * 151936  # _MIN_LOGITS
UNSLOTH_MAX_ROWS = 4096  # _MAX_ROWS
# trl/kernels/chunked_logprob.py and trl.trainer.utils (1.15): the fused head's tile.
TRL_TOKEN_TILE = 4096  # TOKEN_CHUNK_SIZE
TRL_VOCAB_TILE = 32768  # _CHUNKED_LOGPROB_CHUNK_SIZE
CPU_TOKEN_CHUNK = 1024  # models/logprob_fallback._TOKEN_CHUNK
MERGE_LIMIT_BYTES = 2 * GIB  # generation.MERGE_LIMIT_BYTES (model.fast_generation's merged float32 LoRA weights)
# unsloth/models/llama.py KV_CACHE_INCREMENT: Unsloth's decode cache holds prompt + this + 1 rows per layer
# (unsloth/models/_decode_graphs.alloc_decode_buffers), grown by this many when full.
UNSLOTH_KV_INCREMENT = 512

RESIDENT = ("base weights", "LoRA weights", "optimizer")
LOSS = ("gradients", "activations", "logits")
PHASES = ("KV cache", "Pass@K cache", "scoring")


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


@dataclass(frozen=True)
class Target:
    """Where the estimate is for: the backend and device that run the config, and the compute precision."""

    backend: str  # "unsloth" | "transformers"
    cuda: bool
    compute: int  # bytes per activation / KV element
    dtype: str  # what `compute` stands for
    why: str = ""  # how the target was chosen, when not simply this machine's

    @property
    def label(self) -> str:
        return f"{self.backend} on {'a CUDA GPU' if self.cuda else 'the CPU'}, {self.dtype}"


def target(cfg: Any, backend: str | None = None, cuda: bool | None = None) -> Target:
    """The backend, device and precision an estimate for `cfg` is made for.

    On a CUDA machine: the backend the run resolves to. Without CUDA, a config that cannot run on a CPU (a 4-bit
    base, `backend: unsloth`) is estimated for the GPU it needs; any other for the CPU run it gets here
    (transformers + PEFT, float32 with `model.dtype: auto`).
    """
    from training_with_unsloth.errors import UserError
    from training_with_unsloth.models import backends

    m = cfg.model
    if cuda is None:
        cuda = backends.cuda_available()
    if backend is None:
        try:
            backend = backends.resolve_backend(m.backend, cuda=cuda)
        except UserError:
            backend = "unsloth" if m.backend == "unsloth" else "transformers"
    why = ""
    if not cuda and (m.load_in_4bit or m.backend == "unsloth"):
        cuda, why = True, "no CUDA GPU here: estimated for the GPU this config needs"
        backend = "transformers" if m.backend == "transformers" else "unsloth"
    if m.dtype == "float32" or (m.dtype == "auto" and not cuda):
        return Target(backend, cuda, 4, "float32", why)
    dtype = m.dtype if m.dtype != "auto" else "bfloat16 (float16 on a card without it)"
    return Target(backend, cuda, 2, dtype, why)


def _lora_params(shape: Shape, r: int, targets: Any) -> tuple[int, int, int]:
    """(LoRA parameters, modules per layer, base weights of those modules) of rank r on the target modules."""
    linear = shape.linear_shapes()
    if targets in ("all-linear", None):
        names = list(linear)
    else:
        names = [t for t in ([targets] if isinstance(targets, str) else targets) if t in linear]
    per_layer = sum(r * (linear[n][0] + linear[n][1]) for n in names)
    covered = sum(linear[n][0] * linear[n][1] for n in names)
    return shape.layers * per_layer, len(names), shape.layers * covered


def _pow2_at_most(x: float) -> int:
    """The largest power of two not above x (1 for x < 2)."""
    p = 1
    while p * 2 <= x:
        p *= 2
    return p


def unsloth_chunk_rows(tokens: int, shape: Shape) -> int:
    """Rows of one logits chunk of Unsloth's log-prob head (`fused_linear.fused_linear_rows`, 4-byte logits)."""
    rows = _pow2_at_most(tokens * shape.hidden / max(shape.vocab, 1))
    min_rows = min(max(_pow2_at_most(UNSLOTH_MIN_LOGITS / max(shape.vocab, 1)), 512), UNSLOTH_MAX_ROWS)
    rows = min(max(rows, min_rows), UNSLOTH_MAX_ROWS)
    rows = min(rows, max(UNSLOTH_CHUNK_BYTES // (shape.vocab * 4), 2))
    return max(min(rows, max(tokens, 1)), 1)


def unsloth_rows_per_forward(total: int, seq: int, shape: Shape, compute: int, free: float) -> int:
    """Rows Unsloth puts through one forward of its GRPO log-prob passes (`autotune_batch_and_chunks`, then
    `ceil(total / (total // rows))`): the most rows whose hidden states and logits, by its own sizing (16 "bytes"
    per 16-bit value, logits over 4), fit 80% of the free memory."""
    bits = 16 if compute == 2 else 32
    limit = 0.8 * free

    def fits(rows: int) -> bool:
        hidden = rows * seq * shape.hidden * bits
        logits = (rows / total) * rows * seq * shape.vocab * bits / 4
        return hidden + logits <= limit

    # Unsloth counts down from `total` to the first size that fits; the size grows with `rows`, so the same
    # answer is found by bisection (a config's batch may be large: planning must not grow with it).
    if total < 1:
        return 1
    chosen = min(4, total)
    if fits(total):
        chosen = total
    elif fits(1):
        low, high = 1, total  # fits(low), not fits(high)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        chosen = low
    return -(-total // max(1, total // chosen))


def _head(t: Target, shape: Shape, tokens: int, *, grad: bool) -> tuple[float, str]:
    """Bytes and description of the log-prob head over `tokens` completion tokens (with or without autograd)."""
    v = shape.vocab
    if t.backend == "unsloth":
        rows = unsloth_chunk_rows(tokens, shape)
        return rows * (-(-v // 8) * 8) * 4, (
            f"one chunk of {rows} rows x {v} vocabulary float32 logits at a time (Unsloth's fused head over hidden "
            f"states; {tokens} tokens{', backward recomputes each chunk' if grad else ''})"
        )
    if t.cuda:
        rows = min(tokens, TRL_TOKEN_TILE)
        return rows * min(v, TRL_VOCAB_TILE) * t.compute, (
            f"one {rows} x {min(v, TRL_VOCAB_TILE)} tile of {8 * t.compute}-bit logits (TRL's fused head; {tokens} tokens)"
        )
    chunk = min(tokens, CPU_TOKEN_CHUNK)
    if grad:
        return tokens * v * 8 + chunk * v * 8, (
            f"{tokens} completion tokens x {v} vocabulary: the float32 log-softmax and its exp kept for backward "
            f"(the CPU fallback of TRL's head), plus one {chunk}-token chunk's transients"
        )
    return chunk * v * 4 * 3, f"one {chunk}-token chunk of float32 logits, scaled logits and log-softmax (no grad)"


def _scoring_passes(cfg: Any, args: Any, t: Target) -> list[str]:
    """The no-grad log-prob passes over each generation batch, as TRL and the toolkit's KL code decide them."""
    accumulation = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    per_generation = int(getattr(args, "steps_per_generation", None) or accumulation)
    iterations = int(getattr(args, "num_iterations", 1) or 1)
    beta = float(getattr(args, "beta", 0.0) or 0.0)
    kl = getattr(cfg, "kl", None)
    diagnostics = bool(getattr(kl, "diagnostics", False)) or getattr(kl, "target", None) is not None
    kl_term = float(getattr(kl, "coef", 0.0) or 0.0) > 0
    passes = []
    old = accumulation % (per_generation * iterations) != 0
    if old:
        passes.append("old policy (accumulation not a multiple of steps_per_generation x num_iterations)")
    if beta != 0:
        passes.append(f"reference (trainer.beta {beta:g})")
    elif diagnostics or kl_term:
        every = int(getattr(kl, "diagnostics_every", 1) or 1)
        when = "every step" if kl_term or every == 1 else f"every {every} steps"
        passes.append(f"reference (KL {'term' if kl_term else 'diagnostics'}, {when})")
    if diagnostics and t.backend == "unsloth" and not old:
        passes.append("policy (KL diagnostics: Unsloth's fused loss keeps no log-probs)")
    return passes


def estimate(cfg: Any, args: Any, shape: Shape, *, backend: str = "unsloth", cuda: bool = True) -> list[Part]:
    """The parts of peak memory for experiment `cfg` with GRPO config `args` on a model of `shape`, run by
    `backend` on a CUDA GPU (`cuda`) or on the CPU."""
    return estimate_for(cfg, args, shape, target(cfg, backend, cuda))


def estimate_for(cfg: Any, args: Any, shape: Shape, t: Target) -> list[Part]:
    """`estimate` for a resolved Target."""
    m = cfg.model
    c = t.compute
    parts: list[Part] = []
    if m.load_in_4bit:
        quant = shape.linear_params * (0.5 + 1 / 64 + 4 / (64 * 256))  # NF4 + 8-bit absmax per 64 + fp32 per 256 blocks
        other = (shape.params - shape.linear_params) * 2
        parts.append(Part("base weights", quant + other, f"{shape.linear_params / 1e9:.2f}B linear weights in 4-bit NF4 "
                          f"(with double-quantised constants), {(shape.params - shape.linear_params) / 1e6:.0f}M embedding "
                          "and norm weights in 16-bit"))  # fmt: skip
    else:
        parts.append(Part("base weights", shape.params * c, f"{shape.params / 1e9:.2f}B parameters in {8 * c}-bit"))
    lora, modules, covered = _lora_params(shape, m.lora.r, m.lora.target_modules)
    parts.append(Part("LoRA weights", lora * 4, f"r={m.lora.r} on {modules} modules x {shape.layers} layers: "
                      f"{lora / 1e6:.1f}M parameters in float32"))  # fmt: skip
    optim = getattr(args, "optim", "adamw_torch")
    optim = str(getattr(optim, "value", optim))  # transformers holds an OptimizerNames enum
    eight_bit = "8bit" in optim
    parts.append(Part("optimizer", lora * (2 if eight_bit else 8), f"{optim}: 2 states x {'1 byte' if eight_bit else '4 bytes'}"))
    parts.append(Part("gradients", lora * 4, "float32, LoRA weights only (the base is frozen); from backward to zero_grad"))

    b = int(args.per_device_train_batch_size)
    s = int(m.max_seq_length)
    completion = int(args.max_completion_length)
    h, kv, i = shape.hidden, shape.kv_heads * shape.head_dim, shape.intermediate
    rows = int(getattr(args, "generation_batch_size", None) or b * int(getattr(args, "steps_per_generation", None) or 1))
    # Unsloth sizes the rows of its log-prob forwards to the free memory: here, what a 16 GB card leaves
    free = max(USABLE_16GB - CONTEXT - sum(p.bytes for p in parts), 0.0)
    fits = "as a 16 GB card's free memory allows"
    loss_rows = unsloth_rows_per_forward(b, s, shape, c, free) if t.backend == "unsloth" else b
    layer_in = c * loss_rows * s * h  # one layer's input: what checkpointing keeps per layer
    per_layer = c * loss_rows * s * (6 * h + 2 * kv + 4 * i)  # tensors a layer keeps for backward
    gc = bool(getattr(args, "gradient_checkpointing", False))
    tokens = f"micro-batch {b} x {s} tokens (max_seq_length: an upper bound)"
    if loss_rows != b:
        tokens += f", {loss_rows} rows per forward ({fits})"
    if not gc:
        parts.append(Part("activations", shape.layers * per_layer, f"{tokens}, no gradient checkpointing: every layer's "
                          "tensors kept for backward"))  # fmt: skip
    elif t.backend == "unsloth":
        host = shape.layers * layer_in
        parts.append(Part("activations", per_layer + 2 * layer_in, f"{tokens}, Unsloth's offloaded checkpointing: the "
                          f"{shape.layers} layer inputs ({_gib(host)}) in host memory, one layer recomputed on the GPU "
                          "beside its staging buffers"))  # fmt: skip
    else:
        parts.append(Part("activations", shape.layers * layer_in + per_layer, f"{tokens}, gradient checkpointing: the "
                          f"{shape.layers} layer inputs kept on the {'GPU' if t.cuda else 'CPU'}, one layer recomputed "
                          "at a time"))  # fmt: skip
    head, head_detail = _head(t, shape, loss_rows * completion, grad=True)
    parts.append(Part("logits", head, head_detail))

    per_token = shape.layers * 2 * kv * c

    def positions(new: int) -> tuple[int, str]:
        """Cache positions per sequence generating `new` tokens (the prompt at most max_seq_length - new)."""
        if t.backend == "unsloth":
            prompt = max(s - new, 0)
            return prompt + UNSLOTH_KV_INCREMENT + 1, f"prompt (up to {prompt}) + {UNSLOTH_KV_INCREMENT + 1} positions (Unsloth)"
        return s, f"{s} positions (prompt + up to {new} new)"

    step_logits = rows * shape.vocab * (c + 4)  # one decoding step's logits and their float32 copy for sampling
    merged = 0
    if t.backend == "transformers" and c == 4 and getattr(m, "fast_generation", True) and covered * 4 <= MERGE_LIMIT_BYTES:
        merged = covered * 4
    extra = f" + the LoRA layers merged into float32 copies ({_gib(merged)}, model.fast_generation)" if merged else ""
    length, how = positions(completion)
    parts.append(Part("KV cache", rows * length * per_token + step_logits + merged,
                      f"training generation batch {rows} x {how} x {shape.layers} layers x 2 x {kv}, and one step's "
                      f"logits{extra}"))  # fmt: skip

    ev = cfg.eval
    if ev.enabled:
        eval_rows = int(ev.batch_size)
        length, how = positions(ev.max_new_tokens or completion)
        parts.append(Part("Pass@K cache", eval_rows * length * per_token + eval_rows * shape.vocab * (c + 4) + merged,
                          f"eval.batch_size {eval_rows} sequences x {how} x {shape.layers} layers x 2 x {kv}, and one "
                          f"step's logits{extra}"))  # fmt: skip
    else:
        parts.append(Part("Pass@K cache", 0, "eval.enabled is false: no Pass@K generation"))

    passes = _scoring_passes(cfg, args, t)
    if passes:
        score_rows = unsloth_rows_per_forward(rows, s, shape, c, free) if t.backend == "unsloth" else min(b, rows)
        forward = c * score_rows * s * (5 * h + 2 * kv + 3 * i)  # one layer's no-grad transients, its input and output
        nograd, nograd_detail = _head(t, shape, score_rows * completion, grad=False)
        kept = len(passes) * rows * completion * 4  # each pass's float32 log-probs, kept for the loss
        how = f"{score_rows} of the {rows} rows per forward" + (f", {fits}" if t.backend == "unsloth" else "")
        parts.append(Part("scoring", forward + nograd + kept,
                          f"no-grad log-prob passes, one at a time, {how}: {'; '.join(passes)}; per forward one layer's "
                          f"transients and {nograd_detail}"))  # fmt: skip
    else:
        parts.append(Part("scoring", 0, "no no-grad log-prob pass (beta 0, KL diagnostics off, generation aligned)"))
    return parts


def peak(parts: list[Part]) -> float:
    """Resident parts plus the largest phase: the loss (gradients, activations, log-prob head), a training or
    Pass@K generation batch, or the no-grad scoring passes. Parts of other names are resident."""
    by = {p.name: p.bytes for p in parts}
    transient = set(LOSS) | set(PHASES)
    resident = sum(v for k, v in by.items() if k not in transient)
    loss = sum(by.get(k, 0.0) for k in LOSS)
    return resident + max(loss, *(by.get(k, 0.0) for k in PHASES))


def _gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def _verdict(top: float) -> str:
    fits = "fits" if top + CONTEXT <= USABLE_16GB else "does not fit"
    return f"+ {_gib(CONTEXT)} CUDA context: {fits} a 16 GB card ({_gib(USABLE_16GB)} usable)"


def memory_text(cfg: Any, args: Any, *, backend: str | None = None, cuda: bool | None = None) -> str:
    """The --dry-run lines: one per part, the peak and whether it fits a 16 GB card (for a GPU run).

    `backend` and `cuda` default to what this machine resolves `cfg` to (as the plan does).
    """
    found = model_shape(cfg.model)
    if found is None:
        return f"memory     no estimate: {cfg.model.name} is not cached and its shape is not in the toolkit's table"
    shape, source = found
    t = target(cfg, backend, cuda)
    parts = estimate_for(cfg, args, shape, t)
    top = peak(parts)
    where = "GPU memory" if t.cuda else "memory (CPU RAM)"
    why = f"; {t.why}" if t.why else ""
    lines = [
        f"memory     peak {where}, estimated for {t.label}{why} ({cfg.model.name}: {shape.params / 1e9:.2f}B parameters, "
        f"shape from {source}):"
    ]
    lines += [f"  {p.name:<13} {_gib(p.bytes):>10}  {p.detail}" for p in parts]
    if t.cuda:
        lines.append(f"  {'peak':<13} {_gib(top):>10}  resident + the largest phase {_verdict(top)}")
    else:
        lines.append(f"  {'peak':<13} {_gib(top):>10}  resident + the largest phase (host memory: no GPU verdict)")
        if cfg.model.backend == "auto":
            gpu = target(cfg, "unsloth", True)
            gpu_top = peak(estimate_for(cfg, args, shape, gpu))
            lines.append(f"  {'on a GPU':<13} {_gib(gpu_top):>10}  where auto picks {gpu.label} {_verdict(gpu_top)}")
    return "\n".join(lines)
