"""Pass@K of a trained run's checkpoints, of a base model, or of several models side by side on the same problems.

uv run experiments/evaluate.py --run runs/quickstart                      # its best checkpoint
uv run experiments/evaluate.py --run runs/quickstart --checkpoint all     # every adapter snapshot: the curve
uv run experiments/evaluate.py --model embedded --config quickstart       # the base model alone
uv run experiments/evaluate.py --compare base=embedded qs=runs/quickstart:best --set task.eval_instructions=[number,answer_is]
uv run grpo-eval --run runs/countdown --set task.eval_formats=[one_shot,zero_shot,natural]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from training_with_unsloth.cli import command_name, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("evaluate.py"),
        description="Pass@K (with 95%% intervals) of a run's checkpoint(s), a base model, or several models on the same "
        "held-out problems, generated through the training code's own path.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The settings (task, formats, problems, samples, k, temperature) are the run's own config, --config, or\n"
        "the first run of --compare, with --set and the options below on top. With a run's own settings a checkpoint\n"
        "gives exactly its training-time evaluation. Results: <run>/evaluations/<name>/ for --run, else --out\n"
        "(default runs/evaluations/<name>/): eval/passk-<step>.jsonl, metrics.jsonl, table.md, table.csv, config.yaml.\n\n"
        "examples:\n"
        "  evaluate.py --run runs/quickstart --checkpoint all\n"
        "  evaluate.py --run runs/quickstart --set task.instruction=number --num-problems 24\n"
        "  evaluate.py --model embedded --config quickstart\n"
        "  evaluate.py --compare base=embedded qs=runs/quickstart:best r2=runs/other:final",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", metavar="DIR", help="a run directory: evaluate its checkpoint(s)")
    what.add_argument("--model", metavar="ID_OR_DIR", help="a base model alone: `embedded`, a model directory or a cached hub id")
    what.add_argument(
        "--compare", nargs="+", metavar="LABEL=SPEC",
        help="several models in one table: SPEC is runs/X[:best|final|STEP] (best by default), an adapter folder, "
        "or a model (embedded, a directory, a hub id) for the base model alone",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint", default="best", metavar="WHICH", help="with --run: best (default), final, all or a step number"
    )
    p.add_argument("--config", metavar="CONFIG", help="the evaluation settings: a YAML path or a shipped config name "
                   "(default: the run's own; quickstart for --model)")  # fmt: skip
    p.add_argument("--task", metavar="NAME", help="evaluate on another registered task (its default parameters and rewards)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the settings (repeatable): --set task.prompt_format=natural --set eval.batch_size=32",
    )  # fmt: skip
    p.add_argument("--num-problems", type=int, metavar="N", help="held-out problems to evaluate (eval.num_problems)")
    p.add_argument("--samples", type=int, metavar="N", help="sampled completions per problem (eval.num_samples)")
    p.add_argument("--k", metavar="K,...", help="pass@k values, e.g. 1,4 (eval.k; each at most --samples)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (eval.temperature)")
    p.add_argument(
        "--greedy", action=argparse.BooleanOptionalAction, default=None, help="also one greedy completion (eval.greedy)"
    )
    p.add_argument("--name", metavar="NAME", help="the evaluation's folder name (default: from the settings changed)")
    p.add_argument("--out", metavar="DIR", help="where results go (default: <run>/evaluations/<name>, runs/evaluations/<name>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_main(lambda: _evaluate(args, argv if argv is not None else sys.argv[1:]))


def _ks(text: str | None) -> list[int] | None:
    from training_with_unsloth.errors import UserError

    if text is None:
        return None
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--k '{text}': give comma-separated integers, e.g. --k 1,4") from None
    if not ks or min(ks) < 1:
        raise UserError(f"--k '{text}': every k must be a positive integer")
    return ks


def _evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    from training_with_unsloth import evaluations as ev
    from training_with_unsloth.config_files import resolve_config
    from training_with_unsloth.errors import UserError
    from training_with_unsloth.rundir import RunDir
    from training_with_unsloth.yaml_reader import read_yaml_mapping

    options = {
        "num_problems": args.num_problems,
        "num_samples": args.samples,
        "k": _ks(args.k),
        "temperature": args.temperature,
        "greedy": args.greedy,
    }
    ev.check_options(options)
    base: dict | None = None
    if args.config:
        path = resolve_config(args.config)
        print(f"# config: {path}", flush=True)
        base = read_yaml_mapping(path)
        base.setdefault("name", Path(path).stem)
    if args.run:
        run = RunDir(args.run)
        base = base or ev.read_run_config(run)
        cfg = ev.evaluation_config(base, overrides=args.overrides, task=args.task, options=options)
        targets = ev.targets_for_run(run, args.checkpoint)
        name = args.name or ev.folder_name(args.overrides, options, args.task)
        out = Path(args.out) if args.out else run.path / "evaluations" / name
        nested = False
    else:
        if args.checkpoint != "best":
            raise UserError("--checkpoint goes with --run; in --compare write runs/X:final or runs/X:STEP")
        specs = [(None, args.model)] if args.model else [_label(s) for s in args.compare]
        if base is None:
            from training_with_unsloth.checkpoints import is_run_dir, parse_spec

            first_run = next((path for _, s in specs if is_run_dir(path := parse_spec(s)[0])), None)
            if first_run is not None:
                base = ev.read_run_config(RunDir(first_run))
            else:
                path = resolve_config("quickstart")
                print(f"# config: {path} (the settings; pass --config to choose others)", flush=True)
                base = read_yaml_mapping(path)
                base.setdefault("name", "quickstart")
        cfg = ev.evaluation_config(base, overrides=args.overrides, task=args.task, options=options)
        default_model = {**cfg.model.model_dump(mode="json"), "init_adapter": None}
        targets = []
        for label, spec in specs:
            targets += ev.parse_target(label or "base", spec, default_model)
        labels = [t.label for t in targets]
        if len(set(labels)) < len(labels):
            raise UserError(f"--compare labels must differ: {', '.join(labels)}")
        name = args.name or ("compare-" + "-".join(labels) if args.compare else f"base-{Path(args.model).name}")
        name = name if len(name) <= 80 else name[:80]
        out = Path(args.out) if args.out else Path(cfg.output_dir) / "evaluations" / name
        nested = bool(args.compare)
    ev.check_out(out)
    results = ev.evaluate_targets(cfg, targets, out, nested=nested)
    command = " ".join(["uv run experiments/evaluate.py", *map(shlex.quote, argv)])
    md, csv_path = ev.write_tables(results, cfg, out, command)
    if args.run and args.checkpoint == "all":
        from training_with_unsloth.plots import plot_run

        plot_run(RunDir(out))
    print()
    print(ev.settings_line(cfg, len(ev.rows_evaluated(results[0]))))
    print(ev.markdown_table(results, cfg))
    print(f"written: {md}, {csv_path}, {out / 'eval'}")
    return 0


def _label(text: str) -> tuple[str, str]:
    from training_with_unsloth.errors import UserError

    label, sep, spec = text.partition("=")
    if not sep or not label or not spec:
        raise UserError(f"--compare expects LABEL=SPEC (e.g. base=embedded qs=runs/quickstart:best), got '{text}'")
    return label, spec


if __name__ == "__main__":
    sys.exit(main())
