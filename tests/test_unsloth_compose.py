"""Our trainer subclass must inherit Unsloth's rewritten GRPOTrainer, and train under it.

Runs in a subprocess: patching rebinds `trl.GRPOTrainer` for the whole interpreter. On a CPU,
`UNSLOTH_ALLOW_CPU=1` skips Unsloth's automatic rewrite and `_patch_trl_rl_trainers` builds the
class explicitly (STACK.md). Unsloth's model loader needs a GPU, so the tiny model is wrapped by
PEFT and given no-op `for_training` / `for_inference` (the FastLanguageModel methods Unsloth's
trainer calls to toggle its inference mode); everything else is Unsloth's trainer code: its
generation, its `compute_loss`, its logging, with our Pass@K and checkpoint callbacks.
"""

import importlib.util
import json
import subprocess
import sys

import pytest

from .conftest import tiny_config

SCRIPT = r"""
import json, os, sys
os.environ["UNSLOTH_ALLOW_CPU"] = "1"
import unsloth  # noqa: F401  -- first, as the unsloth backend does
from unsloth.models.rl import _patch_trl_rl_trainers
_patch_trl_rl_trainers("grpo_trainer")
import trl
from training_with_unsloth.research_trainer import ResearchGRPOTrainer
print("MRO", " ".join(c.__name__ for c in ResearchGRPOTrainer.__mro__))
print("BOUND", trl.GRPOTrainer.__name__)
print("OWN", " ".join(sorted(k for k in vars(ResearchGRPOTrainer) if not k.startswith("__"))))

import rewards
from peft import get_peft_model
from training_with_unsloth import backends, logprob_fallback
from training_with_unsloth.config import validate
from training_with_unsloth.experiment import build_grpo_config, prepare, research_callbacks
from training_with_unsloth.rundir import RunDir

cfg = validate(json.loads(sys.argv[1]))
prep = prepare(cfg, cuda=False)
logprob_fallback.install()
funcs, weights = rewards.build(prep.reward_specs)
run = RunDir(cfg.run_dir)
run.create()
args = build_grpo_config(cfg, run, weights, cuda=False)
loaded = backends.load(cfg.model, "transformers", seed=cfg.seed, gradient_checkpointing=False)
for name in ("for_training", "for_inference"):
    setattr(type(loaded.model), name, lambda self, *a, **k: self)
model = get_peft_model(loaded.model, loaded.peft_config)
train_ds, eval_ds = prep.task.build(cfg.seed)
trainer = ResearchGRPOTrainer(
    model=model, reward_funcs=funcs, args=args, train_dataset=train_ds, processing_class=loaded.tokenizer,
    research_callbacks=research_callbacks(prep, run, eval_ds, funcs, weights, args.max_completion_length),
)
trainer.train()
print("TRAINED", type(trainer).__mro__[1].__name__)
"""


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is installed on Linux x86-64 only")
def test_subclass_inherits_and_trains_under_unsloth_trainer(tiny_model_dir, tmp_path):
    raw = tiny_config(tmp_path, tiny_model_dir)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(raw)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("MRO", "BOUND", "OWN", "TRAINED")))
    mro = lines["MRO"].split()
    assert mro[0] == "ResearchGRPOTrainer" and mro[1] == "UnslothGRPOTrainer"
    assert lines["BOUND"] == "UnslothGRPOTrainer" and lines["TRAINED"] == "UnslothGRPOTrainer"
    # Defining _get_per_token_logps on a subclass changes Unsloth's code path (STACK.md): we must not; nor replace
    # Unsloth's fused compute_loss. Our _compute_loss (the transformers-backend KL term) is never called under
    # Unsloth, and our _get_per_token_logps_and_entropies only forwards (*args, **kwargs) to Unsloth's.
    own = lines["OWN"].split()
    assert "_get_per_token_logps" not in own and "compute_loss" not in own

    from training_with_unsloth.rundir import RunDir

    run = RunDir(tmp_path / "runs" / "tiny")
    kinds = [(r["kind"], r["step"]) for r in run.read_metrics()]
    assert [s for k, s in kinds if k == "train"] == [1, 2, 3, 4]
    assert [s for k, s in kinds if k == "eval"] == [0, 2, 4]
    assert run.adapter_steps() == [2, 4] and (run.adapter_dir(4) / "adapter_model.safetensors").is_file()
