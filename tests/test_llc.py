"""LLC over adapter checkpoints on a tiny model: CSV contract, reruns, masks, health checks, probe loss."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from analysis import llc
from analysis import llc_estimator as E
from analysis.per_checkpoint import Context, load_model, swap_adapter
from analysis.probe import build_probe
from analysis.run_probe import run_probe
from analysis.runs import open_run

from .helpers import REPO

FAST = [
    "--chains", "2", "--draws", "4", "--burn-in", "1", "--batch-size", "2",
    "--num-probes", "4", "--lr", "1e-4", "--no-figure", "--no-robustness",
]  # fmt: skip


@pytest.fixture
def run_copy(tiny_run_dir, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(tiny_run_dir, dst)
    return dst


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_csv_has_a_row_per_checkpoint_and_reruns_skip(run_copy, capsys):
    assert llc.main(["--run", str(run_copy), *FAST]) == 0
    out = run_copy / "analysis" / "llc.csv"
    table = rows(out)
    assert [int(r["step"]) for r in table] == [2, 4]
    assert list(table[0]) == [
        "step", "llc_mean", "llc_std", "llc_chain_0", "llc_chain_1", "init_loss", "healthy", "notes", "probe_hash",
        "seconds",
    ]  # fmt: skip
    assert len({r["probe_hash"] for r in table}) == 1  # one probe for every checkpoint
    settings = json.loads((run_copy / "analysis" / "llc_settings.json").read_text())
    assert settings["probe"] == "rollouts" and settings["probe_hash"] == table[0]["probe_hash"]
    for r in table:
        assert float(r["init_loss"]) > 0 and r["healthy"] in ("True", "False")
        chains = [float(r["llc_chain_0"]), float(r["llc_chain_1"])]
        assert float(r["llc_mean"]) == pytest.approx(sum(chains) / 2, rel=1e-5, abs=1e-6)
        assert (r["healthy"] == "True") == ("below init" in r["notes"].split(";")[0])  # healthy: only the figures
        assert float(r["seconds"]) > 0
    assert (run_copy / "analysis" / "llc_traces.png").is_file()
    assert (run_copy / "analysis" / "traces" / "step-4.json").is_file()

    before = out.read_text()
    capsys.readouterr()
    assert llc.main(["--run", str(run_copy), *FAST]) == 0
    assert "already in" in capsys.readouterr().out
    assert out.read_text() == before

    assert llc.main(["--run", str(run_copy), *FAST[:-2], "--lr", "2e-4", "--no-figure", "--no-robustness"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_components_write_their_own_table_and_heatmap(run_copy):
    assert llc.main(["--run", str(run_copy), *FAST, "--components", "attn-mlp", "--checkpoints", "4"]) == 0
    (row,) = rows(run_copy / "analysis" / "llc_components.csv")
    assert {"llc_mean[attn]", "llc_std[attn]", "llc_mean[mlp]", "llc_std[mlp]", "probe_hash"} <= set(row)
    assert (run_copy / "analysis" / "llc_components.png").is_file()
    (main,) = rows(run_copy / "analysis" / "llc.csv")
    assert main["probe_hash"] == row["probe_hash"] and "llc_mean[attn]" not in main


def test_component_groups_split_attention_mlp_and_layer_thirds():
    names = [f"base_model.model.model.layers.{i}.{m}.lora_{ab}.default.weight" for i in range(6)
             for m in ("self_attn.q_proj", "mlp.up_proj") for ab in "AB"]  # fmt: skip
    groups = E.group_names(names, "components")
    assert list(groups) == ["attn.early", "attn.middle", "attn.late", "mlp.early", "mlp.middle", "mlp.late"]
    assert all(len(g) == 4 for g in groups.values())  # 2 layers x A, B each
    assert {n.split(".")[4] for n in groups["attn.early"]} == {"0", "1"}
    assert {n.split(".")[4] for n in groups["mlp.late"]} == {"4", "5"}
    assert list(E.group_names(names, "thirds")) == ["early", "middle", "late"]
    assert list(E.group_names(names, None)) == ["all"]


@pytest.mark.slow
def test_sampling_touches_only_lora_weights(run_copy, monkeypatch):
    import devinterp.slt.llc as devinterp_llc

    ctx = Context(open_run(run_copy), "cpu")
    model = ctx.model
    ctx.swap(4)
    settings = E.Settings(chains=1, draws=3, burn_in=1, batch_size=2, num_probes=4, probe="reference")
    probe = run_probe(ctx, settings)
    masks = E.lora_groups(model, None)["all"]

    lora_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    trainable, _ = model.get_nb_trainable_parameters()
    assert sum(dict(model.named_parameters())[n].numel() for n in masks) == lora_numel == trainable

    seen = {}
    real_sample = devinterp_llc.sample

    def spy(*args, **kwargs):
        seen["masks"] = kwargs["param_masks"]
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(devinterp_llc, "sample", spy)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    est = E.estimate(model, probe, masks, settings, "cpu")
    assert set(seen["masks"]) == set(masks) and all(v is None for v in seen["masks"].values())
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert len(est["trace"]) == 1 and len(est["trace"][0]) == settings.burn_in + settings.draws


@pytest.mark.slow
def test_adapter_swap_loads_each_checkpoint(run_copy):
    from safetensors.torch import load_file

    run = open_run(run_copy)
    model, _ = load_model(run.validated(), "cpu")
    for step in (2, 4):
        swap_adapter(model, run.adapter_dir(step))
        saved = load_file(run.adapter_dir(step) / "adapter_model.safetensors")
        live = {n: p for n, p in model.named_parameters() if "lora_" in n}
        for key, tensor in saved.items():
            match = [p for n, p in live.items() if n.replace(".default", "") == key]
            assert len(match) == 1 and torch.equal(match[0], tensor), key


def test_probe_loss_scores_completion_tokens_only(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "What is 13 + 29? Reply."}]]
    probe = build_probe(tok, prompts, ["4", "The answer is 42"], max_completion_tokens=64)
    assert probe.input_ids.shape[0] == 2
    per_token = probe.loss_fn()(model, probe.input_ids)
    assert per_token.shape == (2, probe.input_ids.shape[1] - 1)
    for i, (start, end) in enumerate(probe.spans):
        assert torch.all(per_token[i, :start] == 0) and torch.all(per_token[i, end:] == 0)
        ids = probe.input_ids[i, : end + 1]
        with torch.no_grad():
            logits = model(ids[None]).logits[0, :-1]
        ce = torch.nn.functional.cross_entropy(logits[start:end], ids[start + 1 : end + 1])
        torch.testing.assert_close(per_token[i].mean(), ce, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="not in its probe set"):
        probe.loss_fn()(model, probe.input_ids.flip(1))


def _est(per_chain, traces, init=1.0, mala=None):
    return {
        "llc_mean": sum(per_chain) / len(per_chain),
        "llc_std": 0.0,
        "per_chain": per_chain,
        "trace": traces,
        "init_loss": init,
        "failures": [],
        "mala_acceptance": mala,
    }


def test_health_checks():
    s = E.Settings(burn_in=2, max_drift=0.25)
    settled = [1.0, 1.05] + [1.1 + 0.001 * (-1) ** i for i in range(16)]
    drifting = [1.0, 1.05] + [1.1 + 0.02 * i for i in range(16)]
    assert E.health(_est([5.0], [settled]), s) == (True, "below init 0%")
    ok, why = E.health(_est([-1.0], [settled]), s)
    assert not ok and "negative" in why
    ok, why = E.health(_est([5.0], [drifting]), s)
    assert not ok and "not settled" in why
    ok, why = E.health(_est([float("nan")], [settled]), s)
    assert not ok and "NaN" in why
    ok, why = E.health(_est([5.0, 5.2], [settled, settled], mala=0.93), s)
    assert ok and why == "below init 0%; MALA acceptance 0.93; chain spread 2%"
    ok, why = E.health(_est([2.0, 8.0], [settled, settled]), s)
    assert not ok and "chains disagree (std 60% of the mean" in why
    ok, why = E.health(_est([5.0], [settled], mala=0.2), s)
    assert ok and "MALA acceptance 0.20 (low: approximate posterior" in why
    destroyed = [1.0, 9.0] + [9.5 + 0.001 * (-1) ** i for i in range(16)]  # settled, but 8.5 nats above the checkpoint
    ok, why = E.health(_est([24.5, 24.5], [destroyed, destroyed]), s)
    assert not ok and "8.5 nats per token above" in why and "left the checkpoint's basin" in why
    below = [1.0, 0.95] + [0.9 + 0.001 * (-1) ** i for i in range(16)]
    ok, why = E.health(_est([5.0], [below]), s)
    assert not ok and "100% of draws below the init loss" in why and "--probe self" in why


def test_a_slowly_mixing_stationary_chain_is_settled():
    """An AR(1) trace with rho 0.95 wanders; its quarter means differ by more than iid noise would allow."""
    import random

    from analysis.llc_health import effective_size, unsettled

    rng = random.Random(0)
    x, trace = 0.0, []
    for _ in range(400):
        x = 0.95 * x + rng.gauss(0, 0.1)
        trace.append(1.5 + x)
    assert unsettled(trace, init_loss=1.0, max_drift=0.05) is None
    assert effective_size(trace) < 0.1 * len(trace)
    assert unsettled([1.5 + 0.01 * i for i in range(400)], init_loss=1.0, max_drift=0.05) is not None


def test_chain_llc_skips_burn_in():
    assert E.chain_llc([1.0, 3.0, 2.0, 2.0], burn_in=2, init_loss=1.0, n_beta=4.0) == pytest.approx(4.0)
    assert math.isnan(E.chain_llc([1.0, float("nan"), 2.0], burn_in=1, init_loss=1.0, n_beta=4.0))


def test_mala_acceptance_is_one_for_tiny_steps_and_falls_for_large_ones():
    from analysis.llc_health import mala_acceptance

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64)
    ids = torch.zeros(64, 2, dtype=torch.long)

    def loss_fn(m, input_ids):
        return ((m(x)[:, 0] - y) ** 2)[:, None]

    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    small = mala_acceptance(model, ids, loss_fn, params, lr=1e-6, n_beta=10.0, localization=1.0, steps=8, seed=0)
    large = mala_acceptance(model, ids, loss_fn, params, lr=0.5, n_beta=10.0, localization=1.0, steps=8, seed=0)
    assert small > 0.99 and large < 0.5
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))  # weights restored


def test_recommendation_takes_the_largest_healthy_lr():
    from analysis.llc_calibration import recommend_setting

    def r(step, lr, nb, ok, mean=5.0, std=0.5):
        return {"step": step, "lr": lr, "n_beta": nb, "llc_mean": mean, "llc_std": std, "healthy": ok, "notes": ""}

    results = [r(s, lr, nb, ok) for s in (1, 9) for lr, nb, ok in [(1e-5, 3.0, True), (1e-4, 3.0, True), (1e-4, 6.0, True)]]
    results += [r(1, 1e-3, 3.0, True), r(9, 1e-3, 3.0, False)]
    rec = recommend_setting(results, default_n_beta=3.0)
    assert (rec["lr"], rec["n_beta"]) == (1e-4, 3.0) and "lr 0.001 failed" in rec["reason"]
    assert recommend_setting([r(1, 1e-3, 3.0, False)]) is None


@pytest.mark.slow
def test_calibrate_prints_table_and_recommendation(run_copy, capsys):
    args = ["--run", str(run_copy), "--calibrate", "--chains", "1", "--draws", "4", "--burn-in", "1", "--batch-size", "2",
            "--num-probes", "4", "--lr-grid", "1e-5,1e-4", "--n-beta-grid", "2,10"]  # fmt: skip
    assert llc.main(args) == 0
    out = capsys.readouterr().out
    assert "llc_mean" in out and ("recommended: --lr" in out or "no setting was healthy" in out)
    table = rows(run_copy / "analysis" / "calibration.csv")
    assert len(table) == 2 * 2 * 2  # 2 checkpoints x 2 lr x 2 n_beta
    assert (run_copy / "analysis" / "calibration.png").is_file()


def test_cli_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "analysis/llc.py", "--run", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "not a run directory" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_force_recomputes_only_the_requested_steps(run_copy):
    assert llc.main(["--run", str(run_copy), *FAST]) == 0
    first = {r["step"]: r for r in rows(run_copy / "analysis" / "llc.csv")}
    assert llc.main(["--run", str(run_copy), *FAST, "--force", "--checkpoints", "4"]) == 0
    again = {r["step"]: r for r in rows(run_copy / "analysis" / "llc.csv")}
    assert sorted(again) == ["2", "4"] and again["2"] == first["2"]


@pytest.mark.slow
def test_all_weights_mode_samples_the_base_too(run_copy):
    ctx = Context(open_run(run_copy), "cpu")
    model = ctx.model
    settings = E.Settings(chains=1, draws=3, burn_in=1, batch_size=2, num_probes=4, lr=1e-3, probe="reference")
    probe = run_probe(ctx, settings)
    lora_only = E.estimate(model, probe, E.lora_groups(model, None)["all"], settings, "cpu")
    everything = E.estimate(model, probe, None, settings, "cpu")
    assert lora_only["trace"] != everything["trace"]  # the base weights moved too
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)  # frozen again


@pytest.mark.slow
def test_cpu_loads_a_prequantized_runs_adapters_onto_its_16bit_base(run_copy, tiny_model_dir, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from training_with_unsloth.yaml_reader import yaml_load

    from .test_prequantized import fake_cache

    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    fake_cache(hub, "someone/Tiny", files=tiny_model_dir)  # the 16-bit base; the run names its 4-bit repo
    raw = yaml_load((run_copy / "config.yaml").read_text())
    raw["model"]["name"] = "someone/Tiny-bnb-4bit"
    (run_copy / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = json.loads((run_copy / "env.json").read_text()) if (run_copy / "env.json").is_file() else {}
    (run_copy / "env.json").write_text(json.dumps({**env, "model": {"name": "someone/Tiny-bnb-4bit", "revision": "feedc0de"}}))

    run = open_run(run_copy)
    cfg = run.validated()
    model, _ = load_model(cfg, "cpu", run)
    (note,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert "someone/Tiny-bnb-4bit is pre-quantized" in note and "16-bit base someone/Tiny " in note and "feedc0de" in note
    swap_adapter(model, run.adapter_dir(4))  # every LoRA tensor of the run matches the 16-bit base

    (run_copy / "env.json").unlink()
    load_model(cfg, "cpu", run)
    assert "revision" not in capsys.readouterr().out

    raw["model"]["name"] = "someone/Absent-bnb-4bit"
    (run_copy / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    assert llc.main(["--run", str(run_copy), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "huggingface-cli download someone/Absent" in err


def test_calibration_figure_takes_an_early_stopped_scan(tmp_path):
    from types import SimpleNamespace

    def r(lr, ok):
        return {"step": 9, "lr": lr, "n_beta": 2.0, "llc_mean": 1.0, "llc_std": 0.1, "healthy": ok, "notes": ""}

    run = SimpleNamespace(path=tmp_path / "run")
    results = [r(1e-3, False), r(3e-4, True)]  # 1e-4 never ran: the scan stopped at the first healthy lr
    traces = [[[1.0, 1.2, 1.3]] * 2, [[1.0, 1.1, 1.1]] * 2]
    from analysis.figures import plot_calibration

    out = plot_calibration(run, [9], [1e-3, 3e-4, 1e-4], [2.0], results, traces, tmp_path / "calibration.png")
    assert out.is_file() and out.stat().st_size > 0


@pytest.mark.slow
def test_without_lr_it_calibrates_first_then_reuses_the_recorded_setting(run_copy, capsys):
    small = ["--chains", "2", "--draws", "8", "--burn-in", "2", "--num-probes", "2", "--no-figure", "--no-robustness",
             "--checkpoints", "4"]  # fmt: skip
    assert llc.main(["--run", str(run_copy), *small, "--lr-grid", "1e-4,1e-5"]) == 0
    out = capsys.readouterr().out
    assert "calibrating first, the largest healthy lr of [0.0001, 1e-05]" in out
    calib = json.loads((run_copy / "analysis" / "calibration.json").read_text())
    assert calib["results"][0]["lr"] == 1e-4 and len(calib["traces"]) == len(calib["results"]) <= 2
    assert [int(r["step"]) for r in rows(run_copy / "analysis" / "llc.csv")] == [4]
    used = json.loads((run_copy / "analysis" / "llc_settings.json").read_text())["lr"]
    if calib["recommended"] is not None:
        assert used == calib["recommended"]["lr"] and "recommended:" in out
    else:
        assert used == llc.Settings.lr and "warning: no calibrated setting was healthy" in out
    assert llc.main(["--run", str(run_copy), *small[:-2], "--checkpoints", "2"]) == 0
    out = capsys.readouterr().out
    assert "recorded in" in out and "calibrating" not in out
    assert [int(r["step"]) for r in rows(run_copy / "analysis" / "llc.csv")] == [2, 4]


@pytest.mark.slow
def test_no_calibrate_uses_the_default_lr(run_copy, capsys):
    args = ["--run", str(run_copy), "--chains", "1", "--draws", "8", "--burn-in", "2", "--num-probes", "2",
            "--no-figure", "--no-robustness", "--checkpoints", "4", "--no-calibrate"]  # fmt: skip
    assert llc.main(args) == 0
    assert "defaults (--no-calibrate)" in capsys.readouterr().out
    assert not (run_copy / "analysis" / "calibration.json").exists()
    assert json.loads((run_copy / "analysis" / "llc_settings.json").read_text())["lr"] == llc.Settings.lr


@pytest.mark.slow
def test_runs_of_several_seeds_give_the_curve_across_them_with_robustness(untrained_run_dir, tmp_path, capsys):
    for seed in (1, 2):
        dst = tmp_path / "seeds" / f"s{seed}"
        shutil.copytree(untrained_run_dir, dst)
        raw = yaml.safe_load((dst / "config.yaml").read_text())
        (dst / "config.yaml").write_text(yaml.safe_dump({**raw, "seed": seed, "name": f"s{seed}"}))
    args = ["--chains", "1", "--draws", "3", "--burn-in", "1", "--num-probes", "2", "--lr", "1e-4", "--mala-steps", "0",
            "--no-figure"]  # fmt: skip
    assert llc.main(["--runs", str(tmp_path / "seeds"), *args]) == 0
    out = capsys.readouterr().out
    assert "robustness over 2 checkpoints" in out and "LLC across 2 seeds" in out
    table = rows(tmp_path / "seeds" / "analysis" / "llc_across_seeds.csv")
    assert [int(r["step"]) for r in table] == [2, 4]
    for r in table:
        per_run = [float(r["llc[s1]"]), float(r["llc[s2]"])]
        assert float(r["llc_mean"]) == pytest.approx(sum(per_run) / 2)
        assert float(r["llc_low"]) <= float(r["llc_mean"]) <= float(r["llc_high"])
    assert (tmp_path / "seeds" / "analysis" / "llc_across_seeds.png").is_file()
    for seed in (1, 2):
        analysis = tmp_path / "seeds" / f"s{seed}" / "analysis"
        assert {"llc.csv", "llc_alt_lr.csv", "llc_alt_probe.csv", "llc_robustness.json"} <= {p.name for p in analysis.iterdir()}
        record = json.loads((analysis / "llc_robustness.json").read_text())
        assert set(record["spearman"]) == {"llc_alt_lr", "llc_alt_probe"}  # 2 checkpoints: too few for a rank correlation
        hashes = {r["probe_hash"] for r in rows(analysis / "llc.csv")}
        assert len(hashes) == 1 and hashes != {r["probe_hash"] for r in rows(analysis / "llc_alt_probe.csv")}
    from analysis import phases

    csv_path = tmp_path / "seeds" / "analysis" / "llc_across_seeds.csv"
    assert phases.main(["--csv", str(csv_path), "--column", "llc_mean", "--std-column", "llc_std", "--json"]) == 0
