"""training_with_unsloth.plots.plot_run: one PNG per topic with data, from a hand-written metrics.jsonl."""

from __future__ import annotations

import json
import math

import pytest

from training_with_unsloth import plots
from training_with_unsloth.rundir import RunDir

ALL = ["curriculum.png", "entropy.png", "kl.png", "length.png", "passk.png", "rewards.png", "time.png"]


def write_metrics(run: RunDir, records: list[dict], torn_tail: bool = False) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in records)
    run.metrics.write_text(text + ('{"step": 99, "kind": "tra' if torn_tail else ""))


def full_records() -> list[dict]:
    out = [{"step": 0, "kind": "eval", "eval/pass@1": 0.1, "eval/pass@4": 0.3, "eval/greedy_pass@1": 0.1,
            "eval/reward": 0.2, "eval/completion_length": 40.0}]  # fmt: skip
    for s in range(1, 21):
        out.append({
            "step": s, "kind": "train", "reward": 0.1 * s, "rewards/correct/mean": 0.05 * s, "rewards/format/mean": 0.5,
            "kl": 0.01 * s, "kl/k1": 0.011 * s, "kl/k2": 0.009 * s, "kl/k3": 0.01 * s, "kl/coef": 0.05 / s,
            "entropy": 1.0 - 0.02 * s, "entropy_coef": 0.01,
            "completions/mean_length": 50.0 - s, "completions/min_length": 10.0, "completions/max_length": 64.0,
            "completions/clipped_ratio": 0.1, "curriculum/phase": s // 7, "curriculum/success_rate": 0.03 * s,
            "curriculum/num_terms": 2 + s // 7, "replay/zero_std_fresh": 0.5, "replay/zero_std_replayed": 0.2,
            "replay/replayed_frac": 0.25, "replay/buffer_size": 10.0 * s, "replay/dropped": 0.0, "frac_reward_zero_std": 0.4,
            "time/generation": 2.0, "time/loss": 1.0, "time/other": 0.1, "time/step": 3.1,
        })  # fmt: skip
        if s % 10 == 0:
            out.append({"step": s, "kind": "eval", "eval/pass@1": 0.02 * s, "eval/pass@4": 0.04 * s,
                        "eval/greedy_pass@1": 0.02 * s, "eval/reward": 0.1 * s, "eval/completion_length": 40.0 - s})  # fmt: skip
    out.append({"step": 20, "kind": "summary", "train_runtime": 12.0})
    return out


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def names(written) -> list[str]:
    return sorted(p.name for p in written)


def test_every_topic_with_data_gets_a_png(tmp_path):
    run = RunDir(tmp_path / "run")
    write_metrics(run, full_records(), torn_tail=True)
    written = plots.plot_run(run)
    assert names(written) == ALL
    for p in written:
        assert p.parent == run.plots and is_png(p)
    assert sorted(p.name for p in run.plots.iterdir()) == ALL, "no temporary files left behind"
    plots.plot_run(run)  # redrawn in place
    assert sorted(p.name for p in run.plots.iterdir()) == ALL


def legend_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


