"""Where an LLC estimate's time goes, and what would make it cheaper.

    uv run bench/llc_cost.py --run runs/quickstart                       # the defaults, per part
    uv run bench/llc_cost.py --run runs/quickstart --sizes 2,4,8 --compile --repeats 3

1. Seconds per SGLD step (one forward and backward of the probe loss through the LoRA model) at each probe
   size in `--sizes`: the cost of batching two chains' rows through one forward is the cost of twice the rows.
   With `--compile`, the same step under `torch.compile` (the first call, which compiles, timed apart), the two
   variants alternated so machine noise hits both.
2. One whole estimate at `llc.py`'s defaults on the chosen checkpoint (the run-level probe, `--lr`), with and
   without the MALA acceptance measurement, alternated: seconds per checkpoint and the share MALA costs.

Run it alone: two torch processes on 2 cores slow each other 5-14x.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    import torch

    from analysis.llc_estimator import Settings, estimate, lora_groups
    from analysis.per_checkpoint import Context
    from analysis.run_probe import run_probe
    from analysis.runs import open_run

    d = Settings()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a finished run directory (e.g. runs/quickstart)")
    ap.add_argument("--step", type=int, default=None, help="checkpoint to measure (default: the last)")
    ap.add_argument("--sizes", default="4", help="probe rows per SGLD step to time (comma-separated)")
    ap.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per variant (after one warm-up)")
    ap.add_argument("--lr", type=float, default=3e-4, help="step size of the whole estimate (the quickstart's calibrated one)")
    ap.add_argument("--no-estimate", action="store_true", help="only the per-step timings")
    args = ap.parse_args()

    run = open_run(args.run, checkpoints=True)
    ctx = Context(run, "cpu")
    step = args.step or run.adapter_steps()[-1]
    print(f"{run.path.name} step {step}, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    model = ctx.model
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    compiled = torch.compile(model) if args.compile else None

    print("\nseconds per SGLD step (forward + backward of the probe loss, LoRA gradients):")
    for size in (int(x) for x in args.sizes.split(",")):
        probe = run_probe(ctx, replace(d, num_probes=size, batch_size=size, probe_from=tuple(sorted({1, step}))))
        ctx.swap(step)
        ids = probe.input_ids
        loss_fn = probe.loss_fn()
        variants = {"eager": model} | ({"compiled": compiled} if compiled is not None else {})
        times: dict[str, list[float]] = {k: [] for k in variants}
        for name, m in variants.items():  # warm-up (and, compiled, the compilation)
            t0 = time.perf_counter()
            _step(m, loss_fn, ids, lora)
            print(f"  n={size} {name}: first call {time.perf_counter() - t0:.1f} s", flush=True)
        for r in range(args.repeats):
            for name in variants if r % 2 == 0 else list(variants)[::-1]:
                t0 = time.perf_counter()
                _step(variants[name], loss_fn, ids, lora)
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            print(f"  n={size} {tuple(ids.shape)} {name:8s}: {statistics.median(ts):.3f} s/step (median of {len(ts)})")

    if args.no_estimate:
        return 0
    settings = replace(d, lr=args.lr, probe_from=tuple(sorted({run.adapter_steps()[0], run.adapter_steps()[-1]})))
    probe = run_probe(ctx, settings)
    ctx.swap(step)
    masks = lora_groups(model, None)["all"]
    variants = {"defaults": settings, "no MALA": replace(settings, mala_steps=0)}
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    print(f"\none estimate at the defaults ({settings.chains} chains x {settings.burn_in}+{settings.draws} steps, "
          f"{settings.num_probes} probe rows, MALA {settings.mala_steps} steps), alternated:")  # fmt: skip
    for r in range(2):
        for name in variants if r % 2 == 0 else list(variants)[::-1]:
            t0 = time.perf_counter()
            est = estimate(model, probe, masks, variants[name], "cpu")
            seconds[name].append(time.perf_counter() - t0)
            print(f"  {name:9s} {seconds[name][-1]:6.1f} s   llc {est['llc_mean']:.4g}", flush=True)
    full, bare = statistics.median(seconds["defaults"]), statistics.median(seconds["no MALA"])
    print(f"\nper checkpoint: {full:.1f} s at the defaults, {bare:.1f} s without MALA ({(full - bare) / full:.0%} is MALA)")
    return 0


def _step(model, loss_fn, ids, params) -> None:
    import torch

    loss = loss_fn(model, ids).float().mean()
    torch.autograd.grad(loss, params)


if __name__ == "__main__":
    sys.exit(main())
