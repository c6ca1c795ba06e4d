"""KL diagnostics at any sampling temperature: policy and reference are scored by the trainer's own scorer.

At step 1 the LoRA B matrices are zero, so the policy is the reference and every estimate is 0,
whatever `trainer.temperature` is. A plain forward at temperature 1 for one side (and TRL's
temperature-scaled scorer for the other) gives a non-zero KL at 0.7 and 1.2.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from training_with_unsloth.config import validate
from training_with_unsloth.experiment import run_experiment

from .helpers import tiny_config

TEMPERATURES = (0.7, 1.0, 1.2)


def _one_step(tmp_path: Path, model_dir: Path, temperature: float, *, padded: bool = True, **extra) -> dict:
    raw = tiny_config(
        tmp_path,
        model_dir,
        **{
            "trainer.temperature": temperature,
            "trainer.max_steps": 1,
            "trainer.max_completion_length": 8,
            "eval.enabled": False,
            "logging.plots": False,
            **extra,
        },
    )
    raw["name"] = f"t{temperature}"
    if padded:  # prompts of several lengths: left padding
        raw["task"] = {"name": "countdown", "train_size": 64, "eval_size": 8}
    return raw


@pytest.mark.slow
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_step_one_kl_is_zero_on_the_transformers_backend(tiny_model_dir, tmp_path, temperature):
    run = run_experiment(validate(_one_step(tmp_path, tiny_model_dir, temperature)))
    step1 = next(r for r in run.read_metrics() if r["kind"] == "train" and r["step"] == 1)
    for key in ("kl/k1", "kl/k2", "kl/k3"):
        assert abs(step1[key]) < 1e-4, (key, step1[key])


SCRIPT = r"""
import json, os, sys
os.environ["UNSLOTH_ALLOW_CPU"] = "1"
import unsloth  # noqa: F401  -- first, as the unsloth backend does
from unsloth.models.rl import _patch_trl_rl_trainers
_patch_trl_rl_trainers("grpo_trainer")
import torch
from tests.helpers import unsloth_cpu_trainer
from training_with_unsloth.assembly import kl_settings
from training_with_unsloth.config import validate
from training_with_unsloth.models import logprob_fallback

logprob_fallback.install()
for raw, check in json.loads(sys.argv[1]):
    cfg = validate(raw)
    # Unsloth gives ChatML models a pad token other than the end of turn
    trainer, run = unsloth_cpu_trainer(cfg, pad_token="<|endoftext|>", kl=kl_settings(cfg, "unsloth"))
    checks = []
    aligned_by = trainer._per_completion_token
    # Unsloth's PrefixGrouper (shared-prompt scoring) does not reproduce a direct forward for the second member of
    # a group on the CPU; the alignment check below compares against a direct forward, so it runs without it.
    sys.modules[type(trainer).__mro__[1].__module__].UNSLOTH_GRPO_PREFIX_GROUPER_ON = not check

    def check_alignment(logps, output):
        # Unsloth's scorer is wider than the completions when prompts are left-padded. Rows without left padding
        # have no position shift, so there its realigned log-probs must equal a direct temperature-scaled forward.
        aligned = aligned_by(logps, output)
        ids, mask, length = trainer._forward_inputs(output)
        left_pad = (output["prompt_ids"] == trainer.processing_class.pad_token_id).sum(-1)
        rows = left_pad == 0
        if check and logps.size(1) > length and rows.any():
            with torch.no_grad():
                logits = trainer.model(input_ids=ids[rows], attention_mask=mask[rows]).logits[:, -length - 1 : -1]
            direct = (logits.float() / trainer.temperature).log_softmax(-1)
            direct = direct.gather(-1, output["completion_ids"][rows][..., None]).squeeze(-1)
            diff = ((direct - aligned[rows]).abs() * output["completion_mask"][rows]).max()
            checks.append({"extra": logps.size(1) - length, "max_diff": float(diff)})
        return aligned

    trainer._per_completion_token = check_alignment
    trainer.train()
    step1 = next(r for r in run.read_metrics() if r["kind"] == "train" and r["step"] == 1)
    print("RESULT " + json.dumps({"mro1": type(trainer).__mro__[1].__name__, "temperature": trainer.temperature,
                                  "kl": {k: step1.get(k) for k in ("kl/k1", "kl/k2", "kl/k3")}, "checks": checks}))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is installed on Linux x86-64 only")
def test_step_one_kl_is_zero_under_unsloths_trainer(tiny_model_dir, tmp_path):
    # small_sums prompts all have one length: no left padding, so Unsloth's own reference log-probs (k3 through its
    # beta) are per-token and get used; countdown's are left-padded and realigned.
    raws = [[_one_step(tmp_path, tiny_model_dir, t, padded=False, **{"kl.coef": 0.1}), False] for t in TEMPERATURES]
    # Four prompts a batch over two steps: some batches mix prompt lengths, so some rows are left-padded.
    check = _one_step(tmp_path, tiny_model_dir, 1.2, **{"trainer.max_steps": 2, "trainer.per_device_train_batch_size": 8})
    raws.append([{**check, "name": "alignment"}, True])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(raws)], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line[len("RESULT ") :]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert [r["temperature"] for r in results] == [*TEMPERATURES, 1.2]
    for result in results:
        assert result["mro1"] == "UnslothGRPOTrainer"
        for key, value in result["kl"].items():
            assert value is not None and abs(value) < 1e-4, (result["temperature"], key, value)
    checks = [c for r in results for c in r["checks"]]
    assert checks, "no batch had left-padded prompts: the realignment of Unsloth's log-probs went untested"
    assert all(c["extra"] > 0 and c["max_diff"] < 1e-4 for c in checks), checks
