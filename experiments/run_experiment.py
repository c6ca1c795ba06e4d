"""Train one GRPO experiment from a YAML file.

    uv run experiments/run_experiment.py experiment_configs/quickstart.yaml
    uv run experiments/run_experiment.py experiment_configs/countdown.yaml --dry-run
    uv run experiments/run_experiment.py experiment_configs/quickstart.yaml --set trainer.learning_rate=1e-4
    uv run experiments/run_experiment.py experiment_configs/quickstart.yaml --resume
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_experiment.py",
        description="Train a GRPO experiment described by a YAML file into <output_dir>/<name>/.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The README lists every config key with its default.",
    )
    parser.add_argument("config", help="experiment YAML, e.g. experiment_configs/quickstart.yaml")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any key, value parsed as YAML (repeatable): --set trainer.max_steps=20 --set model.lora.r=8",
    )  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and the plan; load no model")
    parser.add_argument("--resume", action="store_true", help="continue the run from its last trainer/checkpoint-<step>")
    parser.add_argument("--overwrite", action="store_true", help="delete an existing run of the same name first")
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite contradict each other")

    from training_with_unsloth.config import load_config
    from training_with_unsloth.errors import UserError

    try:
        cfg = load_config(args.config, args.overrides)
        from training_with_unsloth.experiment import run_experiment

        run = run_experiment(cfg, resume=args.resume, overwrite=args.overwrite, dry_run=args.dry_run)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: checkpoints and metrics written so far are intact; continue with --resume", file=sys.stderr)
        return 130
    if run is not None:
        print(f"done: {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
