"""Our trainer subclass must inherit Unsloth's rewritten GRPOTrainer when Unsloth is the backend.

Run in a subprocess: patching rebinds `trl.GRPOTrainer` for the whole interpreter. On a CPU,
`UNSLOTH_ALLOW_CPU=1` skips Unsloth's automatic rewrite and `_patch_trl_rl_trainers` builds the
class explicitly (STACK.md).
"""

import importlib.util
import subprocess
import sys

import pytest

from .conftest import REPO

SCRIPT = r"""
import os
os.environ["UNSLOTH_ALLOW_CPU"] = "1"
import unsloth  # noqa: F401  -- first, as the unsloth backend does
from unsloth.models.rl import _patch_trl_rl_trainers
_patch_trl_rl_trainers("grpo_trainer")
import trl
from training_with_unsloth.research_trainer import ResearchGRPOTrainer
mro = [c.__name__ for c in ResearchGRPOTrainer.__mro__]
print("MRO", " ".join(mro))
print("BOUND", trl.GRPOTrainer.__name__)
print("OWN", " ".join(sorted(k for k in vars(ResearchGRPOTrainer) if not k.startswith("__"))))
"""


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="unsloth is installed on Linux x86-64 only")
def test_subclass_inherits_unsloth_trainer():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "NotImplementedError" in proc.stderr and "Unsloth" in proc.stderr:
        pytest.skip(f"this Unsloth build cannot generate its trainer on a CPU: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("MRO", "BOUND", "OWN")))
    mro = lines["MRO"].split()
    assert mro[0] == "ResearchGRPOTrainer" and mro[1] == "UnslothGRPOTrainer"
    assert lines["BOUND"] == "UnslothGRPOTrainer"
    # Defining _get_per_token_logps on a subclass changes Unsloth's code path (STACK.md): we must not.
    own = lines["OWN"].split()
    assert "_get_per_token_logps" not in own and "compute_loss" not in own and "_compute_loss" not in own
