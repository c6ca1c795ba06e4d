"""The per-checkpoint layer: one run reader, one loop for every statistic, the adapter-norm statistic, robustness
ranks and the across-seed aggregate."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
import torch
import yaml

from analysis import across_seeds, adapter_norms, llc_robustness
from analysis.per_checkpoint import for_each_checkpoint
from analysis.runs import Run, open_run
from training_with_unsloth.errors import UserError
from training_with_unsloth.intervals import t_interval

from .helpers import write_untrained_run


@pytest.fixture
def run_copy(untrained_run_dir, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(untrained_run_dir, dst)
    return dst


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class Counting:
    """A statistic without a model: the step times ten; counts its calls."""

    name = "counting"
    needs_model = False

    def __init__(self, factor: float = 10.0):
        self.factor, self.calls = factor, []

    def settings(self, ctx):
        return {"factor": self.factor}

    def measure(self, ctx, step):
        self.calls.append(step)
        return {"value": step * self.factor}

    def describe(self, row):
        return f"value {row['value']}"


def test_the_loop_skips_finished_steps_refuses_other_settings_and_forces(run_copy, capsys):
    run = open_run(run_copy, checkpoints=True)
    stat = Counting()
    for_each_checkpoint(run, stat, [4])
    for_each_checkpoint(run, stat, [2, 4])
    assert stat.calls == [4, 2]  # step 4 was not measured again
    table = rows(run.analysis / "counting.csv")
    assert [(r["step"], r["value"]) for r in table] == [("2", "20.0"), ("4", "40.0")] and "seconds" in table[0]
    assert json.loads((run.analysis / "counting_settings.json").read_text()) == {"factor": 10.0}
    with pytest.raises(UserError, match="other settings"):
        for_each_checkpoint(run, Counting(2.0), [2])
    for_each_checkpoint(run, Counting(2.0), [2], force=True)  # other settings: the old rows go
    assert [(r["step"], r["value"]) for r in rows(run.analysis / "counting.csv")] == [("2", "4.0")]
    with pytest.raises(UserError, match=r"--checkpoints \[7\]"):
        for_each_checkpoint(run, stat, [7])


def test_the_run_reader_gives_series_with_intervals_and_every_table(run_copy):
    records = [
        {"step": 1, "kind": "train", "reward": 0.5},
        {"step": 0, "kind": "eval", "eval/pass@1": 0.2, "eval/pass@1_ci": [0.1, 0.3]},
        {"step": 4, "kind": "eval", "eval/pass@1": 0.6},
    ]
    (run_copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_copy / "analysis").mkdir()
    (run_copy / "analysis" / "llc.csv").write_text("step,llc_mean,llc_std,healthy,notes\n4,2.0,0.1,True,\n2,3.0,0.2,False,x\n")
    (run_copy / "analysis" / "calibration.csv").write_text("step,lr,llc_mean\n2,0.001,9.0\n")
    (run_copy / "analysis" / "notes.csv").write_text("a,b\n1,2\n")  # no step column: not a table
    run = Run(run_copy)
    s = run.series("eval/pass@1")
    assert s.steps.tolist() == [0, 4] and s.low[0] == 0.1 and math.isnan(s.low[1])
    assert run.tables() == ["calibration", "llc"]
    table = run.table("llc")
    assert table.steps.tolist() == [2, 4] and table.flags("healthy").tolist() == [False, True]
    cols = run.columns()
    assert cols["llc_mean"] == "llc" and cols["calibration/llc_mean"] == "calibration" and cols["lr"] == "calibration"
    assert cols["reward"] == "train" and cols["eval/pass@1"] == "eval"
    assert run.column_series("calibration/llc_mean").values.tolist() == [9.0]


def test_adapter_norms_are_the_norm_of_the_lora_update(run_copy):
    from safetensors.torch import load_file

    run = open_run(run_copy, checkpoints=True)
    config = json.loads((run.adapter_dir(4) / "adapter_config.json").read_text())
    weights = load_file(run.adapter_dir(4) / "adapter_model.safetensors")
    scale = config["lora_alpha"] / config["r"]
    expected = 0.0
    for name, a in weights.items():
        if ".lora_A." in name:
            b = weights[name.replace(".lora_A.", ".lora_B.")]
            expected += float(torch.linalg.matrix_norm(scale * b.double() @ a.double()) ** 2)
    assert adapter_norms.main(["--run", str(run_copy)]) == 0
    table = {r["step"]: r for r in rows(run.analysis / "adapter_norms.csv")}
    assert float(table["4"]["delta_norm"]) == pytest.approx(math.sqrt(expected), rel=1e-9)
    parts = [float(v) for k, v in table["4"].items() if k.startswith("delta_norm[")]
    assert len(parts) > 1 and math.sqrt(sum(p * p for p in parts)) == pytest.approx(math.sqrt(expected), rel=1e-9)
    assert (run.analysis / "adapter_norms.png").is_file()
    assert adapter_norms.lora_scale({"r": 16, "lora_alpha": 32, "use_rslora": True}) == pytest.approx(8.0)


def test_spearman_ranks_with_ties():
    assert llc_robustness.ranks([3.0, 1.0, 2.0, 1.0]).tolist() == [4.0, 1.5, 3.0, 1.5]
    assert llc_robustness.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert llc_robustness.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert llc_robustness.spearman([1, 2], [1, 2]) is None  # too few checkpoints
    assert llc_robustness.spearman([1, 2, float("nan"), 4], [1, 2, 3, 4]) == pytest.approx(1.0)
    line = llc_robustness.robustness_line({"steps": [1, 2, 3], "spearman": {"llc_alt_lr": 0.2, "llc_alt_probe": 1.0}})
    assert "half the step size +0.20" in line and "do not read it as a finding" in line


def test_across_seeds_mean_and_t_interval_at_common_steps():
    per_run = {"a": {1: 3.0, 5: 2.0, 9: 1.0}, "b": {1: 3.2, 5: 2.4}, "c": {1: 2.9, 5: 2.3, 9: float("nan")}}
    out = across_seeds.aggregate(per_run)
    assert [r["step"] for r in out] == [1, 5]  # 9 is not finite in every run
    assert out[0]["mean"] == pytest.approx((3.0 + 3.2 + 2.9) / 3)
    assert (out[1]["low"], out[1]["high"]) == pytest.approx(t_interval([2.0, 2.4, 2.3]))
    assert out[1]["sem"] == pytest.approx(out[1]["sd"] / math.sqrt(3)) and out[1]["n"] == 3


def test_runs_are_found_in_a_folder_and_must_share_their_config(untrained_run_dir, tmp_path, tiny_model_dir):
    sweep = tmp_path / "sweep" / "trials"
    for seed in (1, 2):
        shutil.copytree(untrained_run_dir, sweep / f"seed-{seed}")
        path = sweep / f"seed-{seed}" / "config.yaml"
        raw = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump({**raw, "seed": seed, "name": f"seed-{seed}"}))
    found = across_seeds.find_runs([tmp_path / "sweep"])
    assert [r.path.name for r in found] == ["seed-1", "seed-2"]
    across_seeds.check_same_config(found)
    other = write_untrained_run(tmp_path / "other" / "lr", tiny_model_dir, steps=(2,))
    raw = yaml.safe_load((other / "config.yaml").read_text())
    raw["trainer"]["learning_rate"] = 0.5
    (other / "config.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"differ in trainer.learning_rate"):
        across_seeds.check_same_config(across_seeds.find_runs([tmp_path / "sweep", other]))
    with pytest.raises(UserError, match="neither a run directory"):
        across_seeds.find_runs([tmp_path / "other" / "lr" / "checkpoints"])
