"""After training: evaluate.py, infer.py, export.py and model.init_adapter on a trained tiny run (CPU)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from training_with_unsloth.rundir import RunDir, read_jsonl

pytestmark = pytest.mark.slow


def _lines(path):
    return {line["problem_id"]: line for line in read_jsonl(path)}


def _same_completions(a, b) -> None:
    assert a.keys() == b.keys()
    for pid in a:
        assert a[pid]["samples"] == b[pid]["samples"], pid
        assert a[pid].get("greedy") == b[pid].get("greedy"), pid
        assert a[pid]["correct"] == b[pid]["correct"]


def test_evaluate_all_checkpoints_equals_the_training_time_evaluation(tiny_run_dir, tmp_path, capsys):
    from experiments import evaluate

    run_path = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_path)
    run = RunDir(run_path)
    assert evaluate.main(["--run", str(run_path), "--checkpoint", "all"]) == 0
    out = capsys.readouterr().out
    assert "greedy_pass@1" in out and "| run@2 | step 2 |" in out
    folder = RunDir(run_path / "evaluations" / "default")
    for step in (2, 4):  # the adapter snapshots, evaluated at training time too
        _same_completions(_lines(folder.passk_file(step)), _lines(run.passk_file(step)))
    train_eval = {r["step"]: r for r in run.read_metrics() if r.get("kind") == "eval"}
    for record in folder.read_metrics():
        assert record["eval/pass@1"] == train_eval[record["step"]]["eval/pass@1"]
        assert record["eval/pass@1_ci"] == train_eval[record["step"]]["eval/pass@1_ci"]
    assert sorted(p.name for p in run.eval_dir.iterdir()) == ["passk-0.jsonl", "passk-2.jsonl", "passk-4.jsonl"]  # untouched
    assert (
        (folder.path / "table.md").is_file() and (folder.path / "table.csv").is_file() and (folder.plots / "passk.png").is_file()
    )


def test_compare_base_and_run_on_other_settings(tiny_run_dir, tiny_model_dir, tmp_path, capsys):
    from experiments import evaluate

    run_path = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_path)
    out_dir = tmp_path / "cmp"
    argv = [
        "--compare", f"base={tiny_model_dir}", f"t={run_path}:final",
        "--set", "task.eval_instructions=[number,answer_is]", "--num-problems", "4", "--samples", "2", "--out", str(out_dir),
    ]  # fmt: skip
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    assert "number greedy_pass@1" in printed and "answer_is pass@2" in printed
    table = (out_dir / "table.md").read_text()
    assert "| base | base (" in table and "| t | final (step 4) |" in table
    base_rows = list(read_jsonl(out_dir / "base" / "eval" / "passk-0.jsonl"))
    run_rows = list(read_jsonl(out_dir / "t" / "eval" / "passk-4.jsonl"))
    assert [r["problem_id"] for r in base_rows] == [r["problem_id"] for r in run_rows]  # the same problems
    assert {r["condition"] for r in base_rows} == {"number", "answer_is"} and len(base_rows) == 4
    csv_text = (out_dir / "table.csv").read_text()
    assert "eval/condition/answer_is/pass@2" in csv_text


def test_compare_base_row_equals_training_step_zero(tiny_run_dir, tiny_model_dir, tmp_path):
    from experiments import evaluate

    run_path = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_path)
    assert evaluate.main(["--compare", f"base={tiny_model_dir}", f"t={run_path}", "--out", str(tmp_path / "c")]) == 0
    _same_completions(_lines(tmp_path / "c" / "base" / "eval" / "passk-0.jsonl"), _lines(RunDir(run_path).passk_file(0)))


def test_evaluate_user_errors_are_one_line(tiny_run_dir, tmp_path, capsys):
    from experiments import evaluate

    assert evaluate.main(["--run", str(tiny_run_dir), "--checkpoint", "7"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tiny_run_dir} has no adapter snapshot at step 7: steps with one are 2, 4"
    assert evaluate.main(["--run", str(tiny_run_dir), "--set", "eval.k=[1,9]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert evaluate.main(["--compare", "nolabel"]) == 2
    assert "LABEL=SPEC" in capsys.readouterr().err


def test_infer_answers_and_grades_with_the_runs_rewards(tiny_run_dir, capsys):
    from experiments import infer

    assert infer.main(["--run", str(tiny_run_dir), "--checkpoint", "final", "--task", "small_sums", "--terms", "2,3"]) == 0
    out = capsys.readouterr().out
    assert "What is 2 + 3?" in out and "(gold: 5); rewards: " in out
    assert ("correct (gold" in out) or ("wrong (gold" in out)
    assert infer.main(["--run", str(tiny_run_dir), "--task", "small_sums", "--terms", "2,3", "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 3 and "/3 correct" in out
    assert infer.main(["--run", str(tiny_run_dir), "What is 1 + 1?"]) == 0
    assert infer.main(["--run", str(tiny_run_dir), "--task", "small_sums", "--nums", "x"]) == 2
    assert "needs --terms" in capsys.readouterr().err


def test_infer_streams_the_greedy_answer_it_returns(tiny_run_dir, capsys):
    import argparse

    from experiments import infer
    from training_with_unsloth import evaluations as ev
    from training_with_unsloth.config import validate
    from training_with_unsloth.session import open_session

    session = open_session(validate(ev.read_run_config(RunDir(tiny_run_dir))))
    session.use(ev.targets_for_run(RunDir(tiny_run_dir), "final")[0].ref)
    args = argparse.Namespace(samples=1, max_new_tokens=None, temperature=None)
    capsys.readouterr()
    (text,) = infer.ask(session, args, "What is 4 + 4?", None)
    streamed = capsys.readouterr().out
    assert streamed.strip() == text.strip()
    greedy = session.trainer.generate_completions(
        [[{"role": "user", "content": "What is 4 + 4?"}]], num_samples=1, greedy=True, temperature=1.0,
        max_new_tokens=session.trainer.args.max_completion_length, batch_size=1,
    )[0][0][0]  # fmt: skip
    assert greedy == text
    session.close()


def test_export_merged_answers_as_base_plus_adapter(tiny_run_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from experiments import evaluate, export

    run_path = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_path)
    out = tmp_path / "merged"
    assert export.main(["--run", str(run_path), "--checkpoint", "final", "--out", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert json.loads((out / "export.json").read_text())["dtype"] == "float32"
    card = (out / "README.md").read_text()
    assert "## Held-out evaluation" in card and "small_sums" in card
    # greedy answers on the eval problems: the merged model alone == the base + the adapter
    assert evaluate.main(["--compare", f"merged={out}", f"run={run_path}:final", "--samples", "1", "--k", "1",
                          "--out", str(tmp_path / "c")]) == 0  # fmt: skip
    merged = list(read_jsonl(tmp_path / "c" / "merged" / "eval" / "passk-0.jsonl"))
    adapted = list(read_jsonl(tmp_path / "c" / "run" / "eval" / "passk-4.jsonl"))
    assert [m["greedy"] for m in merged] == [a["greedy"] for a in adapted]
    assert export.main(["--run", str(run_path), "--out", str(out)]) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err


def test_export_adapter_only_and_gguf_without_gpu(tiny_run_dir, tmp_path, capsys):
    from peft import PeftConfig

    from experiments import export

    out = tmp_path / "lora"
    assert export.main(["--run", str(tiny_run_dir), "--adapter-only", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "export.json",
    ]
    assert PeftConfig.from_pretrained(out).r == 4
    card = (out / "README.md").read_text()
    assert "PEFT LoRA adapter" in card and "| this checkpoint |" in card and "[" in card  # metrics with intervals
    if "torch.cuda" in sys.modules and __import__("torch").cuda.is_available():
        return
    assert export.main(["--run", str(tiny_run_dir), "--gguf", "q4_k_m", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--gguf needs Unsloth and a CUDA GPU" in err


def test_init_adapter_starts_training_from_the_snapshot(tiny_run_dir, tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from tests.helpers import tiny_config
    from training_with_unsloth.config import validate
    from training_with_unsloth.experiment import assemble, plan

    folder = RunDir(tiny_run_dir).adapter_dir(4)
    cfg = validate(tiny_config(tmp_path, tiny_model_dir, **{"model.init_adapter": str(folder)}))
    a = assemble(plan(cfg))
    saved = load_file(folder / "adapter_model.safetensors")
    live = {n.replace(".default", ""): p.detach() for n, p in a.trainer.model.named_parameters() if "lora_" in n}
    assert saved.keys() == live.keys()
    assert all(torch.equal(live[k], v) for k, v in saved.items())
    a.trainer.train()
    # step 0 evaluates the snapshot's policy: its greedy answers are the source run's at step 4
    start = [line["greedy"] for line in read_jsonl(RunDir(cfg.run_dir).passk_file(0))]
    source = [line["greedy"] for line in read_jsonl(RunDir(tiny_run_dir).passk_file(4))]
    assert start == source


UNSLOTH_SCRIPT = r"""
import json, os, sys
os.environ["UNSLOTH_ALLOW_CPU"] = "1"
import unsloth  # noqa: F401
from unsloth.models.rl import _patch_trl_rl_trainers
_patch_trl_rl_trainers("grpo_trainer")
import torch
from safetensors.torch import load_file
from tests.helpers import unsloth_cpu_trainer
from training_with_unsloth.checkpoints import apply_init_adapter
from training_with_unsloth.config import validate
from training_with_unsloth.models import logprob_fallback

