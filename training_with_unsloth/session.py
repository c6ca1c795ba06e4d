"""A model session after training: the run's trainer, built exactly as training builds it but never trained.

Evaluation, inference and export need the model a run trained (its base, precision and LoRA shape) and,
for generation, the very path training-time Pass@K used: `ResearchGRPOTrainer.generate_completions`
(TRL's `_generate_single_turn`, Unsloth's on a GPU), with the prompts chat-templated by the trainer. A
`Session` builds that trainer once per base model (no research controls, nothing written to any run)
and swaps adapter snapshots into it; `use(None)` switches the adapter off (its `B` matrices zeroed), which
is the base model.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_with_unsloth.checkpoints import AdapterRef, load_weights, zero_adapter
from training_with_unsloth.config import ExperimentConfig, ModelConfig
from training_with_unsloth.models import backends
from training_with_unsloth.rundir import RunDir


def model_for_device(model: ModelConfig, cuda: bool) -> tuple[ModelConfig, str | None]:
    """The model config to load on this machine, and a note when it differs from the run's.

    Off CUDA a 4-bit run is loaded onto 16-bit weights (its adapters are plain PEFT LoRA files whose tensor
    names do not depend on the base's quantization), a pre-quantized repository onto the 16-bit base it came
    from, and the Unsloth backend becomes transformers + PEFT.
    """
    from training_with_unsloth.models.prequantized import cpu_base, is_prequantized

    if cuda:
        return model, None
    notes = []
    update: dict[str, Any] = {}
    if model.backend == "unsloth":
        update["backend"] = "transformers"
        notes.append("the run used Unsloth (CUDA only); here transformers + PEFT loads it")
    if is_prequantized(model.name):
        base = cpu_base(model.name, allow_download=model.download)
        update.update(name=base, load_in_4bit=False)
        notes.append(
            f"{model.name} is pre-quantized (bitsandbytes, CUDA only); on the CPU its adapters go onto the 16-bit base {base}"
        )
    elif model.load_in_4bit:
        update["load_in_4bit"] = False
        notes.append("the run used a 4-bit base; on the CPU its adapters are loaded onto the 16-bit base weights")
    return (model.model_copy(update=update), "; ".join(notes)) if update else (model, None)


@dataclass
class Session:
    """The trainer of `cfg` (built, never trained) and what it was built from."""

    cfg: ExperimentConfig
    prep: Any  # plan.Prepared
    trainer: Any  # ResearchGRPOTrainer
    loaded: Any  # backends.LoadedModel
    reward_funcs: list
    reward_weights: list[float]
    eval_rows: list[dict[str, Any]]
    note: str | None
    _scratch: Any  # the TemporaryDirectory the trainer's output_dir points into (never used for outputs)
    current: AdapterRef | None = None

    @property
    def model(self) -> Any:
        return self.trainer.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def use(self, ref: AdapterRef | None) -> None:
        """Put an adapter snapshot into the model, or (None) switch the adapter off: the base model."""
        if ref is None:
            zero_adapter(self.model)
        else:
            load_weights(self.model, ref.path)
        self.current = ref

    def close(self) -> None:
        """Free the model (several base models in one comparison are loaded one after another)."""
        import gc

        self.trainer = None
        self.loaded = None
        gc.collect()
        if backends.cuda_available():
            import torch

            torch.cuda.empty_cache()
        self._scratch.cleanup()


def open_session(cfg: ExperimentConfig) -> Session:
    """Load `cfg`'s model with an empty adapter of its LoRA shape into the trainer training would build."""
    from transformers import set_seed

    from training_with_unsloth.plan import check_eval_size, prepare

    cuda = backends.cuda_available()
    model_cfg, note = model_for_device(cfg.model, cuda)
    cfg = cfg.model_copy(update={"model": model_cfg, "logging": cfg.logging.model_copy(update={"wandb": "disabled"})})
    backends.offline_environment(cfg.model.download)
    prep = prepare(cfg, cuda=cuda)
    if cfg.model.name != "embedded":
        backends.resolve_model_path(cfg.model.name, allow_download=cfg.model.download)
    backends.prepare(prep.backend)
    import rewards as reward_registry
    from training_with_unsloth.assembly import build_grpo_config, build_trainer

    funcs, weights = reward_registry.build(prep.reward_specs, on_error=cfg.rewards_on_error)
    scratch = tempfile.TemporaryDirectory(prefix="grpo-session-")
    scratch_run = RunDir(Path(scratch.name) / "run")
    args = build_grpo_config(cfg, scratch_run, weights, cuda=cuda, backend=prep.backend)
    set_seed(cfg.seed)
    train_ds, eval_ds = prep.task.build(cfg.seed)
    check_eval_size(cfg, eval_ds)  # eval.num_problems no larger than the held-out set
    loaded = backends.load(cfg.model, prep.backend, seed=cfg.seed, gradient_checkpointing=False)
    trainer = build_trainer(
        prep,
        scratch_run,
        args=args,
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        peft_config=loaded.peft_config,
        train_ds=train_ds,
        eval_ds=eval_ds,
        reward_funcs=funcs,
        reward_weights=weights,
        callbacks=[],
    )
    return Session(cfg, prep, trainer, loaded, funcs, weights, list(eval_ds), note, scratch)
