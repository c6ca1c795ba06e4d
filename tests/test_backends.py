"""Backend choice, model resolution, and the CPU fallback for TRL's Triton-only log-prob kernel."""

import pytest
import torch

from training_with_unsloth import backends
from training_with_unsloth.errors import ConfigError, UserError
from training_with_unsloth.logprob_fallback import ChunkedLogProbDispatch, _torch_chunked_logprob


def test_auto_picks_unsloth_only_with_cuda(monkeypatch):
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    assert backends.resolve_backend("auto", cuda=True) == "unsloth"
    assert backends.resolve_backend("auto", cuda=False) == "transformers"
    monkeypatch.setattr(backends, "unsloth_installed", lambda: False)
    assert backends.resolve_backend("auto", cuda=True) == "transformers"
    assert backends.resolve_backend("transformers", cuda=True) == "transformers"


def test_unsloth_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(backends, "unsloth_installed", lambda: True)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        backends.resolve_backend("unsloth", cuda=False)
    monkeypatch.setattr(backends, "unsloth_installed", lambda: False)
    with pytest.raises(ConfigError, match="not installed"):
        backends.resolve_backend("unsloth", cuda=True)


def test_model_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache") as info:
        backends.resolve_model_path("Qwen/Qwen2.5-1.5B-Instruct")
    assert "\n" not in str(info.value) and "huggingface-cli download" in str(info.value)
    assert backends.resolve_model_path("Qwen/Qwen2.5-1.5B-Instruct", allow_download=True) == "Qwen/Qwen2.5-1.5B-Instruct"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="without config.json"):
        backends.resolve_model_path(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="not a directory"):
        backends.resolve_model_path(str(tmp_path / "nowhere"))


def test_load_in_4bit_on_cpu_fails_clearly(tiny_model_dir):
    from training_with_unsloth.config import ModelConfig

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: 4-bit loading is allowed")
    with pytest.raises(ConfigError, match="load_in_4bit needs a CUDA GPU"):
        backends.load(ModelConfig(name=str(tiny_model_dir), load_in_4bit=True), "transformers", seed=0)


def test_transformers_backend_loads_lora_config(tiny_model_dir):
    from training_with_unsloth.config import ModelConfig

    loaded = backends.load(ModelConfig(name=str(tiny_model_dir), lora={"r": 4, "alpha": 8}), "transformers", seed=0)
    assert loaded.backend == "transformers" and loaded.peft_config.r == 4 and loaded.peft_config.lora_alpha == 8
    assert loaded.tokenizer.pad_token is not None
    assert next(loaded.model.parameters()).dtype == torch.float32


def _reference(hidden, weight, targets, temperature, softcap=None, scale=1.0):
    z = (hidden @ weight.T).float() * scale
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    logp = torch.log_softmax(z / temperature, -1)
    return logp.gather(-1, targets[:, None]).squeeze(-1), -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("softcap, scale, temperature", [(None, 1.0, 1.0), (30.0, 0.5, 0.7)])
def test_cpu_logprob_fallback_matches_direct_computation(softcap, scale, temperature):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    outs = ("log_probs", "entropy", "is_top1")
    logp, ent, lssp, mean, top1 = ChunkedLogProbDispatch.apply(hidden, weight, None, targets, temperature, 4096, softcap, scale, outs)
    ref_logp, ref_ent = _reference(hidden, weight, targets, temperature, softcap, scale)
    torch.testing.assert_close(logp, ref_logp)
    torch.testing.assert_close(ent, ref_ent)
    assert lssp is None and mean is None and top1.dtype == torch.bool
    (g_h, g_w) = torch.autograd.grad(logp.sum() + 0.1 * ent.sum(), (hidden, weight))
    (r_h, r_w) = torch.autograd.grad(ref_logp.sum() + 0.1 * ref_ent.sum(), (hidden, weight))
    torch.testing.assert_close(g_h, r_h)
    torch.testing.assert_close(g_w, r_w)


def test_cpu_logprob_fallback_empty_input_stays_differentiable():
    weight = torch.randn(10, 4, requires_grad=True)
    logp, *_ = _torch_chunked_logprob(torch.zeros(0, 4), weight, None, torch.zeros(0, dtype=torch.long), 1.0, 0)
    assert logp.shape == (0,) and logp.requires_grad


def test_install_rebinds_trl_and_is_idempotent():
    import trl.trainer.utils as trl_utils

    from training_with_unsloth import logprob_fallback

    logprob_fallback.install()
    logprob_fallback.install()
    assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbDispatch
    assert ChunkedLogProbDispatch.kernel is not ChunkedLogProbDispatch


def test_nothing_imports_trl_transformers_or_peft_before_the_backend_is_chosen():
    """Unsloth must be imported before these (STACK.md); config, tasks, rewards and the runner must not pull them in."""
    import subprocess
    import sys

    from .conftest import REPO

    code = (
        "import sys, training_with_unsloth.experiment, training_with_unsloth.config, tasks, rewards; "
        "from training_with_unsloth.config import load_config; "
        "from training_with_unsloth.experiment import prepare; "
        "prepare(load_config('experiment_configs/research_controls.yaml'), cuda=False); "  # every check prepare makes
        "print(sorted(m for m in ('trl', 'transformers', 'peft', 'unsloth') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
