"""training_with_unsloth/controls/callbacks.py: BestCheckpoint follows the best eval metric.

Covers max/min, ties, NaN, an unknown metric and resume.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from training_with_unsloth.controls.callbacks import BestCheckpoint, PassKCallback, UnknownMetricError
from training_with_unsloth.errors import UserError
from training_with_unsloth.rundir import RunDir


@pytest.fixture(scope="module")
def peft_model():
    """A tiny random Llama with a LoRA adapter (no tokenizer or download needed)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)  # fmt: skip
    return get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))


def lora_b(model) -> torch.nn.Parameter:
    return next(p for n, p in model.named_parameters() if "lora_B" in n)


def mark(model, value: float) -> None:
    """Stamp the adapter so a saved copy shows which step it came from."""
    with torch.no_grad():
        lora_b(model).fill_(value)


def saved_mark(run: RunDir) -> float:
    from safetensors.torch import load_file

    tensors = load_file(run.checkpoints / "best" / "adapter_model.safetensors")
    return float(next(v for k, v in tensors.items() if "lora_B" in k).flatten()[0])


class FakePassK:
    def __init__(self):
        self.latest: dict = {}

    def evaluate(self, step: int, **metrics: float) -> None:
        self.latest = {"step": step, "eval/reward": 0.0, "eval/pass@1": 0.0, **metrics}


def state(step: int, zero: bool = True):
    return SimpleNamespace(global_step=step, is_world_process_zero=zero)


def make(run: RunDir, model, metric="eval/greedy_pass@1", mode="max"):
    passk = FakePassK()
    best = BestCheckpoint(run, metric, mode, passk)
    best.bind(SimpleNamespace(model=model, _metrics={"train": {"reward": [1.0, 2.0]}}))
    return best, passk


def evaluate(best: BestCheckpoint, passk: FakePassK, model, step: int, value: float, metric="eval/greedy_pass@1") -> None:
    mark(model, step + 0.5)
    passk.evaluate(step, **{metric: value})
    (best.on_train_begin if step == 0 else best.on_step_end)(None, state(step), None)


def meta(run: RunDir) -> dict:
    return json.loads((run.checkpoints / "best" / "meta.json").read_text())


def test_improvements_ties_and_nan_in_max_mode(tmp_path, peft_model):
    run = RunDir(tmp_path / "run")
    best, passk = make(run, peft_model)
    evaluate(best, passk, peft_model, 0, 0.2)  # the first evaluation always counts
    m = meta(run)
    assert m["step"] == 0 and m["value"] == 0.2 and m["metric"] == "eval/greedy_pass@1" and m["mode"] == "max"
    assert m["eval"]["eval/greedy_pass@1"] == 0.2 and "eval/reward" in m["eval"]
    assert saved_mark(run) == 0.5
    assert (run.checkpoints / "best" / "adapter_config.json").is_file()

    evaluate(best, passk, peft_model, 2, 0.1)  # worse
    evaluate(best, passk, peft_model, 4, 0.2)  # a tie keeps the earlier adapter
    evaluate(best, passk, peft_model, 6, float("nan"))  # NaN never improves
    assert meta(run)["step"] == 0 and saved_mark(run) == 0.5

    evaluate(best, passk, peft_model, 8, 0.5)
    m = meta(run)
    assert m["step"] == 8 and m["value"] == 0.5 and m["previous_best"] == {"step": 0, "value": 0.2}
    assert m["train_metrics"] == {"reward": 1.5}
    assert saved_mark(run) == 8.5
    assert (best.best_step, best.best_value) == (8, 0.5)
    assert not list(run.checkpoints.glob(".*")), "no temporary directories left behind"

    mark(peft_model, 99.0)  # the same evaluation seen again (a later event) saves nothing
    best.on_step_end(None, state(9), None)
    best.on_train_end(None, state(9), None)
    assert saved_mark(run) == 8.5


def test_min_mode(tmp_path, peft_model):
    run = RunDir(tmp_path / "run")
    best, passk = make(run, peft_model, metric="eval/completion_length", mode="min")
    for step, value in ((0, 30.0), (2, 40.0), (4, 20.0), (6, 20.0), (8, 25.0)):
        evaluate(best, passk, peft_model, step, value, metric="eval/completion_length")
    assert meta(run)["step"] == 4 and meta(run)["mode"] == "min" and saved_mark(run) == 4.5


