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
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "experiment_configs" / "quickstart.yaml"))
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps per timed run")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the three variants")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from training_with_unsloth.assembly import build_grpo_config, build_trainer, research_callbacks
    from training_with_unsloth.config import load_config
    from training_with_unsloth.models import backends
    from training_with_unsloth.plan import prepare
    from training_with_unsloth.rundir import RunDir
    from training_with_unsloth.timing import PHASES

    overrides = [f"trainer.max_steps={args.steps}", "logging.wandb=disabled", "trainer.save_strategy=no", *args.overrides]
    cfg = load_config(args.config, overrides)
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
            targs = build_grpo_config(cfg, run, weights, cuda=cuda)
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

    variants = ["plain", "ours-off", "ours-on"]
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
    print(f"ratio ours-off / plain: {med['ours-off'] / med['plain']:.3f}")
    print(f"ratio ours-on  / plain: {med['ours-on'] / med['plain']:.3f}")
    print("\nwhere a step goes (seconds per step, median over rounds; time/<phase> of the run's breakdown):")
    for v in variants:
        if phases[v]:
            names = [p for p in PHASES if any(p in r for r in phases[v])]
            cells = [f"{p} {statistics.median(r.get(p, 0.0) for r in phases[v]):.3f}" for p in names]
            print(f"  {v:9s} " + ", ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
