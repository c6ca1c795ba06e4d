"""Completion generation against this machine's limit: tokens per second of each generation path, and the bound.

The embedded model (transformers, the CPU's float32) with a rank-16 LoRA adapter on every linear layer, as
training and Pass@K generate with it, on the quickstart's prompts, sampled at T=1 with one seed per batch.
Shapes are `prompts x copies`: `2x8` is a quickstart training step (2 prompts x 8 generations = 16 rows),
`16x4` a Pass@K batch of 64 (16 problems x 4 samples). Paths:

- `plain`: `model.generate` with a dynamic KV cache and SDPA attention, what TRL's generation path runs;
- `fast`: the toolkit's default (`model.fast_generation`, training_with_unsloth/generation.py): each distinct
  prompt prefilled once, the adapter merged into temporary weights, oneDNN products on a CPU;
- `static`: a static KV cache (`cache_implementation="static"`), `eager`: eager attention instead of SDPA;
- `continuous`: transformers' continuous batching (`generate_batch`), what TRL's
  `use_transformers_continuous_batching` runs.

Beside each: whether its completions equal `plain`'s for the same seed, and its share of the bound.

The bound for a decode step of B rows: the weights are read once per step (bytes of the weights over the
measured memory bandwidth) and every token costs 2 x parameters FLOPs (over the measured rate of a large
float32 matmul); tokens per second <= B / max(the two). Tokens are decoded positions (rows x steps, the
work done, padding after an early end of text included). Prefill is not in the bound but in the time.
Two measured floors follow the table: the time per decode step of the step's matrix products alone at
their shapes (MKL and oneDNN), and of the sampling draw itself (`torch.multinomial` draws one exponential
per vocabulary entry and row): no path that keeps torch's products and its random stream can beat them.

    uv run bench/generation.py
    uv run bench/generation.py --shapes 2x8 --new-tokens 24 --repeats 5 --paths plain fast
    uv run bench/generation.py --adapter runs/quickstart/checkpoints/best
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _best_of(fn, repeats: int) -> float:
    """Fewest seconds of `repeats` calls of `fn`, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write)."""
    import torch

    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _best_of(lambda: dst.copy_(src), repeats)


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOPs per second of an n x n float32 matmul."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_of(lambda: a @ b, repeats)


def decode_floors(model, rows: int, repeats: int = 5) -> dict[str, float]:
    """Seconds per decode step of `rows` rows: the step's products alone (MKL, oneDNN) and the sampling draw."""
    import torch
    import torch.nn.functional as F

    from training_with_unsloth import generation

    linears = [m for n, m in model.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n]  # base + head
    x = {k: torch.randn(rows, k) for k in {m.in_features for m in linears}}
    floors = {"products, MKL": _best_of(lambda: [F.linear(x[m.in_features], m.weight) for m in linears], repeats)}
    if generation.onednn_available():
        floors["products, oneDNN"] = _best_of(
            lambda: [generation.linear(x[m.in_features], m.weight, None, onednn=True) for m in linears], repeats
        )
    probs = torch.softmax(torch.randn(rows, model.config.vocab_size), -1)
    floors["sampling draw"] = _best_of(lambda: torch.multinomial(probs, 1), repeats)
    return floors


def prompts(tokenizer, count: int, copies: int) -> list[str]:
    """`count` of the quickstart task's held-out prompts, chat-templated, each repeated `copies` times."""
    import tasks
    from training_with_unsloth.config import load_config
    from training_with_unsloth.config_files import resolve_config

    cfg = load_config(resolve_config("quickstart"))
    task = tasks.get(cfg.task.name, **cfg.task.params)
    _, eval_ds = task.build(cfg.seed)
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in eval_ds]
    return [texts[i % len(texts)] for i in range(count) for _ in range(copies)]


def run_path(path: str, model, tokenizer, batch: list[str], new_tokens: int, seed: int) -> tuple[float, int, list]:
    """(seconds, decoded positions, completion ids) of one batch through `path`."""
    import torch
    from transformers import GenerationConfig

    from training_with_unsloth.generation import fast_generate

    gen = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    enc = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if path == "continuous":
        gen.num_blocks, gen.block_size = 256, 32
        outputs = model.generate_batch(
            inputs=[tokenizer(p)["input_ids"] for p in batch], generation_config=gen, progress_bar=False
        )
        ids = [list(out.generated_tokens) for out in outputs.values()]
        positions = sum(len(row) for row in ids)
    else:
        if path == "static":
            gen.cache_implementation = "static"
        generate = fast_generate(model, model.generate) if path == "fast" else model.generate
        with torch.no_grad():
            out = generate(**enc, generation_config=gen)
        new = out[:, enc["input_ids"].shape[1] :]
        ids = [row.tolist() for row in new]
        positions = new.numel()
    seconds = time.perf_counter() - t0
    return seconds, positions, [_until_eos(row, tokenizer) for row in ids]


