"""Several processes, one run: torchrun over gloo on the CPU writes the run directory a single process writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, tiny_config
from training_with_unsloth import distributed
from training_with_unsloth.config import EvalConfig, validate
from training_with_unsloth.errors import ConfigError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- one process: the identity, refusals


def test_one_process_is_the_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.gather({"a": 1}) == [{"a": 1}]
    assert distributed.sum_floats([1, 2.5]) == [1.0, 2.5]
    assert distributed.shard(3) == [0, 1, 2]
    distributed.barrier()


@pytest.mark.parametrize(
    ("overrides", "backend", "phrase"),
    [
        ({}, "unsloth", "Unsloth trains on one GPU per process"),
        ({"replay": {"enabled": True}}, "transformers", "replay runs in one process"),
    ],
)
def test_several_processes_refuse_what_they_cannot_do(tmp_path, overrides, backend, phrase):
    from training_with_unsloth.config import check_processes

    cfg = validate({**tiny_config(tmp_path, tmp_path), **overrides})
    check_processes(cfg, backend, 1)  # one process: anything goes
    with pytest.raises(ConfigError, match=phrase):
        check_processes(cfg, backend, 2)


def test_the_plan_counts_prompts_over_all_processes(tmp_path, monkeypatch):
    from training_with_unsloth.plan import plan_text, prepare

    cfg = validate(tiny_config(tmp_path, tmp_path, **{"model.name": "embedded"}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    text = plan_text(prepare(cfg, cuda=False), cuda=False)
    assert "4 prompts x 2 completions per step (2 processes x 4 completions)" in text


# ---------------------------------------------------------------- Pass@K split across processes


class RandomGenerator:
    """Completions drawn from torch's global RNG (as sampling is); greedy ones fixed by the prompt."""

    def generate_completions(self, prompts, *, num_samples, greedy, **kwargs):
        import torch

        texts, ids = [], []
        for p in prompts:
            i = int(p[0]["content"][1:])
            draws = [str(i) if greedy else str(int(torch.randint(0, 3, ()))) for _ in range(num_samples)]
            texts.append(draws)
            ids.append([[len(d)] for d in draws])
        return texts, ids


class EchoTask:
    def is_correct(self, completion: str, row: dict) -> bool:
        return completion == row["answer"]

    def gold(self, row: dict) -> str:
        return row["answer"]


def _evaluator(tmp: Path):
    from training_with_unsloth.evaluation import PassKEvaluator
    from training_with_unsloth.rundir import RunDir

    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "answer": str(i % 3), "problem_id": f"p{i}"} for i in range(7)]
    cfg = EvalConfig(num_problems=7, num_samples=3, k=[1, 3], batch_size=6)  # chunks of 2 problems: 4 sampled chunks
    return PassKEvaluator(
        task=EchoTask(), eval_rows=rows, reward_funcs=[], reward_weights=[], cfg=cfg, max_new_tokens=4, run=RunDir(tmp)
    )


def _evaluate_in_group(rank: int, world: int, port: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from training_with_unsloth.evaluation import seeded_evaluate

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(1000 + rank)  # the processes' own RNGs differ, as training's do
        evaluator = _evaluator(Path(out) / "run")
        metrics = seeded_evaluate(evaluator, RandomGenerator(), step=3, seed=5)
        generated = evaluator.generate(RandomGenerator(), seed=11)
        (Path(out) / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "samples": generated.samples}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_passk_split_over_two_processes_equals_one(tmp_path):
    import torch.multiprocessing as mp

    from training_with_unsloth.evaluation import seeded_evaluate

    one = _evaluator(tmp_path / "one")
    expected = seeded_evaluate(one, RandomGenerator(), step=3, seed=5)
    expected_samples = one.generate(RandomGenerator(), seed=11).samples
    mp.spawn(_evaluate_in_group, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["samples"] == expected_samples
        same = json.loads(json.dumps({k: v for k, v in expected.items() if k != "eval/seconds"}))
        assert {k: v for k, v in got["metrics"].items() if k != "eval/seconds"} == same
    assert (tmp_path / "run" / "eval" / "passk-3.jsonl").read_text() == (tmp_path / "one" / "eval" / "passk-3.jsonl").read_text()


# ---------------------------------------------------------------- torchrun: a whole run in two processes


def _train(config: Path, name: str, processes: int, *extra: str) -> subprocess.CompletedProcess:
    script = [str(REPO / "experiments" / "run_experiment.py"), str(config), "--set", f"name={name}", *extra]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        launcher += ["--master_port", str(_free_port())]
    else:
        launcher = [sys.executable]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(launcher + script, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _layout(run: Path) -> list[str]:
    """The run's files; transformers keeps one RNG state per process in a trainer checkpoint (`rng_state_<rank>.pth`)."""
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    return sorted({f.replace("rng_state_0.pth", "rng_state.pth") for f in files if "rng_state_1" not in f})


def _records(run: Path, kind: str) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind}


@pytest.mark.slow
def test_two_processes_write_the_run_one_process_writes(tmp_path, tiny_model_dir):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path, tiny_model_dir)))
    runs = tmp_path / "runs"
    _train(config, "one", 1)
    # the same global batch: 2 processes x 2 completions = 1 process x 4
    two = _train(config, "two", 2, "--set", "trainer.per_device_train_batch_size=2")
    assert two.stdout.count("done: ") == 1  # the other process prints nothing of its own
    one_run, two_run = runs / "one", runs / "two"
    assert _layout(two_run) == _layout(one_run)
    assert (two_run / "trainer" / "checkpoint-4" / "rng_state_1.pth").is_file()
    assert json.loads((two_run / "env.json").read_text())["processes"] == 2
    # Pass@K of the same weights (step 0) is the same evaluation, problem by problem
    assert (two_run / "eval" / "passk-0.jsonl").read_text() == (one_run / "eval" / "passk-0.jsonl").read_text()
    assert sorted(_records(two_run, "train")) == [1, 2, 3, 4] and sorted(_records(two_run, "eval")) == [0, 2, 4]
    assert len((two_run / "metrics.jsonl").read_text().splitlines()) == len((one_run / "metrics.jsonl").read_text().splitlines())

    # --resume in two processes continues from the last complete checkpoint and redoes what came after it
    full = _records(two_run, "train")
    import shutil

    shutil.rmtree(two_run / "trainer" / "checkpoint-4")
    _train(config, "two", 2, "--set", "trainer.per_device_train_batch_size=2", "--resume")
    resumed = _records(two_run, "train")
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step]["reward"] == pytest.approx(full[step]["reward"])
        assert resumed[step]["loss"] == pytest.approx(full[step]["loss"], abs=1e-6)
    assert len(json.loads((two_run / "env.json").read_text())["resumes"]) == 1


@pytest.mark.parametrize("name", ["multi_gpu_ddp", "deepspeed_zero2", "fsdp_lora"])
def test_shipped_accelerate_configs_load_and_leave_precision_to_the_experiment(name):
    from accelerate.commands.config.config_args import ClusterConfig

    cfg = ClusterConfig.from_yaml_file(str(REPO / "experiment_configs" / "accelerate" / f"{name}.yaml"))
    assert cfg.mixed_precision == "no" and cfg.num_processes == 2
