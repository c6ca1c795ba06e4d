"""Seconds per checkpoint for an LLC estimate: LoRA weights only versus all weights.

Same run, probe, checkpoint and SGLD settings; the two are alternated so machine noise hits both.

    uv run bench/llc_cost.py --run runs/quickstart
    uv run bench/llc_cost.py --run runs/quickstart --step 30 --chains 2 --draws 20 --repeats 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> int:
    from analysis import llc

    d = llc.Settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished run directory (e.g. runs/quickstart)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint to measure (default: the last)")
    ap.add_argument("--chains", type=int, default=d.chains)
    ap.add_argument("--draws", type=int, default=d.draws)
    ap.add_argument("--burn-in", type=int, default=d.burn_in)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--n-beta", type=float, default=d.n_beta)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    run, cfg = llc.load_run(args.run)
    step = args.step or run.adapter_steps()[-1]
    settings = llc.Settings(
        lr=args.lr, n_beta=args.n_beta, chains=args.chains, draws=args.draws, burn_in=args.burn_in, batch_size=args.batch_size
    )
    model, tokenizer = llc.load_model(cfg, args.device)
    llc.swap_adapter(model, run.adapter_dir(step))
    probe = llc.build_run_probe(run, cfg, model, tokenizer, settings, args.device, step=step)
    lora = llc.lora_groups(model, None)["all"]
    n_lora = sum(p.numel() for n, p in model.named_parameters() if n in lora)
    n_all = sum(p.numel() for p in model.parameters())
    variants = {"lora-only": lora, "all-weights": None}
    times: dict[str, list[float]] = {k: [] for k in variants}
    values: dict[str, list[float]] = {k: [] for k in variants}
    print(f"{run.path.name} step {step}: {settings.chains} chains x ({settings.burn_in} burn-in + {settings.draws} draws), "
          f"batch {settings.batch_size}, probe {tuple(probe.input_ids.shape)}; "
          f"LoRA {n_lora:,} of {n_all:,} parameters", flush=True)  # fmt: skip
    for r in range(args.repeats):
        for name in variants if r % 2 == 0 else list(variants)[::-1]:
            t0 = time.perf_counter()
            est = llc.estimate(model, probe, variants[name], settings, args.device)
            times[name].append(time.perf_counter() - t0)
            values[name].append(est["llc_mean"])
            print(f"  {name:11s} {times[name][-1]:7.1f} s   llc {est['llc_mean']:.4g}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\nseconds per checkpoint (median):")
    for k in variants:
        print(f"  {k:11s} {med[k]:7.1f} s   (llc {statistics.median(values[k]):.4g})")
    print(f"ratio all-weights / lora-only: {med['all-weights'] / med['lora-only']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
