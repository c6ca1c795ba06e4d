"""Ask a trained run (or a base model) one question; the answer is streamed as it is generated.

uv run experiments/infer.py --run runs/quickstart "What is 17 + 25?"
uv run experiments/infer.py --run runs/quickstart --task small_sums --terms 17,25    # the task's prompt, graded
uv run experiments/infer.py --run runs/countdown --task countdown --nums 4,7,3 --target 25 --samples 8
uv run experiments/infer.py --run runs/quickstart --interactive
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from training_with_unsloth.cli import command_name, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("infer.py"),
        description="One answer from a run's checkpoint (or a base model), streamed, through the training code's own "
        "model loading and generation path.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="With --task NAME and the task's fields (countdown: --nums 4,7,3 --target 25; small_sums: --terms 4,7)\n"
        "the task's own prompt is asked and the answer is graded: correct or not, and what each of the run's\n"
        "rewards gives it. Greedy by default; --samples N draws N answers at the run's training temperature.\n\n"
        "examples:\n"
        "  infer.py --run runs/quickstart \"What is 17 + 25? End your reply with 'The answer is N.'\"\n"
        "  infer.py --run runs/quickstart --task small_sums --terms 17,25 --samples 8\n"
        "  infer.py --model embedded --interactive",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", metavar="DIR", help="a run directory")
    what.add_argument("--model", metavar="ID_OR_DIR", help="a base model alone (embedded, a directory, a cached hub id)")
    p.add_argument("question", nargs="?", help="the question (a user message); leave out with --task fields or --interactive")
    p.add_argument("--checkpoint", default="best", metavar="WHICH", help="best (default), final or a step number")
    p.add_argument("--task", metavar="NAME", help="render this task's prompt from its fields and grade the answer")
    p.add_argument("--samples", type=int, default=1, metavar="N", help="N sampled answers instead of one greedy one")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default: the run's trainer.temperature)")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="answer budget (default: trainer.max_completion_length)")
    p.add_argument("--interactive", action="store_true", help="a prompt loop: one question per line (task fields as key=value)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key of the run's config (repeatable), e.g. --set task.instruction=number",
    )  # fmt: skip
    return p


def parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    """The known options, and every other `--key value` (or `--key=value`) as a task field.

    Fields are taken out before argparse sees the line, so that a field's value is never read as the question.
    """
    parser = build_parser()
    known = {s for a in parser._actions for s in a.option_strings}
    takes_value = {s for a in parser._actions if a.nargs != 0 for s in a.option_strings}
    fields: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        name = item.partition("=")[0]
        if item.startswith("--") and len(item) > 2 and name not in known:
            key, sep, value = item[2:].partition("=")
            if not sep:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    parser.error(f"task field --{key} needs a value")
                value, i = argv[i + 1], i + 1
            fields[key.replace("-", "_")] = value
        else:
            rest.append(item)
            if name in takes_value and "=" not in item and i + 1 < len(argv):
                rest.append(argv[i + 1])
                i += 1
        i += 1
    args = parser.parse_args(rest)
    if fields and not args.task:
        parser.error(f"--{next(iter(fields))} is a task field: name the task with --task")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    if not (args.question or args.interactive or args.task):
        parser.error("give a QUESTION, --task with its fields, or --interactive")
    return args, fields


def main(argv: list[str] | None = None) -> int:
    args, fields = parse(argv if argv is not None else sys.argv[1:])
    return run_main(lambda: _infer(args, fields))


def _config(args: argparse.Namespace):

    from training_with_unsloth import evaluations as ev
    from training_with_unsloth.config_files import resolve_config
    from training_with_unsloth.rundir import RunDir
    from training_with_unsloth.yaml_reader import read_yaml_mapping

    if args.run:
        run = RunDir(args.run)
        base = ev.read_run_config(run)
        target = ev.targets_for_run(run, args.checkpoint)[0]
    else:
        path = resolve_config("quickstart")
        base = read_yaml_mapping(path)
        base.setdefault("name", "quickstart")
        base["model"] = {**(base.get("model") or {}), "name": args.model}
        target = None
    same_task = args.task is None or args.task == (base.get("task") or {}).get("name")
    cfg = ev.evaluation_config(base, overrides=args.overrides, task=None if same_task else args.task)
    return cfg, target


def _infer(args: argparse.Namespace, fields: dict[str, str]) -> int:
    from training_with_unsloth.errors import UserError
    from training_with_unsloth.session import open_session

    if args.checkpoint == "all":
        raise UserError("--checkpoint all: infer asks one checkpoint; give best, final or a step")
    cfg, target = _config(args)
    session = open_session(cfg)
    if session.note:
        print(f"note: {session.note}")
    session.use(target.ref if target is not None else None)
    who = target.ref.label if target is not None else f"base model {cfg.model.name}"
    print(f"# {who}; {'greedy' if args.samples == 1 else f'{args.samples} samples'}", flush=True)
    try:
        if args.interactive:
            _loop(session, args)
        else:
            row = session.prep.task.row_from_fields(fields) if args.task else None
            ask(session, args, args.question, row)
    finally:
        session.close()
    return 0


def _loop(session: Any, args: argparse.Namespace) -> None:
    from training_with_unsloth.errors import UserError

    hint = "key=value fields, e.g. nums=4,7,3 target=25" if args.task else "a question"
    print(f"one {hint} per line; an empty line or Ctrl-D ends", flush=True)
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            print()
            return
        if not line:
            return
        try:
            if args.task:
                fields = dict(part.partition("=")[::2] for part in line.split())
                ask(session, args, None, session.prep.task.row_from_fields(fields))
            else:
                ask(session, args, line, None)
        except UserError as exc:  # a mistyped line ends nothing: say what was wrong and ask again
            print(f"error: {exc}")


def ask(session: Any, args: argparse.Namespace, question: str | None, row: dict[str, Any] | None) -> list[str]:
    """Generate (streamed when one answer), print, and grade against `row` when there is one."""
    from transformers import TextStreamer

    from training_with_unsloth.evaluation import score_rewards

    trainer = session.trainer
    prompt = row["prompt"] if row is not None else [{"role": "user", "content": question}]
    if row is not None:
        print("\n".join(f"[{m['role']}] {m['content']}" for m in prompt), flush=True)
    budget = args.max_new_tokens or trainer.args.max_completion_length
    temperature = args.temperature if args.temperature is not None else trainer.args.temperature
    gen = dict(max_new_tokens=budget, temperature=temperature, batch_size=max(args.samples, 1))
    if args.samples == 1:
        streamer = TextStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True)
        texts, ids = trainer.generate_completions([prompt], num_samples=1, greedy=True, streamer=streamer, **gen)
    else:
        texts, ids = trainer.generate_completions([prompt], num_samples=args.samples, greedy=False, **gen)
        for i, text in enumerate(texts[0]):
            print(f"--- sample {i + 1}\n{text}")
    texts, ids = texts[0], ids[0]
    if row is None:
        return texts
    task = session.prep.task
    verdicts = [bool(task.is_correct(t, row)) for t in texts]
    rewards = score_rewards(session.reward_funcs, [prompt] * len(texts), texts, [row] * len(texts), completion_ids=ids)
    try:
        gold = task.gold(row)
    except ValueError as exc:  # e.g. a Countdown problem without a solution
        gold = str(exc)
    for i, ok in enumerate(verdicts):
        parts = ", ".join(f"{name} {vals[i]:.3g}" if vals[i] is not None else f"{name} -" for name, vals in rewards.items())
        tag = f"sample {i + 1}: " if len(texts) > 1 else ""
        print(f"{tag}{'correct' if ok else 'wrong'} (gold: {gold}); rewards: {parts}")
    if len(texts) > 1:
        print(f"{sum(verdicts)}/{len(texts)} correct")
    return texts


if __name__ == "__main__":
    sys.exit(main())
