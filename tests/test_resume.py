"""--resume: the abandoned trajectory is set aside, best/ goes back to the resumed step, research state comes first."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from training_with_unsloth import resume
from training_with_unsloth.config import validate
from training_with_unsloth.errors import UserError
from training_with_unsloth.rundir import RunDir, atomic_write_json
from training_with_unsloth.yaml_reader import yaml_load

from .helpers import tiny_config

SETTINGS = {
    "checkpoints": {"every": 1},  # adapters 1..4; trainer checkpoints 2 and 4; evals 0, 2 and 4
    "logging.completions": 1,
    "logging.plots": False,
    "trainer.lr_scheduler_type": "constant",  # a longer max_steps leaves the redone steps' updates unchanged
}


def digest(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `path` (or of `path` itself)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path)) if p != path else "": hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def write_llc(run: RunDir, steps: list[int]) -> None:
    (run.analysis / "traces").mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{s},{s / 10},0.01,ok\n" for s in steps)
    (run.analysis / "llc.csv").write_text("step,llc_mean,llc_std,notes\n" + rows)
    for s in steps:
        atomic_write_json(run.analysis / "traces" / f"step-{s}.json", {"step": s})
    (run.analysis / "llc_traces.png").write_bytes(b"png")


def llc_steps(path: Path) -> list[int]:
    with path.open(newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> dict:
    """A 4-step run whose best/ follows every evaluation (so it ends at step 4); records each trainer_state write."""
    from transformers import TrainerState

    from training_with_unsloth.controls.callbacks import BestCheckpoint
    from training_with_unsloth.experiment import run_experiment

    writes: list[dict] = []
    original = TrainerState.save_to_json

    def spy(self, json_path):
        folder = Path(json_path).parent
        writes.append({
            "folder": folder.name,
            "research_state": (folder / resume.RESEARCH_STATE_FILE).is_file(),
            "best_copy": (folder / resume.BEST_COPY / "meta.json").is_file(),
        })  # fmt: skip
        original(self, json_path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrainerState, "save_to_json", spy)
        mp.setattr(BestCheckpoint, "improves", lambda self, value: value == value)  # every non-NaN value is a new best
        run = run_experiment(validate(tiny_config(tmp_path_factory.mktemp("trained"), tiny_model_dir, **SETTINGS)))
    return {"run": run, "writes": writes}


def copy_run(trained: dict, tmp_path: Path) -> RunDir:
    run = RunDir(tmp_path / "runs" / "tiny")
    shutil.copytree(trained["run"].path, run.path)
    return run


@pytest.mark.slow
def test_research_state_is_written_before_the_trainer_state(trained):
    writes = [w for w in trained["writes"] if w["folder"].startswith("checkpoint-")]
    assert [w["folder"] for w in writes] == ["checkpoint-2", "checkpoint-4"]
    assert all(w["research_state"] and w["best_copy"] for w in writes), writes
    run = trained["run"]
    for ckpt in ("checkpoint-2", "checkpoint-4"):
        state = json.loads((run.trainer / ckpt / resume.RESEARCH_STATE_FILE).read_text())
        assert state["best_checkpoint"]["step"] == int(ckpt.split("-")[1])
        kept = json.loads((run.trainer / ckpt / resume.BEST_COPY / "meta.json").read_text())
        assert kept["step"] == state["best_checkpoint"]["step"]


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_without_research_state(trained, tmp_path, tiny_model_dir):
    from training_with_unsloth.experiment import run_experiment

    run = copy_run(trained, tmp_path)
    (run.trainer / "checkpoint-4" / resume.RESEARCH_STATE_FILE).unlink()  # killed between the two writes (old order)
    before = digest(run.path)
    raw = tiny_config(tmp_path, tiny_model_dir, **SETTINGS)
    with pytest.raises(UserError) as info:
        run_experiment(validate(raw), resume=True)
    message = str(info.value)
    assert "\n" not in message and "checkpoint-4" in message and "best_checkpoint" in message
    assert "delete trainer/checkpoint-4" in message and "new run" in message
    assert digest(run.path) == before, "a refused resume changes nothing"


@pytest.mark.slow
def test_resume_sets_the_abandoned_trajectory_aside(trained, tmp_path, tiny_model_dir, monkeypatch):
    from training_with_unsloth.experiment import run_experiment

    run = copy_run(trained, tmp_path)
    (run.trainer / "checkpoint-4" / "trainer_state.json").unlink()  # incomplete: the resume goes back to step 2
    write_llc(run, [1, 2, 3, 4])
    (run.analysis / "probe-rollouts-4.jsonl").write_text("{}\n")
    assert json.loads((run.best / "meta.json").read_text())["step"] == 4
    later = {str(p.relative_to(run.path)): digest(p) for _, s, p in run.step_files() if s > 2}
    later["checkpoints/best"] = digest(run.best)
    assert {"checkpoints/adapter-4", "eval/passk-4.jsonl", "completions/3.jsonl", "trainer/checkpoint-4",
            "analysis/traces/step-3.json", "analysis/probe-rollouts-4.jsonl"} <= later.keys()  # fmt: skip
    old_metrics = run.read_metrics()

    seen: dict = {}
    original = resume.resume_run

    def check_before_training(*args, **kwargs):
        record = original(*args, **kwargs)
        seen["files"] = run.step_files()
        seen["metrics"] = run.read_metrics()
        seen["best"] = json.loads((run.best / "meta.json").read_text())
        seen["best_weights"] = digest(run.best / "adapter_model.safetensors")
        return record

    monkeypatch.setattr(resume, "resume_run", check_before_training)
    raw = tiny_config(tmp_path, tiny_model_dir, **{**SETTINGS, "trainer.max_steps": 5})
    run_experiment(validate(raw), resume=True)

    # before the resumed training: nothing of a step after 2 outside abandoned/, best/ as of step 2
    assert max(s for _, s, _ in seen["files"]) == 2
    assert max(r["step"] for r in seen["metrics"]) == 2 and all(r["kind"] != "summary" for r in seen["metrics"])
    assert seen["best"]["step"] == 2
    assert seen["best_weights"] == digest(run.adapter_dir(2) / "adapter_model.safetensors")

    (folder,) = run.abandoned.iterdir()
    for rel, files in later.items():
        assert digest(folder / rel) == files, rel
    moved = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert moved == [r for r in old_metrics if r["step"] > 2 or r["kind"] == "summary"]
    assert llc_steps(folder / "analysis" / "llc.csv") == [3, 4] and llc_steps(run.analysis / "llc.csv") == [1, 2]
    assert (run.analysis / "traces" / "step-2.json").is_file() and (run.analysis / "llc_traces.png").is_file()
    assert yaml_load((folder / "config.yaml").read_text())["trainer"]["max_steps"] == 4
    assert yaml_load(run.config.read_text())["trainer"]["max_steps"] == 5

    record = json.loads(run.env.read_text())["resumes"][-1]
    assert record["from_step"] == 2 and record["checkpoint"] == "trainer/checkpoint-2"
    assert record["config_changes"]["trainer.max_steps"] == {"old": 4, "new": 5}
    assert record["set_aside_to"] == str(folder.relative_to(run.path))
    assert set(later) <= set(record["set_aside"]) and "llc_traces.png" in record["stale_analysis"]
    assert "restored to step 2" in record["best"]

    # after it: the new trajectory, each step once
    train = [r["step"] for r in run.read_metrics() if r["kind"] == "train"]
    assert train == [1, 2, 3, 4, 5]
    assert run.adapter_steps() == [1, 2, 3, 4, 5]
    assert all(run.passk_file(s).is_file() for s in (0, 2, 4, 5))
    assert sorted(p.name for p in run.completions.iterdir()) == [f"{s}.jsonl" for s in range(1, 6)]
    assert [s for s, _ in run.trainer_checkpoints()] == [2, 4, 5]
    # the resumed training continued from checkpoint-2's adapter, so it redid step 3 exactly
    redone = digest(run.adapter_dir(3) / "adapter_model.safetensors")[""]
    assert redone == later["checkpoints/adapter-3"]["adapter_model.safetensors"]
    best = json.loads((run.best / "meta.json").read_text())["step"]
    assert digest(run.best / "adapter_model.safetensors") == digest(run.adapter_dir(best) / "adapter_model.safetensors")


# ---------------------------------------------------------------------------- without training


def fake_run(tmp_path: Path, *, best_step: int, with_copy: bool, adapters: tuple[int, ...]) -> RunDir:
    """A run directory written by hand: trainer checkpoints 2 and 4, evals at 0, 2, 4, best/ of `best_step`."""
    run = RunDir(tmp_path / "run")
    run.create()
    run.config.write_text("name: old\n")
    for s in adapters:
        run.adapter_dir(s).mkdir(parents=True)
        (run.adapter_dir(s) / "adapter_model.safetensors").write_bytes(f"weights {s}".encode())
        atomic_write_json(run.adapter_dir(s) / "meta.json", {"step": s})
    values = {0: 0.1, 2: 0.3, 4: 0.6}
    for s in (1, 2, 3, 4):
        run.append_metrics({"step": s, "kind": "train", "reward": s})
    for s, v in values.items():
        run.append_metrics({"step": s, "kind": "eval", "eval/pass@1": v})
    run.append_metrics({"step": 4, "kind": "summary", "train_runtime": 1.0})
    for s in (2, 4):
        ckpt = run.trainer / f"checkpoint-{s}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text("{}")
        b = max((e for e in values if e <= s), key=lambda e: values[e])
        atomic_write_json(ckpt / resume.RESEARCH_STATE_FILE,
                          {"best_checkpoint": {"metric": "eval/pass@1", "mode": "max",
                                               "value": values[b], "step": b}})  # fmt: skip
        if with_copy:
            (ckpt / resume.BEST_COPY).mkdir(parents=True)
            (ckpt / resume.BEST_COPY / "adapter_model.safetensors").write_bytes(f"weights {b}".encode())
            atomic_write_json(ckpt / resume.BEST_COPY / "meta.json", {"step": b, "metric": "eval/pass@1"})
    run.best.mkdir()
    (run.best / "adapter_model.safetensors").write_bytes(f"weights {best_step}".encode())
    atomic_write_json(run.best / "meta.json", {"step": best_step, "metric": "eval/pass@1", "mode": "max"})
    shutil.rmtree(run.trainer / "checkpoint-4")  # resume from checkpoint-2
    return run


def do_resume(run: RunDir) -> dict:
    return resume.resume_run(run, run.trainer / "checkpoint-2", config_text="name: tiny\n",
                             config={"name": "tiny"}, env={"created": "now"})  # fmt: skip


def test_best_restored_from_the_checkpoint_copy_by_hard_links(tmp_path):
    run = fake_run(tmp_path, best_step=4, with_copy=True, adapters=(2, 4))
    record = do_resume(run)
    assert (run.best / "adapter_model.safetensors").read_bytes() == b"weights 2"
    copy = run.trainer / "checkpoint-2" / resume.BEST_COPY / "adapter_model.safetensors"
    assert os.path.samefile(run.best / "adapter_model.safetensors", copy)
    folder = run.path / record["set_aside_to"]
    assert (folder / "checkpoints" / "best" / "adapter_model.safetensors").read_bytes() == b"weights 4"
    assert (folder / "checkpoints" / "adapter-4").is_dir() and not run.adapter_dir(4).exists()
    assert record["config_changes"] and (folder / "config.yaml").is_file()


def test_best_falls_back_to_the_adapter_snapshot_of_an_old_run(tmp_path, capsys):
    run = fake_run(tmp_path, best_step=4, with_copy=False, adapters=(2, 4))
    do_resume(run)
    assert (run.best / "adapter_model.safetensors").read_bytes() == b"weights 2"
    meta = json.loads((run.best / "meta.json").read_text())
    assert meta["step"] == 2 and meta["value"] == 0.3 and meta["eval"] == {"eval/pass@1": 0.3}
    assert meta["restored_from"] == "checkpoints/adapter-2"
    assert "restored to step 2 from checkpoints/adapter-2" in capsys.readouterr().out


def test_best_left_absent_without_a_copy_or_snapshot(tmp_path, capsys):
    run = fake_run(tmp_path, best_step=4, with_copy=False, adapters=(4,))
    do_resume(run)
    assert not run.best.exists()
    out = capsys.readouterr().out
    assert "checkpoints/best is absent" in out and "the next evaluation that improves on it rewrites it" in out


def test_a_best_of_a_kept_step_stays(tmp_path):
    run = fake_run(tmp_path, best_step=2, with_copy=False, adapters=(2, 4))
    before = digest(run.best)
    record = do_resume(run)
    assert digest(run.best) == before and record["best"] is None


def test_research_state_is_required_only_with_stateful_controls(tmp_path):
    ckpt = tmp_path / "trainer" / "checkpoint-40"
    ckpt.mkdir(parents=True)
    resume.check_research_state(ckpt, {})
    with pytest.raises(UserError, match="delete trainer/checkpoint-40 to resume from the previous checkpoint"):
        resume.check_research_state(ckpt, {"adaptive_kl": object()})


# ---------------------------------------------------------------------------- damaged runs (a kill, a full disk)


@pytest.mark.slow
def test_resume_after_a_torn_metrics_line_and_an_incomplete_checkpoint(trained, tmp_path, tiny_model_dir, capsys):
    from training_with_unsloth.experiment import run_experiment

    run = copy_run(trained, tmp_path)
    ckpt4 = run.trainer / "checkpoint-4" / "adapter_model.safetensors"
    ckpt4.write_bytes(ckpt4.read_bytes()[:200])  # cut short: the resume must go back to checkpoint-2
    with run.metrics.open("a") as f:
        f.write('{"step": 5, "kind": "train", "loss"')  # killed mid-write
    raw = tiny_config(tmp_path, tiny_model_dir, **{**SETTINGS, "trainer.max_steps": 5})
    run_experiment(validate(raw), resume=True)
    out = capsys.readouterr().out
    assert "note: trainer/checkpoint-4 is incomplete (adapter_model.safetensors is truncated" in out
    record = json.loads(run.env.read_text())["resumes"][-1]
    assert record["from_step"] == 2 and "trainer/checkpoint-4" in record["set_aside"]
    folder = run.path / record["set_aside_to"]
    assert (folder / "metrics-unreadable.txt").read_text() == '{"step": 5, "kind": "train", "loss"\n'
    train = [r["step"] for r in run.read_metrics() if r["kind"] == "train"]
    assert train == [1, 2, 3, 4, 5], "every record of the resumed run is whole, none glued to the torn line"
    assert all(line.startswith("{") and line.endswith("}") for line in run.metrics.read_text().splitlines())


@pytest.mark.slow
def test_a_resume_with_no_loadable_checkpoint_changes_nothing(trained, tmp_path, tiny_model_dir):
    from training_with_unsloth.experiment import run_experiment

    run = copy_run(trained, tmp_path)
    (run.trainer / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    adapter = run.trainer / "checkpoint-2" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-10])
    before = digest(run.path)
    raw = tiny_config(tmp_path, tiny_model_dir, **{**SETTINGS, "trainer.max_steps": 5})
    with pytest.raises(UserError) as info:
        run_experiment(validate(raw), resume=True)
    message = str(info.value)
    assert "holds no complete trainer checkpoint (checkpoint-4: trainer_state.json is unreadable" in message
    assert "start again with --overwrite" in message
    assert digest(run.path) == before, "config.yaml, metrics, env.json and checkpoints untouched"


def test_every_per_checkpoint_table_is_trimmed_at_the_resume_step(tmp_path):
    """Any analysis/*.csv with a step column loses its later rows to the abandoned folder; training names none of them."""
    run = RunDir(tmp_path / "run")
    write_llc(run, [1, 2, 3, 4])
    (run.analysis / "adapter_norms.csv").write_text("step,delta_norm\n1,0.1\n3,0.3\n")
    (run.analysis / "my_statistic.csv").write_text("step,value,notes\n2,1.0,a\n4,2.0,b\n")
    (run.analysis / "summary.csv").write_text("metric,value\nx,1\n")  # no step column: not a per-checkpoint table
    (run.analysis / "my_statistic_settings.json").write_text("{}")
    (run.analysis / "probe-rollouts-4-n4-d1.jsonl").write_text("{}\n")
    atomic_write_json(run.analysis / "traces" / "llc_alt_lr-step-4.json", {"step": 4})
    aside = resume.new_set_aside(run)
    assert resume.set_aside_table_rows(run, 2, aside) == 2 + 1 + 1
    resume.set_aside_step_files(run, 2, aside)
    assert llc_steps(run.analysis / "llc.csv") == [1, 2] and llc_steps(aside.folder / "analysis" / "llc.csv") == [3, 4]
    assert llc_steps(run.analysis / "adapter_norms.csv") == [1]
    assert llc_steps(aside.folder / "analysis" / "my_statistic.csv") == [4]
    assert (run.analysis / "my_statistic.csv").read_text().splitlines() == ["step,value,notes", "2,1.0,a"]
    assert (run.analysis / "summary.csv").read_text() == "metric,value\nx,1\n"
    assert (aside.folder / "analysis" / "probe-rollouts-4-n4-d1.jsonl").is_file()
    assert (aside.folder / "analysis" / "traces" / "llc_alt_lr-step-4.json").is_file()
    assert resume.stale_analysis(run) == ["llc_traces.png", "summary.csv"]
