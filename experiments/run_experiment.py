"""Train one GRPO experiment from a YAML file, given by path or by the name of a shipped config.

uv run experiments/run_experiment.py quickstart                      # experiment_configs/quickstart.yaml
uv run experiments/run_experiment.py countdown --dry-run
uv run experiments/run_experiment.py configs/countdown.yaml --dry-run  # configs/ means experiment_configs/
uv run experiments/run_experiment.py path/to/my.yaml --set trainer.learning_rate=1e-4
uv run experiments/run_experiment.py quickstart --resume
uv run grpo-train quickstart --dry-run                               # the same command, as a console script
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training_with_unsloth.cli import command_name, run_main

INTERRUPTED = "interrupted: checkpoints and metrics written so far are intact; continue with --resume"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command_name("run_experiment.py"),
        description="Train a GRPO experiment described by a YAML file into <output_dir>/<name>/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="CONFIG is a YAML path or the name of a shipped config: quickstart, countdown.yaml and\n"
        "configs/countdown.yaml mean experiment_configs/<name>.yaml; an existing path wins. The file\n"
        "used is printed first ('# config: <path>'). docs/configuration.md lists every config key with its default.\n\n"
        "examples:\n"
        "  run_experiment.py quickstart\n"
        "  run_experiment.py countdown --dry-run\n"
        "  run_experiment.py path/to/my.yaml --set trainer.max_steps=20\n"
        "  grpo-train quickstart --resume          (the console script, after `uv sync`)",
    )
    add_run_arguments(parser, dry_run=True)
    return parser


def add_run_arguments(parser: argparse.ArgumentParser, *, dry_run: bool = False) -> None:
    """CONFIG, --set, (--dry-run,) --resume and --overwrite: what every command that starts a run takes."""
    parser.add_argument(
        "config", metavar="CONFIG",
        help="experiment YAML path, or a shipped config name (quickstart, countdown, ...) from experiment_configs/",
    )  # fmt: skip
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any key, value parsed as YAML (repeatable): --set trainer.max_steps=20 --set model.lora.r=8",
    )  # fmt: skip
    if dry_run:
        parser.add_argument(
            "--dry-run", action="store_true", help="validate, print the resolved config and the plan; load no model"
        )
    parser.add_argument("--resume", action="store_true", help="continue the run from its last trainer/checkpoint-<step>")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing run of the same name: remove what the run wrote (jobs/ and files of yours stay); "
        "a folder that is not a run is refused",
    )


def parse_run_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, refusing --resume with --overwrite."""
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_run_arguments(build_parser(), argv)
    started: dict = {}
    return run_main(lambda: _train(args, started), interrupted=lambda: interrupted_text(started, resume=args.resume))


def interrupted_text(started: dict, *, resume: bool = False) -> str:
    """What Ctrl-C prints: --resume where the run has a trainer checkpoint to continue from, else what to do.

    `started` holds the run directory (`run`) and `save_steps` once the config is read."""
    from training_with_unsloth.rundir import RunDir

    if started.get("run") is None or not Path(started["run"]).is_dir():
        return "interrupted before the run started: nothing was written"
    if RunDir(started["run"]).last_trainer_checkpoint() is not None:
        return INTERRUPTED
    every = started.get("save_steps")
    when = f" (one is saved every trainer.save_steps = {every} steps)" if every else ""
    if resume:
        return f"interrupted: the run still has no complete trainer checkpoint{when}: start again with --overwrite"
    return (
        f"interrupted before the first trainer checkpoint{when}, so --resume has nothing to continue from: "
        "start again with --overwrite"
    )


def _train(args: argparse.Namespace, started: dict | None = None) -> int:
    """Resolve the config, validate it, then train (or print the plan with --dry-run)."""
    from training_with_unsloth import distributed
    from training_with_unsloth.config import load_config
    from training_with_unsloth.config_files import resolve_config

    path = resolve_config(args.config)
    if distributed.is_main():  # under torchrun / accelerate launch the other processes print nothing of their own
        # A YAML comment, so the resolved config --dry-run prints after it stays one YAML document.
        print(f"# config: {path}", flush=True)
    cfg = load_config(path, args.overrides)
    if started is not None and not args.dry_run:
        started.update(run=cfg.run_dir, save_steps=cfg.trainer.get("save_steps"))
    from training_with_unsloth.experiment import run_experiment

    run = run_experiment(cfg, resume=args.resume, overwrite=args.overwrite, dry_run=args.dry_run)
    if run is not None and distributed.is_main():
        print(f"done: {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
