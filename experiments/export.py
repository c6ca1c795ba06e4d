"""Turn a run's adapter into a model other tools load: merged into its base (default), the adapter alone, or GGUF.

uv run experiments/export.py --run runs/quickstart --out exports/quickstart            # merged, loads in transformers
uv run experiments/export.py --run runs/quickstart --adapter-only --out exports/qs-lora  # PEFT adapter + model card
uv run experiments/export.py --run runs/countdown --gguf q4_k_m --out exports/cd-gguf    # Unsloth + a CUDA GPU + llama.cpp
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from training_with_unsloth.cli import command_name, run_main

DTYPES = ("auto", "float32", "bfloat16", "float16")  # --dtype (kept here: parsing imports nothing of torch)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("export.py"),
        description="Export a run's LoRA adapter: merged into the base it trained on (a model plain transformers, vLLM "
        "or lm-evaluation-harness loads), the adapter alone with a model card, or GGUF.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The merged model is saved in the dtype the run computed in (--dtype auto: float32 for a CPU run, so it\n"
        "answers exactly as base + adapter; bfloat16/float16 for a GPU run; a 4-bit base is merged onto its 16-bit\n"
        "weights). README.md (model card) and export.json go with every export. --gguf writes its .gguf files (and\n"
        "Ollama's Modelfile) into --out; offline it needs a llama.cpp build in ~/.unsloth/llama.cpp (or\n"
        "$UNSLOTH_LLAMA_CPP_PATH). Network only with --download or --push-to-hub.",
    )
    p.add_argument("--run", required=True, metavar="DIR", help="the run directory")
    p.add_argument("--checkpoint", default="best", metavar="WHICH", help="best (default), final or a step number")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must be empty unless --overwrite)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--adapter-only", action="store_true", help="the PEFT adapter and its model card, no merge")
    kind.add_argument(
        "--gguf", metavar="QUANT", help="GGUF through Unsloth's exporter (e.g. q4_k_m, q8_0, f16); needs a CUDA GPU"
    )
    p.add_argument(
        "--download", action="store_true",
        help="allow the network: the base model from the hub if not cached; for --gguf, Unsloth may download and build llama.cpp",
    )  # fmt: skip
    p.add_argument("--dtype", default="auto", choices=DTYPES, help="dtype of a merged export")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload the export to this Hugging Face repository (uses the network)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _export(args, argv if argv is not None else sys.argv[1:]))


def _export(args: argparse.Namespace, argv: list[str]) -> int:
    from training_with_unsloth import exporting
    from training_with_unsloth.checkpoints import resolve
    from training_with_unsloth.config import validate
    from training_with_unsloth.errors import UserError
    from training_with_unsloth.evaluations import read_run_config
    from training_with_unsloth.models import backends
    from training_with_unsloth.rundir import RunDir

    if args.checkpoint == "all":
        raise UserError("--checkpoint all: export one checkpoint (best, final or a step)")
    run = RunDir(args.run)
    cfg = validate(read_run_config(run))
    (ref,) = resolve(run, args.checkpoint)
    out = Path(args.out)
    exporting.check_out(out, overwrite=args.overwrite)
    if args.download:
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"download": True})})
    backends.offline_environment(bool(args.push_to_hub) or cfg.model.download)
    command = " ".join(["uv run experiments/export.py", *map(shlex.quote, argv)])
    files: list[str] = []
    if args.gguf:
        written = exporting.gguf(cfg, ref, out, args.gguf, allow_network=args.download)
        files = [p.name for p in written]
        kind, dtype = "gguf", args.gguf
    elif args.adapter_only:
        exporting.adapter_only(ref, out, base_name=cfg.model.name)
        kind, dtype = "adapter", None
    else:
        dtype = exporting.trained_dtype(run, cfg) if args.dtype == "auto" else args.dtype
        exporting.merge(cfg, ref, out, dtype=dtype)
        kind = "merged"
    record = {
        "run": str(run.path),
        "checkpoint": str(ref.path),
        "step": ref.step,
        "kind": kind,
        "dtype": dtype,
        "base": cfg.model.name,
        **({"files": files} if files else {}),
    }
    exporting.write_card(out, exporting.card(run, cfg, ref, kind=kind, dtype=dtype, command=command), record)
    print(f"exported {ref.label} of {run.path} ({kind}{', ' + dtype if dtype else ''}) -> {out}")
    if files:
        print(f"  {', '.join(files)}")
    if args.push_to_hub:
        print(f"pushed: {exporting.push(out, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
