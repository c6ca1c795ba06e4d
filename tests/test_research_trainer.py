"""Our trainer subclass must inherit Unsloth's rewritten GRPOTrainer, and train under it.

Runs in a subprocess: patching rebinds `trl.GRPOTrainer` for the whole interpreter. On a CPU,
`UNSLOTH_ALLOW_CPU=1` skips Unsloth's automatic rewrite and `_patch_trl_rl_trainers` builds the
class explicitly (docs/architecture.md). Unsloth's model loader needs a GPU, so the tiny model is wrapped by
PEFT and given no-op `for_training` / `for_inference` (the FastLanguageModel methods Unsloth's
trainer calls to toggle its inference mode); everything else is Unsloth's trainer code: its
generation, its `compute_loss`, its logging, with our Pass@K and checkpoint callbacks.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import tiny_config

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

from tests.helpers import unsloth_cpu_trainer
from training_with_unsloth.config import validate
from training_with_unsloth.models import logprob_fallback

logprob_fallback.install()
trainer, run = unsloth_cpu_trainer(validate(json.loads(sys.argv[1])))
print("CHANGED", json.dumps(sorted(trainer.args_rewritten)))
trainer.train()
print("TRAINED", type(trainer).__mro__[1].__name__)
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is installed on Linux x86-64 only")
def test_subclass_inherits_and_trains_under_unsloth_trainer(tiny_model_dir, tmp_path):
    raw = tiny_config(tmp_path, tiny_model_dir)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(raw)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tags = ("MRO", "BOUND", "OWN", "TRAINED", "CHANGED")
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(tags))
    mro = lines["MRO"].split()
    assert mro[0] == "ResearchGRPOTrainer" and mro[1] == "UnslothGRPOTrainer"
    assert lines["BOUND"] == "UnslothGRPOTrainer" and lines["TRAINED"] == "UnslothGRPOTrainer"
    # Unsloth's trainer rewrites only precision flags here: with no GPU it takes the machine for one without
    # bfloat16 and turns float16 autocast on (a real run refuses that: bf16/fp16 are asked-for keys there).
    assert set(json.loads(lines["CHANGED"])) <= {"fp16", "bf16", "fp16_full_eval", "bf16_full_eval"}, lines["CHANGED"]
    # Defining _get_per_token_logps on a subclass changes Unsloth's code path (docs/architecture.md): we must not; nor replace
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


CONFIG_SCRIPT = r"""
import dataclasses, glob, json, os, sys
os.environ["UNSLOTH_ALLOW_CPU"] = "1"
import unsloth  # noqa: F401
from unsloth.models.rl import _patch_trl_rl_trainers
_patch_trl_rl_trainers("grpo_trainer")
import trl
import rewards
from training_with_unsloth.config import load_config, validate
from training_with_unsloth.errors import ConfigError
from training_with_unsloth.assembly import build_grpo_config, grpo_config_kwargs
from training_with_unsloth.plan import prepare
from training_with_unsloth.rundir import RunDir
from training_with_unsloth.trainer_args import is_unsloth_config, pristine_config_class

assert is_unsloth_config(trl.GRPOConfig), "the test must build Unsloth's config class"
pristine = pristine_config_class(trl.GRPOConfig)
names = [f.name for f in dataclasses.fields(pristine) if f.init]
run = RunDir(sys.argv[1])

def compare(cfg):
    funcs, weights = rewards.build(prepare(cfg, cuda=False).reward_specs)
    built = build_grpo_config(cfg, run, weights, cuda=False, backend="unsloth")
    kw = grpo_config_kwargs(cfg, run, weights, cuda=False, backend="unsloth")  # kl.coef becomes Unsloth's beta
    if "scale_rewards" in kw and kw["scale_rewards"] is None:
        kw["scale_rewards"] = "group"  # Unsloth's spelling of group scaling under dr_grpo
    trl_args = pristine(**kw)
    got, want = built.to_dict(), trl_args.to_dict()
    return type(built).__name__, {n: (want[n], got[n]) for n in names if got[n] != want[n]}, got

out = {}
for path in sorted(glob.glob(os.path.join(sys.argv[2], "*.yaml"))):
    cls, diff, got = compare(load_config(path))
    out[os.path.basename(path)] = {
        "class": cls, "diff": {k: repr(v) for k, v in diff.items()}, "scale_rewards": got["scale_rewards"]
    }
cls, diff, got = compare(validate({"name": "bare", "trainer": {"loss_type": "dapo"}}))  # silent on everything else
out["bare"] = {"diff": {k: repr(v) for k, v in diff.items()}, "lr": got["learning_rate"], "epsilon_high": got["epsilon_high"],
               "mask": got["mask_truncated_completions"], "bs": got["per_device_train_batch_size"], "seed": got["seed"],
               "optim": got["optim"], "warmup": got["warmup_steps"], "wd": got["weight_decay"]}
try:
    compare(validate({"name": "x", "trainer": {"loss_type": "dr_grpo", "scale_rewards": "group"}}))
    out["refused"] = None
except ConfigError as exc:
    out["refused"] = str(exc)
print("CONFIGS " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is installed on Linux x86-64 only")
def test_unsloths_config_class_holds_what_every_shipped_config_asks(tmp_path):
    """Unsloth's GRPOConfig has other defaults and rewrites values; the built config must equal TRL's for the YAML."""
    configs = Path(__file__).resolve().parent.parent / "experiment_configs"
    proc = subprocess.run(
        [sys.executable, "-c", CONFIG_SCRIPT, str(tmp_path / "run"), str(configs)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("CONFIGS "))[len("CONFIGS ") :])
    shipped = {k: v for k, v in out.items() if k.endswith(".yaml")}
    assert len(shipped) == len(list(configs.glob("*.yaml"))) >= 7
    for name, result in shipped.items():
        assert result["diff"] == {}, (name, result["diff"])
        assert result["scale_rewards"] == "group", name  # addition/arithmetic: dr_grpo with group scaling, as the seeds
    bare = out["bare"]
    assert bare["diff"] == {}
    assert (bare["lr"], bare["epsilon_high"], bare["mask"], bare["bs"], bare["seed"]) == (1e-6, None, False, 8, 42)
    assert (bare["optim"], bare["warmup"], bare["wd"]) == ("adamw_torch_fused", 0, 0.0)
    refused = out["refused"]
    assert refused is not None and refused.startswith("trainer.scale_rewards:") and "'group'" in refused
    assert "'none'" in refused and "scale_rewards: null" in refused and "\n" not in refused
