"""training_with_unsloth/models/logprob_fallback.py: the CPU fallback for TRL's Triton-only chunked log-prob kernel."""

import pytest
import torch

from training_with_unsloth.models.logprob_fallback import ChunkedLogProbDispatch, _torch_chunked_logprob


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
    logp, ent, lssp, mean, top1 = ChunkedLogProbDispatch.apply(
        hidden, weight, None, targets, temperature, 4096, softcap, scale, outs
    )
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

    from training_with_unsloth.models import logprob_fallback

    logprob_fallback.install()
    logprob_fallback.install()
    assert trl_utils._ChunkedLogProbFunction is ChunkedLogProbDispatch
    assert ChunkedLogProbDispatch.kernel is not ChunkedLogProbDispatch