def _until_eos(row: list[int], tokenizer) -> list[int]:
    if tokenizer.eos_token_id in row:
        row = row[: row.index(tokenizer.eos_token_id) + 1]
    return [t for t in row if t != tokenizer.pad_token_id]


def load_model(path: str, attention: str, adapter: str | None, adapter_std: float, seed: int):
    """The embedded model with a LoRA adapter: `adapter` (a saved one) or a fresh r=16 all-linear one with B ~ N(0, std)."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention)
    if adapter:
        return PeftModel.from_pretrained(base, adapter).eval()
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * adapter_std)
    return model.eval()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )  # fmt: skip
    ap.add_argument("--shapes", nargs="+", default=["2x8", "16x4"], help="prompts x copies per batch")
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per path (after one warm-up); the median")
    ap.add_argument("--paths", nargs="+", default=["plain", "fast", "static", "eager", "continuous"])
    ap.add_argument("--adapter", help="a saved LoRA adapter (default: a fresh one with small random B)")
    ap.add_argument("--adapter-std", type=float, default=0.002, help="std of the fresh adapter's B")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer

    from training_with_unsloth.models.embedded import embedded_model_dir

    path = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    models = {"sdpa": load_model(path, "sdpa", args.adapter, args.adapter_std, args.seed)}
    if "eager" in args.paths:
        models["eager"] = load_model(path, "eager", args.adapter, args.adapter_std, args.seed)
    base = models["sdpa"].get_base_model()
    weights = [p for n, p in base.named_parameters() if "lora_" not in n]  # the model's own, not the adapter's
    params = sum(p.numel() for p in weights)
    weight_bytes = sum(p.numel() * p.element_size() for p in weights)
    bandwidth, flops = memory_bandwidth(), matmul_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; embedded model {params / 1e6:.0f}M params, "
          f"{weight_bytes / 2**20:.0f} MiB float32, LoRA r=16 on every linear layer "
          f"({args.adapter or f'fresh, B ~ N(0, {args.adapter_std})'})")  # fmt: skip
    print(f"measured: memory bandwidth {bandwidth / 1e9:.1f} GB/s, float32 matmul {flops / 1e9:.0f} GFLOP/s\n")
    print(f"{'shape':>5} {'rows':>4} {'path':<11} {'tokens/s':>9} {'bound':>8} {'share':>6}  same completions as plain")
    floors = {}
    for shape in args.shapes:
        count, copies = (int(v) for v in shape.split("x"))
        batch = prompts(tokenizer, count, copies)
        b = len(batch)
        step_time = max(weight_bytes / bandwidth, 2 * params * b / flops)
        bound = b / step_time
        reference = None
        for name in args.paths:
            model = models["eager" if name == "eager" else "sdpa"]
            rates, ids = [], None
            for r in range(args.repeats + 1):  # the first is a warm-up
                try:
                    seconds, positions, ids = run_path(name, model, tokenizer, batch, args.new_tokens, args.seed)
                except Exception as exc:  # a path this transformers cannot run here: say so, keep measuring the others
                    print(f"{shape:>5} {b:>4} {name:<11} not available: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                    ids = None
                    break
                if r:
                    rates.append(positions / seconds)
            if ids is None:
                continue
            if name == "plain":
                reference = ids
            same = "-" if reference is None or name == "plain" else ("yes" if ids == reference else "no")
            rate = statistics.median(rates)
            print(f"{shape:>5} {b:>4} {name:<11} {rate:>9.1f} {bound:>8.1f} {rate / bound:>6.0%}  {same}", flush=True)
        floors[b] = (bound, decode_floors(base, b))
    print("\nfloors per decode step (ms), and the tokens/s each alone would allow:")
    for b, (bound, parts) in floors.items():
        text = ", ".join(f"{name} {s * 1e3:.1f} ({b / s:.0f}/s)" for name, s in parts.items())
        print(f"  {b:>3} rows: bound {b / bound * 1e3:.1f} ({bound:.0f}/s); {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
