"""Cost of the KL diagnostics (kl/k1, kl/k2, kl/k3 every step) as a fraction of step time.

The diagnostics need the completions' log-probs under the policy and under the reference (the
adapter switched off): up to two extra forward passes per generation batch, on the steps they run
(`kl.diagnostics_every`, default every 2nd step). This runs the same
config with `kl.diagnostics` on and off, alternated, and compares TRL's `step_time`.

    uv run bench/kl_cost.py                                  # quickstart (embedded model, CPU)
    uv run bench/kl_cost.py --steps 9 --repeats 3 --set trainer.beta=0.04
    uv run bench/kl_cost.py --set kl.diagnostics_every=1        # the cost of measuring every step
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "experiment_configs" / "quickstart.yaml"))
    ap.add_argument("--steps", type=int, default=7, help="steps per run; step 1 is left out (odd: as many measured steps as not)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from training_with_unsloth.config import load_config
    from training_with_unsloth.experiment import run_experiment

    times: dict[bool, list[float]] = {True: [], False: []}
    kl_share: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for diagnostics in (False, True):
                overrides = [
                    f"name=kl-{diagnostics}-{r}",
                    f"output_dir={tmp}",
                    f"trainer.max_steps={args.steps}",
                    "trainer.save_strategy=no",
                    "eval.enabled=false",
                    "checkpoints={steps: [1]}",
                    "logging.wandb=disabled",
                    "logging.plots=false",
                    f"kl.diagnostics={str(diagnostics).lower()}",
                    *args.overrides,
                ]
                run = run_experiment(load_config(args.config, overrides))
                train = [m for m in run.read_metrics() if m["kind"] == "train" and m["step"] > 1]
                steps = [m["step_time"] for m in train]
                times[diagnostics] += steps
                if diagnostics:
                    kl_share += [m.get("time/kl", 0.0) / m["time/step"] for m in train if m.get("time/step")]
                print(f"round {r} diagnostics={diagnostics}: {statistics.fmean(steps):.3f} s/step", flush=True)
    off, on = statistics.fmean(times[False]), statistics.fmean(times[True])
    print(f"\nkl.diagnostics off: {off:.3f} s/step   on: {on:.3f} s/step   cost: {on - off:+.3f} s ({(on - off) / off:+.1%})")
    share = statistics.fmean(kl_share)
    print(f"time/kl (the reference and policy passes, from the step-time breakdown): {share:.1%} of step time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
