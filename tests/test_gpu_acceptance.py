"""bench/gpu_acceptance.py on the CPU: its plan, its refusal without a GPU, the step runner's time limits, and the
pieces its steps judge with; bench/random_model.py keeps the real vocabulary."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def _load(name: str):
    module_name = f"bench_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def test_the_plan_lists_every_step_with_its_limit_within_ten_minutes(capsys):
    acc = _load("gpu_acceptance")
    assert acc.main(["--plan"]) == 0
    out = capsys.readouterr().out
    limits = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+limit\s+(\d+) s", out, re.MULTILINE)}
    assert list(limits) == ["a", "b_bf16", "b_fp16", "c", "d", "e", "f", "g", "h"]
    assert all(v > 0 for v in limits.values()) and sum(limits.values()) <= 600
    assert "bench/random_model.py --shape qwen2.5-1.5b" in out and "model.dtype=float16" in out
    assert "run_experiment.py" in out and "--resume --set model.dtype=bfloat16" in out
    assert "evaluate.py" in out and "infer.py" in out and "analysis/llc.py" in out and "--gguf q8_0" in out
    assert "trainer_overhead.py" in out and "--variants plain,ours-off" in out
    assert acc.main(["--plan", "--only", "a,d", "--limit", "d=30"]) == 0
    assert re.findall(r"^(\w+)\s+limit\s+(\d+) s", capsys.readouterr().out, re.MULTILINE) == [("a", "60"), ("d", "30")]


def test_without_a_gpu_it_says_so_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here")
    acc = _load("gpu_acceptance")
    assert acc.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no CUDA GPU here") and "\n" not in err


def test_each_step_runs_under_its_own_limit(tmp_path):
    """A hang is killed at its limit (what it printed before is kept), a crash is reported, the steps after them
    run, and a step that needs a failed one is skipped."""
    acc = _load("gpu_acceptance")
    scripts = {
        "ok": "print('RESULT ok.figure=1.5', flush=True); print('RESULT ok=ok')",
        "hang": "import time; print('RESULT hang.partial=1', flush=True); time.sleep(60)",
        "crash": "import sys; print('Traceback: boom'); sys.exit(3)",
        "after": "print('RESULT after=ok')",
        "needs_hang": "print('RESULT needs_hang=ok')",
    }
    steps = [acc.Step(k, 1 if k == "hang" else 20, k, ("hang",) if k == "needs_hang" else (), lambda w: [], lambda w: None)
             for k in scripts]  # fmt: skip
    report = acc.Report(tmp_path / "results.txt")
    try:
        status = acc.run_steps(steps, acc.Work(tmp_path), report, {},
                               argv_for=lambda s, w: [sys.executable, "-c", scripts[s.key]])  # fmt: skip
    finally:
        report.close()
    assert status == {"ok": "ok", "hang": "failed", "crash": "failed", "after": "ok", "needs_hang": "skipped"}
    lines = (tmp_path / "results.txt").read_text().splitlines()
    assert "RESULT ok.figure=1.5" in lines and "RESULT hang.partial=1" in lines
    assert "RESULT hang=failed reason=timeout after 1 s (killed)" in lines
    assert "RESULT crash=failed reason=exit 3: Traceback: boom" in lines
    assert any(line.startswith("RESULT needs_hang=skipped reason=needs step hang") for line in lines)
    assert all(line.startswith("RESULT ") for line in lines)
    seconds = [float(line.split("=")[1]) for line in lines if line.startswith("RESULT hang.seconds=")]
    assert seconds and seconds[0] < 10
    assert "Traceback: boom" in (tmp_path / "results.log").read_text()  # the full output goes to the log


def test_result_lines_are_one_line_each(capsys):
    acc = _load("gpu_acceptance")
    assert acc.result("b_bf16.kl_step1_zero", True, note="LoRA B\n= 0") == "RESULT b_bf16.kl_step1_zero=yes note=LoRA B = 0"
    assert acc.result("x", None) == "RESULT x=-" and acc.result("y", 1 / 3) == "RESULT y=0.333333"
    assert capsys.readouterr().out.count("\n") == 3


def test_the_grpo_config_check_names_each_key_the_trainer_changed():
    acc = _load("gpu_acceptance")
    asked = {"learning_rate": 1.0e-5, "bf16": True, "top_k": 0, "lr_scheduler_type": "constant_with_warmup",
             "epsilon": 0.2, "max_steps": 2}  # fmt: skip
    held = {"learning_rate": 1e-05, "bf16": True, "top_k": None, "lr_scheduler_type": "constant_with_warmup",
            "epsilon": 0.28}  # fmt: skip
    assert acc.compare_trainer_keys(asked, held) == [
        "top_k: 0 asked, None held",
        "epsilon: 0.2 asked, 0.28 held",
        "max_steps: 2 asked, nothing held",
    ]
    assert acc.compare_trainer_keys({"bf16": True}, {"bf16": 1}) == ["bf16: True asked, 1 held"]
    assert acc.compare_trainer_keys({"k": [1, 4]}, {"k": [1, 4.0]}) == []


def test_infer_s_streamed_answer_is_found_between_prompt_and_verdict():
    acc = _load("gpu_acceptance")
    prompt = [{"role": "system", "content": "Solve."}, {"role": "user", "content": "Use [1, 2]\nto make 3."}]
    stdout = "# step 2; greedy\n[system] Solve.\n[user] Use [1, 2]\nto make 3.\n<answer>1 + 2</answer>\ncorrect (gold: x)"
    assert acc.streamed_answer(stdout, prompt) == "\n<answer>1 + 2</answer>"
    assert acc.streamed_answer("nothing", prompt) is None


def test_the_random_model_keeps_qwens_vocabulary(tmp_path):
    """151,936 embedding rows (the real model's), tokenized by the embedded 49,152-token tokenizer."""
    rm = _load("random_model")
    assert all(shape["vocab_size"] == 151936 for shape in rm.SHAPES.values())
    tiny = dict(rm.SHAPES["qwen2.5-1.5b"], hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1)  # fmt: skip
    made = rm.build(tiny, tmp_path / "m")
    assert made["vocab"] == made["embedding_rows"] == 151936 and made["tokenizer_tokens"] == 49152
    assert (made["pad"], made["eos"]) == ("<|endoftext|>", "<|im_end|>")  # as Qwen's: no pad id inside chat prompts
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["vocab_size"] == 151936 and config["tie_word_embeddings"] is True
    assert (config["pad_token_id"], config["eos_token_id"]) == (0, 2)
    assert (tmp_path / "m" / "tokenizer.json").is_file() and (tmp_path / "m" / "chat_template.jinja").is_file()
    assert rm.build(tiny, tmp_path / "small", vocab=0)["vocab"] == 49152  # --vocab 0: the tokenizer's own
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        rm.build(tiny, tmp_path / "bad", vocab=1000)


def test_the_acceptance_folders_are_not_committed():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "bench/results/" in ignored and "runs/" in ignored
    assert Path(_load("gpu_acceptance").Work(Path("/tmp/w")).runs).is_relative_to("/tmp/w")  # runs go to --work
