"""Save a random-weights model with the shape of a real one, for GPU memory/throughput checks offline.

    uv run bench/random_model.py --shape qwen2.5-1.5b --out /tmp/qwen-shape
    uv run experiments/run_experiment.py experiment_configs/countdown.yaml --set model.name=/tmp/qwen-shape

The layers, widths and heads are those of the named model; the tokenizer is the embedded SmolLM2 one
(vocabulary 49,152 instead of Qwen's 151,936), so the embedding and LM head are smaller than the real
model's and completions are noise (every one runs to max_completion_length, the worst case for time).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# Qwen2.5 instruct shapes (config.json of each hub release).
SHAPES: dict[str, dict[str, int | bool]] = {
    "qwen2.5-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2
    ),
    "qwen2.5-3b": dict(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2
    ),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen2.5-1.5b")
    parser.add_argument("--out", type=Path, required=True, help="directory to write (config.json, safetensors, tokenizer)")
    parser.add_argument("--tokenizer", type=Path, help="directory with tokenizer.json etc. (default: the embedded model's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    source = args.tokenizer
    if source is None:
        from training_with_unsloth.models.embedded import embedded_model_dir

        source = embedded_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
        **SHAPES[args.shape],
    )
    torch.manual_seed(args.seed)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy(Path(source) / name, args.out / name)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.shape}-shaped model, {params / 1e9:.2f}B parameters (vocabulary {config.vocab_size}), saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
