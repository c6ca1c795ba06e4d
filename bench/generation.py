"""Completion generation against this machine's limit: tokens per second of each generation path, and the bound.

The embedded model (transformers, the CPU's float32) on the quickstart's prompts, at the quickstart's shape
(16 completions x 24 new tokens) and at batch 64, sampled at T=1 with one seed per batch. Paths: `current`
(`model.generate` with a dynamic KV cache and SDPA attention, what TRL's generation path runs), `static`
(a static KV cache, `cache_implementation="static"`), `eager` (eager attention instead of SDPA) and
`continuous` (transformers' continuous batching, `model.generate_batch`, what TRL's
`use_transformers_continuous_batching` runs). Beside each: whether it gave the same completions as
`current` for the same seed, and its share of the bound.

The bound for a decode step of a batch of B: the weights are read once per step (memory bound:
bytes of the weights / measured memory bandwidth) and every token costs 2 x parameters FLOPs (compute
bound: 2 x params x B / measured matmul rate); tokens per second <= B / max(the two). Both rates are
measured here first (a 256 MiB copy; a 2048 x 2048 float32 matmul). Prefill is left out of the bound
and counted in the measured time, so short completions sit further below it.

    uv run bench/generation.py
    uv run bench/generation.py --batches 16 64 --new-tokens 24 --repeats 3 --paths current static
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write)."""
    import torch

    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def matmul_rate(n: int = 2048, repeats: int = 5) -> float:
    """FLOPs per second of an n x n float32 matmul."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def prompts(tokenizer, count: int) -> list[str]:
    """The quickstart task's held-out prompts, chat-templated, cycled to `count`."""
    import tasks
    from training_with_unsloth.config import load_config
    from training_with_unsloth.config_files import resolve_config

    cfg = load_config(resolve_config("quickstart"))
    task = tasks.get(cfg.task.name, **cfg.task.params)
    _, eval_ds = task.build(cfg.seed)
    texts = [tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True) for r in eval_ds]
    return [texts[i % len(texts)] for i in range(count)]


def run_path(path: str, model, tokenizer, batch: list[str], new_tokens: int, seed: int) -> tuple[float, int, list[str]]:
    """(seconds, completion tokens, completions) of one batch through `path`."""
    import torch
    from transformers import GenerationConfig

    gen = GenerationConfig(
        max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    enc = tokenizer(batch, return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    if path == "continuous":
        gen.do_sample, gen.num_blocks, gen.block_size = True, 256, 32
        outputs = model.generate_batch(
            inputs=[tokenizer(p)["input_ids"] for p in batch], generation_config=gen, progress_bar=False
        )
        ids = [list(out.generated_tokens) for out in outputs.values()]
    else:
        if path == "static":
            gen.cache_implementation = "static"
        with torch.no_grad():
            out = model.generate(**enc, generation_config=gen)
        ids = [row.tolist() for row in out[:, enc["input_ids"].shape[1] :]]
    seconds = time.perf_counter() - t0
    texts, tokens = [], 0
    for row in ids:
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id) + 1]
        row = [t for t in row if t != tokenizer.pad_token_id]
        tokens += len(row)
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return seconds, tokens, texts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--paths", nargs="+", default=["current", "static", "eager", "continuous"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training_with_unsloth.models.embedded import embedded_model_dir

    path = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    models = {"sdpa": AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()}
    if "eager" in args.paths:
        models["eager"] = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    params = sum(p.numel() for p in models["sdpa"].parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in models["sdpa"].parameters())
    bandwidth, flops = memory_bandwidth(), matmul_rate()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; embedded model {params / 1e6:.0f}M params, "
          f"{weight_bytes / 2**20:.0f} MiB float32")  # fmt: skip
    print(f"measured: memory bandwidth {bandwidth / 1e9:.1f} GB/s, float32 matmul {flops / 1e9:.0f} GFLOP/s\n")
    print(f"{'batch':>5} {'path':<11} {'tokens/s':>9} {'bound':>8} {'share':>6}  same completions as current")
    for b in args.batches:
        batch = prompts(tokenizer, b)
        step_time = max(weight_bytes / bandwidth, 2 * params * b / flops)
        bound = b / step_time
        reference = None
        for name in args.paths:
            model = models["eager" if name == "eager" else "sdpa"]
            rates, texts = [], None
            for r in range(args.repeats + 1):  # the first is a warm-up
                try:
                    seconds, tokens, texts = run_path(name, model, tokenizer, batch, args.new_tokens, args.seed)
                except Exception as exc:  # a path this transformers cannot run here: say so, keep measuring the others
                    print(f"{b:>5} {name:<11} not available: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                    texts = None
                    break
                if r:
                    rates.append(tokens / seconds)
            if texts is None:
                continue
            if name == "current":
                reference = texts
            same = "-" if reference is None or name == "current" else ("yes" if texts == reference else "no")
            rate = statistics.median(rates)
            print(f"{b:>5} {name:<11} {rate:>9.1f} {bound:>8.1f} {rate / bound:>6.0%}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
