"""Which probe, and how big: the LLC's spread over probe draws against the spread between chains and the change
between the first and the last checkpoint, for each probe source.

    uv run bench/llc_probe_study.py --run runs/quickstart --sources mix,last,first,reference --draws-of-probe 1
    uv run bench/llc_probe_study.py --run runs/quickstart --sources mix --sizes 4,8 --draws-of-probe 5

For each source x probe size x probe draw x checkpoint (default: the first and the last) it estimates the LLC at
the given sampler settings (`analysis/llc_estimator.py`) and prints one line; at the end, per source and size:
the mean LLC at each checkpoint, the standard deviation across probe draws (the probe spread), the mean spread
between chains, the first-to-last change, and the share of healthy estimates and of draws below the init loss.
`--out FILE` appends every estimate as a JSON line. Sources: `last`, `first`, `mix` (alternating first and
last), `reference` (gold answers). Run it alone: two torch processes on 2 cores slow each other 5-14x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    from analysis.llc_estimator import Settings, estimate, health, lora_groups
    from analysis.llc_health import below_init
    from analysis.per_checkpoint import Context
    from analysis.run_probe import probe_hash, run_probe
    from analysis.runs import open_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--sources", default="mix,last,first,reference")
    ap.add_argument("--sizes", default="4", help="probe rows (comma-separated)")
    ap.add_argument("--draws-of-probe", type=int, default=1, help="disjoint probe draws per source and size")
    ap.add_argument("--steps", default=None, help="checkpoints (default: the first and the last)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--burn-in", type=int, default=8)
    ap.add_argument("--mala-steps", type=int, default=4)
    ap.add_argument("--out", default=None, help="append each estimate as a JSON line")
    args = ap.parse_args()

    run = open_run(args.run, checkpoints=True)
    ctx = Context(run, "cpu")
    available = run.adapter_steps()
    steps = [int(s) for s in args.steps.split(",")] if args.steps else [available[0], available[-1]]
    first, last = available[0], available[-1]
    sources = {"last": ("rollouts", (last,)), "first": ("rollouts", (first,)), "mix": ("rollouts", (first, last)),
               "reference": ("reference", None)}  # fmt: skip
    masks = lora_groups(ctx.model, None)["all"]
    records = []
    for source in args.sources.split(","):
        probe_kind, probe_from = sources[source]
        for size in (int(x) for x in args.sizes.split(",")):
            for draw in range(args.draws_of_probe):
                s = Settings(lr=args.lr, chains=args.chains, draws=args.draws, burn_in=args.burn_in,
                             probe=probe_kind, probe_from=probe_from, num_probes=size, probe_draw=draw,
                             mala_steps=args.mala_steps)  # fmt: skip
                probe = run_probe(ctx, s)
                for step in steps:
                    ctx.swap(step)
                    t0 = time.perf_counter()
                    est = estimate(ctx.model, probe, masks, s, "cpu")
                    seconds = time.perf_counter() - t0
                    ok, why = health(est, s)
                    rec = {"source": source, "size": size, "draw": draw, "step": step, "llc": est["llc_mean"],
                           "chain_std": est["llc_std"], "per_chain": est["per_chain"], "healthy": ok,
                           "below_init": below_init(est["trace"], s.burn_in, est["init_loss"]),
                           "mala": est["mala_acceptance"], "seconds": round(seconds, 1), "probe_hash": probe_hash(probe),
                           "lr": s.lr, "chains": s.chains, "burn_in": s.burn_in, "draws": s.draws, "notes": why,
                           "init_loss": est["init_loss"], "trace": est["trace"]}  # fmt: skip
                    records.append(rec)
                    state = "healthy" if ok else "UNHEALTHY"
                    print(f"{source:9s} n={size} draw {draw} step {step:>3}: llc {rec['llc']:.3f} +- {rec['chain_std']:.3f} "
                          f"below {rec['below_init']:.0%} {state} ({seconds:.0f} s)", flush=True)  # fmt: skip
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(rec) + "\n")
    print("\nsource     n  step   mean LLC  probe sd  chain sd  healthy  below init")
    for key in dict.fromkeys((r["source"], r["size"]) for r in records):
        rows = [r for r in records if (r["source"], r["size"]) == key]
        means = {}
        for step in steps:
            here = [r for r in rows if r["step"] == step]
            vals = [r["llc"] for r in here]
            means[step] = statistics.mean(vals)
            probe_sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
            print(f"{key[0]:9s} {key[1]:>2} {step:>5} {means[step]:>10.3f} {probe_sd:>9.3f} "
                  f"{statistics.mean(r['chain_std'] for r in here):>9.3f} {sum(r['healthy'] for r in here)}/{len(here)}"
                  f"{statistics.mean(r['below_init'] for r in here):>11.0%}")  # fmt: skip
        if len(steps) > 1:
            print(f"{'':9s} {'':>2} change first -> last: {means[steps[-1]] - means[steps[0]]:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
