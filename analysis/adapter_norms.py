"""How far each checkpoint's adapter has moved the model: the norm of the LoRA update per component.

    uv run analysis/adapter_norms.py --run runs/quickstart
    uv run analysis/adapter_norms.py --run runs/quickstart --grouping attn-mlp

A LoRA adapter adds Delta W = s B A to each adapted weight (s = alpha / r, or alpha / sqrt(r) with
rsLoRA). B starts at zero, so ||Delta W||_F is the distance of the effective weights from the base
model's, i.e. from the adapter's initialisation. This statistic reads only the adapter files (no
model is loaded, a checkpoint takes well under a second) and writes `analysis/adapter_norms.csv`:
`delta_norm` (all adapted weights together: the square root of the summed squares) and
`delta_norm[<component>]` per group of `--grouping` (default: attention / MLP x early / middle /
late layers), plus `delta_norm_rms` (per adapted weight, the root mean square entry of Delta W), and
the heatmap `analysis/adapter_norms.png`. Beside the LLC it separates "the weights moved" from "the
loss landscape around them changed".
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analysis.llc_estimator import GROUPINGS, group_names  # noqa: E402
from training_with_unsloth.errors import UserError  # noqa: E402


def lora_scale(config: dict[str, Any]) -> float:
    """The factor PEFT multiplies B A by: alpha / r (alpha / sqrt(r) with rsLoRA)."""
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise UserError("adapter_config.json has a rank_pattern / alpha_pattern: per-module ranks are not supported here")
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def delta_squares(folder: Path) -> dict[str, tuple[float, int]]:
    """Per adapted module: (||s B A||_F^2, number of entries of Delta W), from an adapter folder's files."""
    import torch
    from safetensors.torch import load_file

    from training_with_unsloth.checkpoints import check_whole

    check_whole(folder, where="adapter")
    scale = lora_scale(json.loads((folder / "adapter_config.json").read_text()))
    weights = load_file(folder / "adapter_model.safetensors")
    out = {}
    for name, a in weights.items():
        if ".lora_A." not in name:
            continue
        b = weights.get(name.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise UserError(f"{folder}: {name} has no matching lora_B tensor")
        a, b = a.double(), b.double()
        # ||B A||_F^2 = trace((B^T B)(A A^T)): two r x r products instead of the full out x in matrix
        sq = float(torch.trace((b.T @ b) @ (a @ a.T))) * scale**2
        out[name.replace(".lora_A.weight", "")] = (max(sq, 0.0), a.shape[1] * b.shape[0])
    if not out:
        raise UserError(f"{folder}/adapter_model.safetensors holds no LoRA A/B tensors")
    return out


class AdapterNorms:
    """||Delta W||_F of each checkpoint's adapter, in all and per component (a `per_checkpoint.Statistic`)."""

    name = "adapter_norms"
    needs_model = False

    def __init__(self, grouping: str = "components"):
        self.grouping = grouping

    def settings(self, ctx: Any) -> dict[str, Any]:
        return {"grouping": self.grouping, "format": 1}

    def measure(self, ctx: Any, step: int) -> dict[str, Any]:
        squares = delta_squares(ctx.run.adapter_dir(step))
        total = sum(sq for sq, _ in squares.values())
        entries = sum(n for _, n in squares.values())
        row: dict[str, Any] = {"delta_norm": math.sqrt(total), "delta_norm_rms": math.sqrt(total / entries)}
        for group, names in group_names(list(squares), self.grouping).items():
            row[f"delta_norm[{group}]"] = math.sqrt(sum(squares[n][0] for n in names))
        return row

    def describe(self, row: dict[str, Any]) -> str:
        return f"||Delta W|| {row['delta_norm']:.4g} (rms entry {row['delta_norm_rms']:.3g})"


def build_parser() -> argparse.ArgumentParser:
    from training_with_unsloth.cli import command_name

    ap = argparse.ArgumentParser(
        prog=command_name("adapter_norms.py"),
        description="The norm of each adapter checkpoint's LoRA update, in all and per component, with a heatmap.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--run", required=True, help="run directory (<output_dir>/<name>), e.g. runs/quickstart")
    ap.add_argument("--grouping", choices=list(GROUPINGS), default="components")
    ap.add_argument("--force", action="store_true", help="recompute steps already in adapter_norms.csv")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training_with_unsloth.cli import run_main

    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from analysis.figures import plot_component_heatmap
    from analysis.per_checkpoint import for_each_checkpoint
    from analysis.runs import open_run

    run = open_run(args.run, checkpoints=True)
    rows = for_each_checkpoint(run, AdapterNorms(args.grouping), run.adapter_steps(), force=args.force)
    figure = plot_component_heatmap(
        run, "adapter_norms", prefix="delta_norm", title=f"{run.path.name}: ||Delta W||_F of the LoRA update per component"
    )
    print(f"wrote {run.analysis / 'adapter_norms.csv'} ({len(rows)} checkpoints) and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
