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
from analysis.probe import build_probe

from .helpers import REPO

FAST = [
    "--chains", "2", "--draws", "4", "--burn-in", "1", "--batch-size", "2",
    "--num-probes", "4", "--lr", "1e-4", "--no-figure",
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
        "step", "llc_mean", "llc_std", "llc_chain_0", "llc_chain_1", "init_loss", "healthy", "notes", "seconds"
    ]  # fmt: skip
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

    assert llc.main(["--run", str(run_copy), *FAST[:-1], "--lr", "2e-4", "--no-figure"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.slow
def test_restrict_attn_mlp_adds_group_columns(run_copy):
    assert llc.main(["--run", str(run_copy), *FAST, "--restrict", "attn-mlp", "--checkpoints", "4"]) == 0
    (row,) = rows(run_copy / "analysis" / "llc.csv")
    assert {"llc_mean[attn]", "llc_std[attn]", "llc_mean[mlp]", "llc_std[mlp]"} <= set(row)
    assert row["llc_mean"] == row["llc_mean[attn]"]


@pytest.mark.slow
def test_sampling_touches_only_lora_weights(run_copy, monkeypatch):
    import devinterp.slt.llc as devinterp_llc

    run, cfg = llc.load_run(run_copy)
    model, tokenizer = llc.load_model(cfg, "cpu")
    llc.swap_adapter(model, run.adapter_dir(4))
    settings = llc.Settings(chains=1, draws=3, burn_in=1, batch_size=2, num_probes=4, probe="reference")
    probe = llc.build_run_probe(run, cfg, model, tokenizer, settings, "cpu")
    masks = llc.lora_groups(model, None)["all"]

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
    est = llc.estimate(model, probe, masks, settings, "cpu")
    assert set(seen["masks"]) == set(masks) and all(v is None for v in seen["masks"].values())
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
    assert len(est["trace"]) == 1 and len(est["trace"][0]) == settings.burn_in + settings.draws


@pytest.mark.slow
def test_adapter_swap_loads_each_checkpoint(run_copy):
    from safetensors.torch import load_file

    run, cfg = llc.load_run(run_copy)
    model, _ = llc.load_model(cfg, "cpu")
    for step in (2, 4):
        llc.swap_adapter(model, run.adapter_dir(step))
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
    s = llc.Settings(burn_in=2, max_drift=0.25)
    settled = [1.0, 1.05] + [1.1 + 0.001 * (-1) ** i for i in range(16)]
    drifting = [1.0, 1.05] + [1.1 + 0.02 * i for i in range(16)]
    assert llc.health(_est([5.0], [settled]), s) == (True, "below init 0%")
    ok, why = llc.health(_est([-1.0], [settled]), s)
    assert not ok and "negative" in why
    ok, why = llc.health(_est([5.0], [drifting]), s)
    assert not ok and "not settled" in why
    ok, why = llc.health(_est([float("nan")], [settled]), s)
    assert not ok and "NaN" in why
    ok, why = llc.health(_est([5.0, 5.2], [settled, settled], mala=0.93), s)
    assert ok and why == "below init 0%; MALA acceptance 0.93; chain spread 2%"
    ok, why = llc.health(_est([2.0, 8.0], [settled, settled]), s)
    assert not ok and "chains disagree (std 60% of the mean" in why
    ok, why = llc.health(_est([5.0], [settled], mala=0.2), s)
    assert ok and "MALA acceptance 0.20 (low: approximate posterior" in why
    below = [1.0, 0.95] + [0.9 + 0.001 * (-1) ** i for i in range(16)]
    ok, why = llc.health(_est([5.0], [below]), s)
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
    assert llc.chain_llc([1.0, 3.0, 2.0, 2.0], burn_in=2, init_loss=1.0, n_beta=4.0) == pytest.approx(4.0)
    assert math.isnan(llc.chain_llc([1.0, float("nan"), 2.0], burn_in=1, init_loss=1.0, n_beta=4.0))


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
    def r(step, lr, nb, ok, mean=5.0, std=0.5):
        return {"step": step, "lr": lr, "n_beta": nb, "llc_mean": mean, "llc_std": std, "healthy": ok, "notes": ""}

    results = [r(s, lr, nb, ok) for s in (1, 9) for lr, nb, ok in [(1e-5, 3.0, True), (1e-4, 3.0, True), (1e-4, 6.0, True)]]
    results += [r(1, 1e-3, 3.0, True), r(9, 1e-3, 3.0, False)]
    rec = llc.recommend_setting(results, default_n_beta=3.0)
    assert (rec["lr"], rec["n_beta"]) == (1e-4, 3.0) and "lr 0.001 failed" in rec["reason"]
    assert llc.recommend_setting([r(1, 1e-3, 3.0, False)]) is None


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
    run, cfg = llc.load_run(run_copy)
    model, tokenizer = llc.load_model(cfg, "cpu")
    settings = llc.Settings(chains=1, draws=3, burn_in=1, batch_size=2, num_probes=4, lr=1e-3, probe="reference")
    probe = llc.build_run_probe(run, cfg, model, tokenizer, settings, "cpu")
    lora_only = llc.estimate(model, probe, llc.lora_groups(model, None)["all"], settings, "cpu")
    everything = llc.estimate(model, probe, None, settings, "cpu")
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

    run, cfg = llc.load_run(run_copy)
    model, _ = llc.load_model(cfg, "cpu", run)
    (note,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert "someone/Tiny-bnb-4bit is pre-quantized" in note and "16-bit base someone/Tiny " in note and "feedc0de" in note
    llc.swap_adapter(model, run.adapter_dir(4))  # every LoRA tensor of the run matches the 16-bit base

    (run_copy / "env.json").unlink()
    llc.load_model(cfg, "cpu", run)
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
    out = llc.plot_calibration(run, [9], [1e-3, 3e-4, 1e-4], [2.0], results, traces, tmp_path / "calibration.png")
    assert out.is_file() and out.stat().st_size > 0


@pytest.mark.slow
def test_without_lr_it_calibrates_first_then_reuses_the_recorded_setting(run_copy, capsys):
    small = ["--chains", "2", "--draws", "8", "--burn-in", "2", "--num-probes", "2", "--no-figure", "--checkpoints", "4"]
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
            "--no-figure", "--checkpoints", "4", "--no-calibrate"]  # fmt: skip
    assert llc.main(args) == 0
    assert "defaults (--no-calibrate)" in capsys.readouterr().out
    assert not (run_copy / "analysis" / "calibration.json").exists()
    assert json.loads((run_copy / "analysis" / "llc_settings.json").read_text())["lr"] == llc.Settings.lr