def test_panels_show_the_logged_series(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = full_records()
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    kl = plots._kl(plt, "r", train, evals)
    assert len(kl.axes) == 2  # kl/coef on a second axis
    assert legend_texts(kl) == ["k1 estimate", "k2 estimate", "k3 estimate", "kl (TRL's beta term, k3)", "kl/coef (right axis)"]
    entropy = plots._entropy(plt, "r", train, evals)
    assert len(entropy.axes) == 2 and "entropy_coef (right axis)" in legend_texts(entropy)
    length = plots._length(plt, "r", train, evals)
    assert {"mean length (tokens)", "min to max", "held-out (eval)"} <= set(legend_texts(length))
    curriculum = plots._curriculum(plt, "r", train, evals)
    assert len(curriculum.axes) == 4  # two panels, each with a right axis
    assert set(legend_texts(curriculum)) == {
        "curriculum/num_terms", "curriculum/phase", "curriculum/success_rate (right axis)",
        "replay/replayed_frac", "replay/zero_std_fresh", "replay/zero_std_replayed", "frac_reward_zero_std (TRL)",
        "replay/buffer_size (right axis)", "replay/dropped (right axis)",
    }  # fmt: skip
    rewards = plots._rewards(plt, "r", train, evals)
    assert legend_texts(rewards) == ["total (weighted)", "correct", "format", "held-out (eval)"]
    passk = plots._passk(plt, "r", train, evals)
    assert legend_texts(passk) == ["pass@1", "pass@4", "greedy pass@1"]
    plt.close("all")


def test_only_rewards_and_kl_without_other_data(tmp_path):
    run = RunDir(tmp_path / "run")
    write_metrics(run, [{"step": s, "kind": "train", "reward": 0.5, "loss": 0.1} for s in range(1, 4)])
    assert names(plots.plot_run(run)) == ["kl.png", "rewards.png"]


def test_no_metrics_yet(tmp_path):
    run = RunDir(tmp_path / "run")
    assert names(plots.plot_run(run)) == ["kl.png", "rewards.png"]


@pytest.mark.parametrize("drop", ["kl/coef", "entropy_coef", "completions/min_length", "curriculum/phase", "kl"])
def test_partial_and_odd_records(tmp_path, drop):
    records = full_records()
    for r in records:
        r.pop(drop, None)
    records[3]["reward"] = None  # NaN is written as null
    records[4]["kl/k1"] = "n/a"
    records[5]["entropy"] = True
    records[6].pop("step")  # a record without a step is skipped
    records.append({"step": 21, "kind": "train", "completions/mean_length": math.inf})
    run = RunDir(tmp_path / "run")
    run.path.mkdir(parents=True)
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in records))  # Infinity: still parsed by json
    written = names(plots.plot_run(run))
    assert {"rewards.png", "kl.png", "passk.png", "entropy.png", "length.png"} <= set(written)


def test_only_replay_metrics_give_a_single_panel(tmp_path):
    run = RunDir(tmp_path / "run")
    write_metrics(run, [{"step": s, "kind": "train", "replay/zero_std_fresh": 0.3} for s in range(1, 5)])
    assert "curriculum.png" in names(plots.plot_run(run))
    write_metrics(run, [{"step": s, "kind": "train", "replay/buffer_size": 3.0} for s in range(1, 5)])  # right-axis keys only
    assert "curriculum.png" in names(plots.plot_run(run))


def test_intervals_are_drawn_as_bands(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from analysis.plot_run import PASSK_TITLE, build_combined_figure

    records = full_records()
    for r in records:
        if r["kind"] == "eval":
            r["eval/pass@1_ci"] = [max(r["eval/pass@1"] - 0.1, 0.0), r["eval/pass@1"] + 0.1]
            r["eval/greedy_pass@1_ci"] = [0.0, 0.5]
            r["eval/maj@4"], r["eval/maj@4_ci"] = 0.2, [0.1, 0.3]
            r["eval/maj@1"], r["eval/maj@1_ci"] = 0.1, [0.0, 0.2]
    evals = [r for r in records if r["kind"] == "eval"]
    passk = plots._passk(plt, "r", [], evals)
    bands = [c for c in passk.axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # pass@1 and greedy; pass@4 logged no interval, maj@k is drawn without one
    assert legend_texts(passk) == ["pass@1", "pass@4", "maj@4", "greedy pass@1"]  # no maj@1
    assert "95% intervals" in passk.axes[0].get_title()
    plt.close("all")
    run = RunDir(tmp_path / "run")
    write_metrics(run, records)
    assert "passk.png" in names(plots.plot_run(run))
    fig = build_combined_figure(run)
    ax = next(a for a in fig.axes if a.get_title(loc="left") == PASSK_TITLE)
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 2  # pass@1 and greedy pass@1


def test_smooth_records_is_a_centred_moving_mean_per_series():
    from training_with_unsloth.plots import smooth_records

    train = [{"step": s, "kind": "train", "reward": float(s), **({"kl": 1.0} if s % 2 else {})} for s in range(1, 6)]
    out = smooth_records(train, 3)
    assert [r["reward"] for r in out] == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert [r.get("kl") for r in out] == [1.0, None, 1.0, None, 1.0] and [r["step"] for r in out] == [1, 2, 3, 4, 5]
    assert train[0]["reward"] == 1.0  # the input is left alone