def test_unknown_metric_is_a_clear_error_at_the_first_eval(tmp_path, peft_model):
    run = RunDir(tmp_path / "run")
    best, passk = make(run, peft_model, metric="eval/greedy_pass@l")
    passk.evaluate(0, **{"eval/greedy_pass@1": 0.1})
    with pytest.raises(ValueError, match=r"eval/greedy_pass@l") as info:
        best.on_train_begin(None, state(0), None)
    message = str(info.value)
    assert isinstance(info.value, UserError)  # the command line prints it as one line
    assert "did you mean 'eval/greedy_pass@1'" in message and "eval/pass@1" in message and "eval/reward" in message
    assert "\n" not in message
    assert not (run.checkpoints / "best").exists()
    with pytest.raises(UnknownMetricError):  # a later evaluation says so again rather than keeping silent
        evaluate(best, passk, peft_model, 2, 0.3)


def test_only_the_first_process_writes(tmp_path, peft_model):
    run = RunDir(tmp_path / "run")
    best, passk = make(run, peft_model)
    passk.evaluate(0, **{"eval/greedy_pass@1": 0.3})
    best.on_train_begin(None, state(0, zero=False), None)
    assert not (run.checkpoints / "best").exists() and best.best_value == 0.3


def test_resume_keeps_the_best_value(tmp_path, peft_model):
    run = RunDir(tmp_path / "run")
    best, passk = make(run, peft_model)
    evaluate(best, passk, peft_model, 0, 0.2)
    evaluate(best, passk, peft_model, 2, 0.6)
    saved = json.loads(json.dumps(best.state_dict()))  # as research_state.json holds it
    assert saved == {"metric": "eval/greedy_pass@1", "mode": "max", "value": 0.6, "step": 2}

    resumed, passk2 = make(run, peft_model)
    resumed.load_state_dict(saved)
    evaluate(resumed, passk2, peft_model, 4, 0.4)  # not better than the step-2 best kept from before the resume
    assert meta(run)["step"] == 2 and saved_mark(run) == 2.5
    evaluate(resumed, passk2, peft_model, 6, 0.7)
    assert meta(run)["step"] == 6 and saved_mark(run) == 6.5

    other, passk3 = make(run, peft_model, metric="eval/reward")  # state kept for another metric is ignored
    other.load_state_dict(saved)
    assert other.best_value is None
    passk3.evaluate(8, **{"eval/reward": -1.0})
    other.on_step_end(None, state(8), None)
    assert meta(run)["metric"] == "eval/reward" and meta(run)["step"] == 8


def test_runs_after_passk_in_the_same_event(tmp_path, peft_model):
    """Registered after the PassKCallback, the best checkpoint sees the evaluation of the same event."""
    from transformers import TrainerControl
    from transformers.trainer_callback import CallbackHandler

    run = RunDir(tmp_path / "run")
    values = {0: 0.25, 2: 0.75, 3: 0.5}

    class Evaluator:
        def evaluate(self, trainer, step, seed=None):
            return {"eval/pass@1": values[step], "eval/greedy_pass@1": values[step], "eval/reward": 0.0, "eval/seconds": 0.0}

    trainer = SimpleNamespace(model=peft_model, _metrics={"train": {}})
    passk = PassKCallback(Evaluator(), [0, 2], run, seed=1)
    best = BestCheckpoint(run, "eval/greedy_pass@1", "max", passk)
    for cb in (passk, best):
        cb.bind(trainer)
    handler = CallbackHandler([passk, best], peft_model, None, None, None)
    control = TrainerControl()
    st = SimpleNamespace(global_step=0, max_steps=3, is_world_process_zero=True)
    handler.on_train_begin(None, st, control)
    assert meta(run)["step"] == 0
    for step in (1, 2, 3):
        st.global_step = step
        mark(peft_model, step + 0.5)
        handler.on_step_end(None, st, control)
        if step == 2:
            assert meta(run)["step"] == 2 and saved_mark(run) == 2.5
    handler.on_train_end(None, st, control)  # the final evaluation (0.5) does not beat step 2
    assert passk.latest["step"] == 3 and meta(run)["step"] == 2 and saved_mark(run) == 2.5


def test_bad_mode():
    with pytest.raises(ValueError, match="best_mode"):
        BestCheckpoint(RunDir("/nonexistent"), "eval/reward", "maximum")


def test_resume_behind_a_newer_best_says_so(tmp_path, peft_model, capsys):
    run = RunDir(tmp_path / "run")
    best, passk = make(run, peft_model)
    evaluate(best, passk, peft_model, 2, 0.3)
    kept = best.state_dict()  # trainer checkpoint at step 4
    evaluate(best, passk, peft_model, 6, 0.9)  # then a crash after step 6; resume from step 4
    resumed, passk2 = make(run, peft_model)
    resumed.load_state_dict(kept)
    resumed.on_train_begin(None, state(4), None)
    out = capsys.readouterr().out
    assert "holds step 6, past the resumed step 4" in out and "eval/greedy_pass@1=0.3 (step 2)" in out
    evaluate(resumed, passk2, peft_model, 6, 0.5)  # the redone step-6 evaluation beats the kept best
    assert meta(run)["step"] == 6 and meta(run)["value"] == 0.5
