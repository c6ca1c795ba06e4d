"""Adapter checkpoints after training: what `runs/X:best` names, and putting a snapshot into a live model.

A reference is a run directory with a checkpoint (`best`, `final`, a step, or `all`) or a PEFT adapter
directory. Loading copies the snapshot's LoRA tensors into the model's adapter and checks that every one
of them found its place, so an adapter of another shape is one line, never a silent partial load.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_with_unsloth.errors import UserError
from training_with_unsloth.rundir import RunDir, file_problem

CHECKPOINTS = ("best", "final", "all")


@dataclass(frozen=True)
class AdapterRef:
    """One adapter snapshot: its folder, the training step it holds (None for a bare PEFT folder), a label."""

    path: Path
    step: int | None
    label: str


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / "config.yaml").is_file()


def _meta_step(folder: Path) -> int | None:
    try:
        step = json.loads((folder / "meta.json").read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None
    return int(step) if isinstance(step, int) else None


def resolve(run: RunDir, which: str = "best") -> list[AdapterRef]:
    """The snapshots `which` names in `run`: `best`, `final` (the last step), `all` (every step) or a step number."""
    steps = run.adapter_steps()
    if not steps:
        raise UserError(f"{run.checkpoints} holds no adapter checkpoints (adapter-<step>/ with meta.json): is the run trained?")
    shown = ", ".join(map(str, steps))
    if which == "all":
        return [AdapterRef(run.adapter_dir(s), s, f"step {s}") for s in steps]
    if which == "final":
        return [AdapterRef(run.adapter_dir(steps[-1]), steps[-1], f"final (step {steps[-1]})")]
    if which == "best":
        if not (run.best / "adapter_model.safetensors").is_file():
            raise UserError(
                f"{run.best} does not exist (the run kept no best adapter): use --checkpoint final or a step ({shown})"
            )
        step = _meta_step(run.best)
        return [AdapterRef(run.best, step, f"best (step {step})")]
    if not re.fullmatch(r"\d+", which):
        raise UserError(f"checkpoint '{which}': use best, final, all or a step number ({shown})")
    if int(which) not in steps:
        raise UserError(f"{run.path} has no adapter snapshot at step {which}: steps with one are {shown}")
    return [AdapterRef(run.adapter_dir(int(which)), int(which), f"step {which}")]


def parse_spec(text: str) -> tuple[str, str | None]:
    """`runs/X:best` -> (`runs/X`, `best`); a path or model id without a known checkpoint suffix -> (text, None)."""
    head, sep, tail = text.rpartition(":")
    if sep and head and (tail in CHECKPOINTS or tail.isdigit()):
        return head, tail
    return text, None


def adapter_folder(path: str | Path) -> AdapterRef:
    """A PEFT adapter folder (a run's `checkpoints/best`, `checkpoints/adapter-<step>`, or one of your own)."""
    folder = Path(path).expanduser()
    if is_run_dir(folder):
        return resolve(RunDir(folder), "best")[0]
    if not (folder / "adapter_model.safetensors").is_file() or not (folder / "adapter_config.json").is_file():
        raise UserError(
            f"{folder} is not a PEFT adapter folder (adapter_model.safetensors and adapter_config.json): "
            "point at runs/<name>/checkpoints/best, an adapter-<step> folder, or a run directory"
        )
    step = _meta_step(folder)
    return AdapterRef(folder, step, str(folder))


def owning_run(folder: Path) -> RunDir | None:
    """The run directory an adapter folder belongs to (`<run>/checkpoints/<adapter>`), if any."""
    parent = folder.resolve().parent
    if parent.name == "checkpoints" and is_run_dir(parent.parent):
        return RunDir(parent.parent)
    return None


def adapter_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{folder}/adapter_config.json cannot be read ({type(exc).__name__}): is it a PEFT adapter?") from None


def check_lora_shape(folder: Path, lora: Any, *, where: str) -> None:
    """The adapter's rank and alpha must be the config's: LoRA's scale alpha/r is not in the tensors."""
    saved = adapter_config(folder)
    for ours, theirs in (("r", "r"), ("alpha", "lora_alpha")):
        want, got = getattr(lora, ours), saved.get(theirs)
        if got is not None and got != want:
            raise UserError(
                f"{where}: {folder} is a LoRA adapter with {theirs} {got}, the config asks for model.lora.{ours} {want}: "
                f"set model.lora.{ours}: {got} (and the rest of the adapter's shape) or pick a matching adapter"
            )


def check_whole(folder: Path, *, where: str) -> None:
    """A UserError when the adapter's files are cut short or do not parse (a copy interrupted, a full disk)."""
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        problem = file_problem(folder / name)
        if problem is not None:
            raise UserError(f"{where}: {folder / name} is {problem}: copy or save the adapter again")


def load_weights(model: Any, folder: Path) -> None:
    """Copy a snapshot's LoRA tensors into the model's live adapter; every LoRA tensor must be replaced."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    check_whole(folder, where="adapter")
    weights = load_file(folder / "adapter_model.safetensors")
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # a tensor of another shape (rank, layer sizes)
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc).splitlines()[0])
        raise UserError(f"{folder} does not match the model's LoRA adapter: {first[:200]}") from None
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
    if unexpected or missing:
        raise UserError(
            f"{folder} does not match the model's LoRA adapter "
            f"({len(unexpected)} unexpected, {len(missing)} missing tensors, e.g. {(unexpected or missing)[0]}): "
            "the run's model.lora (r, target_modules) and base model must be the adapter's"
        )


def zero_adapter(model: Any) -> None:
    """Set every LoRA `B` matrix to zero: the adapter then adds exactly nothing (the base model's outputs)."""
    import torch

    found = False
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.zero_()
                found = True
    if not found:
        raise RuntimeError("the model has no LoRA adapter to switch off")


def init_adapter_ref(model_cfg: Any) -> AdapterRef:
    """`model.init_adapter` resolved and checked without loading a model: an adapter folder whose rank and alpha
    are `model.lora`'s and, when it belongs to a run, whose run trained the same base model."""
    from training_with_unsloth.yaml_reader import read_yaml_mapping

    ref = adapter_folder(model_cfg.init_adapter)
    check_whole(ref.path, where="model.init_adapter")
    check_lora_shape(ref.path, model_cfg.lora, where="model.init_adapter")
    run = owning_run(ref.path) if not is_run_dir(model_cfg.init_adapter) else RunDir(model_cfg.init_adapter)
    if run is not None:
        base = (read_yaml_mapping(run.config, what="run's config").get("model") or {}).get("name")
        if base is not None and base != model_cfg.name:
            raise UserError(
                f"model.init_adapter: {ref.path} was trained on '{base}', this run loads '{model_cfg.name}': "
                f"set model.name: {base} or start from an adapter of this base"
            )
    return ref


def apply_init_adapter(model: Any, model_cfg: Any) -> AdapterRef | None:
    """Load `model.init_adapter`'s LoRA weights into the trainer's model (both backends), before training starts."""
    if not model_cfg.init_adapter:
        return None
    ref = init_adapter_ref(model_cfg)
    load_weights(model, ref.path)
    return ref
