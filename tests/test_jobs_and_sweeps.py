"""SLURM through submitit (`submit.py --local`) and Optuna sweeps (`sweep.py`): parsing, errors, and real runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from experiments.submit import TrainJob
from tests.helpers import REPO, tiny_config
from training_with_unsloth.errors import ConfigError, UserError
from training_with_unsloth.jobs import executor, minutes, slurm_parameters
from training_with_unsloth.sweeps import Sweep

# ---------------------------------------------------------------- --slurm parameters


def test_slurm_parameters_take_submitit_names_and_short_forms():
    got = slurm_parameters("partition=gpu,gpus=1,time=4:00:00,mem=32GB,cpus=8,qos=high")
    assert got == {"partition": "gpu", "gpus_per_node": 1, "time": 240, "mem": "32GB", "cpus_per_task": 8, "qos": "high"}


@pytest.mark.parametrize(("text", "expected"), [("90", 90), ("4:00:00", 240), ("30:00", 30), ("1-12:00", 2160), ("0:00:30", 1)])
def test_slurm_time_forms_in_minutes(text, expected):
    assert minutes(text) == expected


def test_slurm_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown key 'partion': did you mean 'partition'"):
        slurm_parameters("partion=gpu")
    with pytest.raises(ConfigError, match="is not KEY=VALUE"):
        slurm_parameters("gpu")
    with pytest.raises(ConfigError, match="time 'soon'"):
        slurm_parameters("time=soon")


def test_slurm_without_sbatch_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="no SLURM here .* use --local"):
        executor(tmp_path, slurm={"partition": "gpu"}, local=False)


def test_a_requeued_job_resumes_or_starts_afresh(tmp_path):
    run = tmp_path / "runs" / "x"
    job = TrainJob("cfg.yaml", ["trainer.max_steps=2"], str(run))
    assert job.argv(resume=False) == ["cfg.yaml", "--set", "trainer.max_steps=2"]
    assert job.argv(resume=True)[-1] == "--overwrite"  # nothing complete to continue
    ckpt = run / "trainer" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    assert job.argv(resume=True)[-1] == "--resume"
    requeued = job.checkpoint()
    assert requeued.kwargs == {"resume": True} and requeued.function.run_dir == str(run)


# ---------------------------------------------------------------- sweep files


def _sweep_file(tmp_path: Path, model_dir: Path, **fields) -> Path:
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(tiny_config(tmp_path, model_dir)))
    raw = {
        "name": "lr",
        "base": "tiny.yaml",
        "output_dir": str(tmp_path / "runs"),
        "space": {"trainer.learning_rate": {"choices": [1e-3, 1e-2]}},
        "sampler": "grid",
        "metric": "eval/reward",
        "direction": "max",
        "seeds": [1, 2],
        **fields,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"trails": 3}, "unknown key 'trails': did you mean 'trials'"),
        ({"space": {"trainer.learning_rate": {"loguniform": [1e-5, 1e-3]}}}, "grid takes only `choices`"),
        ({"space": {"trainer.learning_rate": {"choice": [1]}}}, "unknown key 'space.trainer.learning_rate.choice'"),
        ({"space": {"trainer.learning_rat": {"choices": [1e-3]}}}, "learning_rat"),
        ({"sampler": "tpe"}, "needs `trials`"),
        ({"direction": "up"}, "direction must be max or min"),
    ],
)
def test_bad_sweep_files_are_one_line_errors(tmp_path, tiny_model_dir, fields, phrase):
    with pytest.raises(ConfigError, match=phrase):
        Sweep(_sweep_file(tmp_path, tiny_model_dir, **fields))


def test_a_grid_counts_its_combinations(tmp_path, tiny_model_dir):
    sweep = Sweep(_sweep_file(tmp_path, tiny_model_dir, space={
        "trainer.learning_rate": {"choices": [1e-3, 1e-2]}, "model.lora.r": {"choices": [2, 4, 8]},
    }))  # fmt: skip
    assert sweep.cfg.total_trials == 6
    assert sweep.dir == (tmp_path / "runs" / "sweeps" / "lr").resolve()
    items = sweep.overrides(trial_name="trial-000-seed1", seed=1, params={"model.lora.r": 2})
    assert "seed=1" in items and "model.lora.r=2" in items


# ---------------------------------------------------------------- real runs


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_submit_local_runs_the_job_and_logs_into_the_run(tmp_path, tiny_model_dir):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, tiny_model_dir)))
    done = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "submit.py"), str(config), "--set", "trainer.max_steps=2", "--local"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    run = tmp_path / "runs" / "tiny"
    env = json.loads((run / "env.json").read_text())
    assert env["job"]["scheduler"] == "local" and env["job"]["job_id"]
    logs = list((run / "jobs").glob(f"{env['job']['job_id']}_0_log.*"))
    assert {p.suffix for p in logs} == {".out", ".err"}
    assert "done: " in (run / "jobs" / f"{env['job']['job_id']}_0_log.out").read_text()
    assert sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("adapter-*")) == [2]


def _sigint_default() -> None:
    """In the child before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_grid_sweep_survives_ctrl_c_and_writes_its_report(tmp_path, tiny_model_dir):
    path = _sweep_file(tmp_path, tiny_model_dir)
    sweep = Sweep(path)
    cmd = [sys.executable, str(REPO / "experiments" / "sweep.py"), str(path)]
    first = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=_sigint_default,  # a shell's background job (e.g. CI started with &) inherits SIGINT ignored
    )  # fmt: skip
    trials = sweep.trials_dir
    deadline = time.time() + 400
    started = []
    while time.time() < deadline:  # Ctrl-C once the second run has started training
        started = sorted(p.parent.name for p in trials.glob("trial-*/metrics.jsonl"))
        if len(started) >= 2 and any('"train"' in line for line in (trials / started[-1] / "metrics.jsonl").open()):
            break
        time.sleep(0.5)
    assert len(started) >= 2, first.communicate()[0][-2000:]
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: the sweep and its run
    out = first.communicate(timeout=120)[0].decode()
    assert first.returncode == 130, out[-2000:]
    assert "rerun the same command" in out
    finished = {p.parent.name: (p.read_text()) for p in trials.glob("trial-*/metrics.jsonl") if '"summary"' in p.read_text()}

    second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    names = sorted(p.name for p in trials.iterdir())
    # two settings x two seeds; an interrupted trial is continued under its own number (its continuation,
    # a trial of its own in the study, reuses those run directories), so the second setting's number may skip one
    assert len(names) == 4 and names[:2] == ["trial-000-seed1", "trial-000-seed2"]
    assert names[2].removesuffix("seed1") == names[3].removesuffix("seed2")
    for name, text in finished.items():  # runs finished before the Ctrl-C were not trained again
        assert (trials / name / "metrics.jsonl").read_text() == text
    for name in names:  # every run finished once: one summary, steps 1-4 once each
        records = _records(trials / name)
        assert [r["step"] for r in records if r["kind"] == "summary"] == [4]
        assert sorted(r["step"] for r in records if r["kind"] == "train") == [1, 2, 3, 4]
    import optuna

    study = optuna.load_study(study_name="lr", storage=sweep.storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.params["trainer.learning_rate"] for t in complete) == [1e-3, 1e-2]
    report = (sweep.dir / "report.md").read_text()
    assert "## Best trial" in report and "95% CI (seeds)" in report
    assert (sweep.dir / "report" / "history.png").is_file()
    assert (sweep.dir / "report" / "metric_vs_trainer.learning_rate.png").is_file()
    again = subprocess.run(cmd + ["--report"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "report: " in again.stdout


def test_a_trial_the_pruner_stops_writes_pruned_json_and_stops_training(tmp_path):
    import optuna

    from training_with_unsloth.controls.sweep_report import SweepReport
    from training_with_unsloth.rundir import RunDir
    from training_with_unsloth.sweeps import PRUNED_FILE, make_pruner

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage, pruner=make_pruner("median"), direction="maximize")
    for _ in range(2):  # two finished trials that reached 0.9 at step 8
        done = study.ask()
        done.report(0.3, 0)
        done.report(0.9, 8)
        study.tell(done, 0.9)
    trial = study.ask()
    run = RunDir(tmp_path / "run")
    run.create()
    passk = type("PassK", (), {"latest": {}})()
    report = SweepReport(run, passk, storage=storage, study="s", trial_id=trial._trial_id, metric="eval/pass@1", pruner="median")
    state = type("State", (), {"is_world_process_zero": True, "global_step": 0})()
    control = type("Control", (), {"should_training_stop": False})()
    passk.latest = {"step": 0, "eval/pass@1": 0.3}  # the base model's evaluation: never pruned on
    report.on_train_begin(None, state, control)
    assert not control.should_training_stop
    passk.latest = {"step": 8, "eval/pass@1": 0.1}  # below the median of the others at step 8
    report.on_step_end(None, state, control)
    assert control.should_training_stop
    assert json.loads((run.path / PRUNED_FILE).read_text())["value"] == 0.1
    assert study.trials[-1].intermediate_values == {0: 0.3, 8: 0.1}


@pytest.mark.slow
def test_two_local_workers_share_the_study_and_run_each_setting_once(tmp_path, tiny_model_dir):
    path = _sweep_file(tmp_path, tiny_model_dir, seeds=[1])
    sweep = Sweep(path)
    cmd = [sys.executable, str(REPO / "experiments" / "sweep.py"), str(path), "--workers", "2"]
    done = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert sorted(p.name for p in sweep.trials_dir.iterdir()) == ["trial-000-seed1", "trial-001-seed1"]
    import optuna

    study = optuna.load_study(study_name="lr", storage=sweep.storage)
    complete = sorted(t.params["trainer.learning_rate"] for t in study.trials if t.state.name == "COMPLETE")
    assert complete == [1e-3, 1e-2]
    assert "2 of 2 trials complete" in (sweep.dir / "report.md").read_text()


@pytest.mark.parametrize("path", sorted((REPO / "experiment_configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_files_validate(path):
    sweep = Sweep(path)  # keys, values and base experiment checked, nothing run
    assert sweep.cfg.seeds and sweep.base.is_file()