logprob_fallback.install()
cfg = validate(json.loads(sys.argv[1]))
trainer, run = unsloth_cpu_trainer(cfg)
ref = apply_init_adapter(trainer.model, cfg.model)
saved = load_file(ref.path / "adapter_model.safetensors")
live = {n.replace(".default", ""): p.detach() for n, p in trainer.model.named_parameters() if "lora_" in n}
print("MRO1", type(trainer).__mro__[1].__name__)
print("EQUAL", saved.keys() == live.keys() and all(torch.equal(live[k], v) for k, v in saved.items()))
trainer.train()
print("TRAINED", trainer.state.global_step)
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("unsloth") is None, reason="unsloth is installed on Linux x86-64 only")
def test_init_adapter_under_unsloths_trainer(tiny_run_dir, tiny_model_dir, tmp_path):
    import subprocess

    from tests.helpers import REPO, tiny_config

    raw = tiny_config(tmp_path, tiny_model_dir, **{"model.init_adapter": str(RunDir(tiny_run_dir).adapter_dir(2))})
    raw["trainer"]["max_steps"] = 2
    proc = subprocess.run(
        [sys.executable, "-c", UNSLOTH_SCRIPT, json.dumps(raw)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("MRO1", "EQUAL", "TRAINED")))
    assert lines == {"MRO1": "UnslothGRPOTrainer", "EQUAL": "True", "TRAINED": "2"}
