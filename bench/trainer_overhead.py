"""Overhead of ResearchGRPOTrainer over TRL's GRPOTrainer, on the same GRPO config.

Three variants, alternated in one process so machine noise hits them alike:
  plain    trl.GRPOTrainer
  ours-off ResearchGRPOTrainer with no research callbacks and no KL diagnostics (the subclass alone)
  ours-on  ResearchGRPOTrainer with the config's research callbacks (metrics.jsonl, Pass@K at step
           0 / every / end, adapter snapshots, live plots) and its KL settings
Both of ours generate as the config says (`model.fast_generation`, on by default on the transformers
backend: on a CPU that makes ours faster than plain TRL; under Unsloth it does not apply).
After the ratios: each of ours' step-time breakdown (timing.py's phases, seconds per step).
Each run loads a fresh model (LoRA is attached in place) and times `trainer.train()` for N steps.

    uv run bench/trainer_overhead.py                      # embedded model, quickstart settings
    uv run bench/trainer_overhead.py --steps 8 --repeats 3
    uv run bench/trainer_overhead.py --config countdown --variants plain,ours-off --json overhead.json   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


VARIANTS = ("plain", "ours-off", "ours-on")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "experiment_configs" / "quickstart.yaml"),
                    help="experiment YAML path or shipped config name (default: quickstart)")  # fmt: skip
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the variants")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write each variant's s/step (all rounds, median)")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants) or "plain" not in variants:
        ap.error(f"--variants: a comma-separated list from {', '.join(VARIANTS)} that includes plain")

    from training_with_unsloth.cli import run_main

    return run_main(lambda: _run(args, variants))


def _run(args: argparse.Namespace, variants: list[str]) -> int:
    """Time the variants, alternated, and print (and with --json write) their s/step and ratios."""
    from training_with_unsloth.assembly import build_grpo_config, build_trainer, research_callbacks
    from training_with_unsloth.config import load_config
    from training_with_unsloth.config_files import resolve_config
    from training_with_unsloth.models import backends
    from training_with_unsloth.plan import prepare
    from training_with_unsloth.rundir import RunDir
    from training_with_unsloth.timing import PHASES

    overrides = [f"trainer.max_steps={args.steps}", "logging.wandb=disabled", "trainer.save_strategy=no", *args.overrides]
    cfg = load_config(resolve_config(args.config), overrides)
    backends.offline_environment(False)
    cuda = backends.cuda_available()
    prep = prepare(cfg, cuda=cuda)
    backends.prepare(prep.backend)

    from transformers import ProgressCallback, set_seed
    from trl import GRPOTrainer

    import rewards
    from training_with_unsloth.controls.kl import KLSettings  # controls/ only after backends.prepare()

    funcs, weights = rewards.build(prep.reward_specs)
    train_ds, eval_ds = prep.task.build(cfg.seed)

    def timed(variant: str) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            run = RunDir(Path(tmp) / cfg.name)
            run.create()
            targs = build_grpo_config(cfg, run, weights, cuda=cuda, backend=prep.backend)
            set_seed(cfg.seed)
            loaded = backends.load(cfg.model, prep.backend, seed=cfg.seed, gradient_checkpointing=targs.gradient_checkpointing)
            extras = research_callbacks(prep, run, eval_ds, funcs, weights, targs.max_completion_length)
            extras = [cb for cb in extras if not isinstance(cb, ProgressCallback)]
            trainer = build_trainer(
                prep, run, args=targs, model=loaded.model, tokenizer=loaded.tokenizer, peft_config=loaded.peft_config,
                train_ds=train_ds, eval_ds=eval_ds, reward_funcs=funcs, reward_weights=weights,
                callbacks=extras if variant == "ours-on" else [],
                kl=KLSettings(diagnostics=False) if variant == "ours-off" else None,
                trainer_cls=GRPOTrainer if variant == "plain" else None,
            )  # fmt: skip
            trainer.remove_callback(ProgressCallback)  # quiet: the figures below are what this prints
            t0 = time.perf_counter()
            trainer.train()
            seconds = (time.perf_counter() - t0) / args.steps
            timer = getattr(trainer, "timer", None)  # the step-time breakdown (timing.py); plain TRL has none
            if timer is not None:
                phases[variant].append({k: v / args.steps for k, v in timer.total.items()})
            return seconds

    times: dict[str, list[float]] = {v: [] for v in variants}
    phases: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    print(f"backend {prep.backend}, model {cfg.model.name}, {args.steps} steps x {args.repeats} rounds; "
          f"ours-on = eval at {prep.eval_steps}, adapters at {prep.checkpoint_steps}", flush=True)  # fmt: skip
    for r in range(args.repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            times[v].append(timed(v))
            print(f"  round {r + 1} {v:9s} {times[v][-1]:.3f} s/step", flush=True)

    med = {v: statistics.median(t) for v, t in times.items()}
    print("\nseconds per step (median over rounds):")
    for v in variants:
        print(f"  {v:9s} {med[v]:.3f}   (all: {', '.join(f'{x:.3f}' for x in times[v])})")
    for v in (x for x in variants if x != "plain"):
        print(f"ratio {v} / plain: {med[v] / med['plain']:.3f}")
    if args.json is not None:
        import json

        record = {"backend": prep.backend, "model": cfg.model.name, "steps": args.steps, "repeats": args.repeats,
                  "seconds_per_step": times, "median": med}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    print("\nwhere a step goes (seconds per step, median over rounds; time/<phase> of the run's breakdown):")
    for v in variants:
        if phases[v]:
            names = [p for p in PHASES if any(p in r for r in phases[v])]
            cells = [f"{p} {statistics.median(r.get(p, 0.0) for r in phases[v]):.3f}" for p in names]
            print(f"  {v:9s} " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
