"""training_with_unsloth/checkpoints.py: what `runs/X:best` names, loading a snapshot, `model.init_adapter` checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from training_with_unsloth import checkpoints as ck
from training_with_unsloth.errors import UserError
from training_with_unsloth.rundir import RunDir


def test_resolve_names_best_final_all_and_steps(untrained_run_dir, tmp_path):
    run_path = tmp_path / "run"
    shutil.copytree(untrained_run_dir, run_path)
    run = RunDir(run_path)
    assert [r.step for r in ck.resolve(run, "all")] == [2, 4]
    (final,) = ck.resolve(run, "final")
    assert final.step == 4 and final.path == run.adapter_dir(4) and "final" in final.label
    (two,) = ck.resolve(run, "2")
    assert two.path == run.adapter_dir(2)
    with pytest.raises(UserError, match="no adapter snapshot at step 3: steps with one are 2, 4"):
        ck.resolve(run, "3")
    with pytest.raises(UserError, match="use best, final, all or a step number"):
        ck.resolve(run, "latest")
    with pytest.raises(UserError, match="kept no best adapter"):
        ck.resolve(run, "best")
    shutil.copytree(run.adapter_dir(2), run.best)
    (best,) = ck.resolve(run, "best")
    assert best.step == 2 and best.path == run.best


def test_parse_spec_splits_only_known_checkpoints():
    assert ck.parse_spec("runs/x:best") == ("runs/x", "best")
    assert ck.parse_spec("runs/x:12") == ("runs/x", "12")
    assert ck.parse_spec("runs/x") == ("runs/x", None)
    assert ck.parse_spec("Qwen/Qwen2.5-1.5B-Instruct") == ("Qwen/Qwen2.5-1.5B-Instruct", None)
    assert ck.parse_spec("C:/models/x") == ("C:/models/x", None)


def test_adapter_folder_and_owning_run(untrained_run_dir, tmp_path):
    run = RunDir(untrained_run_dir)
    ref = ck.adapter_folder(run.adapter_dir(4))
    assert ref.step == 4
    assert ck.owning_run(ref.path).path.resolve() == run.path.resolve()
    with pytest.raises(UserError, match="is not a PEFT adapter folder"):
        ck.adapter_folder(tmp_path)


def test_check_lora_shape_names_the_mismatch(untrained_run_dir):
    from training_with_unsloth.config import LoraConfig

    folder = RunDir(untrained_run_dir).adapter_dir(2)
    ck.check_lora_shape(folder, LoraConfig(r=4, alpha=8), where="here")
    with pytest.raises(UserError) as err:
        ck.check_lora_shape(folder, LoraConfig(r=8, alpha=8), where="model.init_adapter")
    assert "\n" not in str(err.value) and "r 4" in str(err.value) and "model.lora.r 8" in str(err.value)


def _peft_tiny(tiny_model_dir, r: int = 4):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", task_type="CAUSAL_LM"))


def test_load_weights_copies_every_tensor_and_zero_adapter_is_the_base(untrained_run_dir, tiny_model_dir):
    import torch
    from safetensors.torch import load_file

    model = _peft_tiny(tiny_model_dir)
    folder = RunDir(untrained_run_dir).adapter_dir(4)
    ck.load_weights(model, folder)
    saved = load_file(folder / "adapter_model.safetensors")
    live = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(saved) == len(live)
    for name, tensor in saved.items():
        (match,) = [p for n, p in live.items() if n.replace(".default", "") == name]
        assert torch.equal(match.detach(), tensor)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        with model.disable_adapter():
            base = model(ids).logits
        adapted = model(ids).logits
        ck.zero_adapter(model)
        zeroed = model(ids).logits
    assert not torch.allclose(adapted, base)
    assert torch.equal(zeroed, base)


def test_load_weights_of_another_rank_is_one_line(untrained_run_dir, tiny_model_dir):
    model = _peft_tiny(tiny_model_dir, r=8)
    with pytest.raises(UserError) as err:
        ck.load_weights(model, RunDir(untrained_run_dir).adapter_dir(2))
    assert "\n" not in str(err.value) and "does not match the model's LoRA adapter" in str(err.value)


def test_init_adapter_checks_shape_and_base_before_loading(untrained_run_dir, tiny_model_dir):
    from training_with_unsloth.config import ModelConfig

    folder = str(RunDir(untrained_run_dir).adapter_dir(4))
    ok = ModelConfig(name=str(tiny_model_dir), lora={"r": 4, "alpha": 8}, init_adapter=folder)
    assert ck.init_adapter_ref(ok).step == 4
    with pytest.raises(UserError, match="kept no best adapter"):  # a run directory means its best adapter
        ck.init_adapter_ref(ok.model_copy(update={"init_adapter": str(untrained_run_dir)}))
    with pytest.raises(UserError, match="model.lora.r 16"):
        ck.init_adapter_ref(ModelConfig(name=str(tiny_model_dir), init_adapter=folder))
    with pytest.raises(UserError, match="was trained on .* this run loads 'embedded'"):
        ck.init_adapter_ref(ModelConfig(name="embedded", lora={"r": 4, "alpha": 8}, init_adapter=folder))


def test_init_adapter_with_a_wrong_shape_stops_the_run_before_any_model(untrained_run_dir, tiny_model_dir, tmp_path, capsys):
    from experiments import run_experiment
    from tests.helpers import tiny_config

    path = tmp_path / "c.yaml"
    raw = tiny_config(tmp_path, tiny_model_dir)
    raw["model"]["lora"] = {"r": 8, "alpha": 16}
    raw["model"]["init_adapter"] = str(RunDir(untrained_run_dir).adapter_dir(2))
    path.write_text(json.dumps(raw))
    assert run_experiment.main([str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: model.init_adapter:") and "with r 4" in err
    assert not (tmp_path / "runs" / "tiny").exists()


def test_meta_step_tolerates_missing_meta(tmp_path: Path):
    assert ck._meta_step(tmp_path) is None
