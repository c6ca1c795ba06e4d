"""KL estimators, the toolkit's KL loss term against TRL's own beta path, and the adaptive controller."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from training_with_unsloth.assembly import kl_settings
from training_with_unsloth.config import validate
from training_with_unsloth.controls.kl import AdaptiveKL, KLSettings, per_token, token_mean_estimates
from training_with_unsloth.errors import ConfigError
from training_with_unsloth.plan import prepare

from .helpers import tiny_trainer


def test_estimators_match_their_formulas():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    r = ref - logp
    assert torch.allclose(per_token("k1", logp, ref), -r)
    assert torch.allclose(per_token("k2", logp, ref), 0.5 * r**2)
    assert torch.allclose(per_token("k3", logp, ref), torch.exp(r) - r - 1)
    mask = torch.tensor([[1, 1, 0]])
    est = token_mean_estimates(logp, ref, mask)
    assert est["k1"] == pytest.approx(float((-r[0, :2]).mean()))
    assert est["k3"] >= 0 and est["k2"] >= 0


def test_estimates_agree_with_the_exact_kl_on_samples():
    """On tokens sampled from p, mean k1 and k3 estimate KL(p||q) without bias."""
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.3, 0.5])
    exact = float((p * (p / q).log()).sum())
    idx = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, logq = p.log()[idx][None], q.log()[idx][None]
    est = token_mean_estimates(logp, logq, torch.ones_like(logp))
    assert est["k1"] == pytest.approx(exact, rel=0.03) and est["k3"] == pytest.approx(exact, rel=0.03)


@pytest.fixture(scope="module")
def trainer_and_batch(tmp_path_factory, tiny_model_dir):
    """A tiny ResearchGRPOTrainer with TRL's beta on, and one generated-and-scored batch (with reference log-probs).

    Sampled at temperature 1.2: TRL scores log-probs from logits / temperature, and so must the toolkit.
    """
    tmp = tmp_path_factory.mktemp("kl")
    overrides = {"trainer.beta": 0.2, "trainer.max_completion_length": 8, "trainer.temperature": 1.2}
    trainer, args, train_ds = tiny_trainer(tmp, tiny_model_dir, overrides, callbacks=[], kl=KLSettings(diagnostics=True))
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    # make the adapter non-trivial so policy and reference differ
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    rows = [train_ds[i] for i in range(2) for _ in range(args.num_generations)]
    batch = trainer._generate_and_score_completions(rows)
    return trainer, batch


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.slow
def test_reference_logps_are_trls_at_the_sampling_temperature(trainer_and_batch):
    trainer, batch = trainer_and_batch
    assert trainer.temperature == 1.2
    mask = batch["completion_mask"].bool()
    ours = trainer._reference_logps(batch)
    assert torch.allclose(ours[mask], batch["ref_per_token_logps"][mask], atol=1e-5)
    assert not torch.allclose(trainer._policy_logps(batch)[mask], ours[mask], atol=1e-3), "the adapter must matter here"


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo", "bnpo"])
def test_k3_loss_term_equals_trl_beta_path(trainer_and_batch, loss_type):
    """At temperature 1.2, with the reference log-probs the toolkit computes itself (as it does when beta is 0)."""
    trainer, batch = trainer_and_batch
    assert batch["ref_per_token_logps"] is not None
    trainer.loss_type = loss_type
    trainer.beta, trainer.kl = 0.2, KLSettings(diagnostics=False)
    native_loss, native_grads = _loss_and_grads(trainer, batch)
    ours_batch = {**batch, "ref_per_token_logps": trainer._reference_logps(batch)}
    trainer.beta, trainer.kl = 0.0, KLSettings(estimator="k3", coef=0.2, in_loss=True, diagnostics=False)
    ours_loss, ours_grads = _loss_and_grads(trainer, ours_batch)
    trainer.kl.coef = 0.0
    without_loss, _ = _loss_and_grads(trainer, ours_batch)
    assert not torch.isclose(native_loss, without_loss), "the KL term must matter in this batch"
    assert torch.allclose(native_loss, ours_loss, rtol=1e-5, atol=1e-7)
    assert native_grads.keys() == ours_grads.keys() and native_grads
    for name, grad in native_grads.items():
        assert torch.allclose(grad, ours_grads[name], rtol=1e-4, atol=1e-7), name


@pytest.mark.slow
def test_k1_and_k2_terms_differ_from_k3(trainer_and_batch):
    trainer, batch = trainer_and_batch
    trainer.loss_type, trainer.beta = "grpo", 0.0
    losses = {}
    for est in ("k1", "k2", "k3"):
        trainer.kl = KLSettings(estimator=est, coef=0.2, in_loss=True, diagnostics=False)
        losses[est] = float(trainer._compute_loss(trainer.model, batch).detach())
    assert len({round(v, 7) for v in losses.values()}) == 3


@pytest.mark.slow
def test_diagnostics_are_logged_also_with_beta_zero(trainer_and_batch, monkeypatch):
    """Measured in TRL's loss forward (no extra policy pass), or at generation as under Unsloth: the same numbers."""
    trainer, _ = trainer_and_batch
    trainer.beta, trainer.kl, trainer.loss_type = 0.0, KLSettings(diagnostics=True), "grpo"
    rows = [trainer.train_dataset[i] for i in range(2) for _ in range(trainer.num_generations)]
    logged = {}
    for where in ("loss", "generation"):
        monkeypatch.setattr(type(trainer), "_loss_is_trls", lambda self, w=where: w == "loss")
        trainer._metrics["train"].clear()
        torch.manual_seed(3)
        batch = trainer._generate_and_score_completions(rows)
        assert trainer._kl_at_loss == (where == "loss")
        trainer._compute_loss(trainer.model, batch)
        trainer.kl.flush(trainer._metrics["train"])
        logged[where] = {k: v for k, v in trainer._metrics["train"].items() if k.startswith("kl/")}
    for values in logged.values():
        assert values.keys() == {"kl/k1", "kl/k2", "kl/k3"} and all(len(v) == 1 for v in values.values())
        assert values["kl/k3"][0] > 0 and values["kl/k2"][0] > 0
    for key in ("kl/k1", "kl/k2", "kl/k3"):
        assert logged["loss"][key][0] == pytest.approx(logged["generation"][key][0], rel=1e-4, abs=1e-7)


@pytest.mark.slow
def test_loss_term_is_logged_as_coefficient_times_token_mean_kl(trainer_and_batch):
    """`kl/loss_term` is coef x the step's token-mean KL, whatever gradient accumulation divides the loss by."""
    trainer, batch = trainer_and_batch
    trainer.loss_type, trainer.beta = "grpo", 0.0
    trainer.kl = KLSettings(estimator="k2", coef=0.3, in_loss=True, diagnostics=False)
    trainer.current_gradient_accumulation_steps = 4
    try:
        halves = [{k: (v[i::2] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in batch.items()} for i in (0, 1)]
        for half in halves:
            trainer._compute_loss(trainer.model, half)
    finally:
        trainer.current_gradient_accumulation_steps = 1
    metrics = __import__("collections").defaultdict(list)
    trainer.kl.flush(metrics)
    with torch.no_grad():
        logps = trainer._policy_logps(batch)
    mask = batch["completion_mask"]
    expected = 0.3 * float((per_token("k2", logps, batch["ref_per_token_logps"]) * mask).sum() / mask.sum())
    assert metrics["kl/loss_term"] == [pytest.approx(expected, rel=1e-4)]


def test_adaptive_controller_moves_the_coefficient_toward_the_target():
    trainer = SimpleNamespace(kl=KLSettings(coef=0.1, in_loss=True, target=0.05, horizon=100), beta=0.0, _metrics={"train": {}})
    trainer._metrics["train"] = __import__("collections").defaultdict(list)
    ctl = AdaptiveKL()
    ctl.bind(trainer)
    args = SimpleNamespace(per_device_train_batch_size=8, gradient_accumulation_steps=1, world_size=1)
    trainer.kl.observe(0.5)  # far above target: clipped error +0.2 -> coef * (1 + 0.2 * 8 / 100)
    ctl.on_step_end(args, None, None)
    assert trainer.kl.coef == pytest.approx(0.1 * 1.016)
    trainer.kl.observe(0.0)  # below target: error -0.2
    ctl.on_step_end(args, None, None)
    assert trainer.kl.coef == pytest.approx(0.1 * 1.016 * 0.984)
    assert trainer._metrics["train"]["kl/coef"] == pytest.approx([0.1, 0.1016])
    fresh = AdaptiveKL()
    other = SimpleNamespace(kl=KLSettings(coef=0.1, in_loss=True), beta=0.0, _metrics=trainer._metrics)
    fresh.bind(other)
    fresh.load_state_dict(ctl.state_dict())
    assert other.kl.coef == pytest.approx(trainer.kl.coef)


def test_backend_rules():
    base = {"name": "x", "kl": {"coef": 0.1, "estimator": "k2"}}
    with pytest.raises(ConfigError, match="kl.estimator k2 needs the transformers backend"):
        prepare(validate({**base, "model": {"backend": "unsloth"}}), cuda=True)
    with pytest.raises(ConfigError, match="use_adaptive_entropy is silently dropped by Unsloth"):
        prepare(validate({"name": "x", "model": {"backend": "unsloth"}, "trainer": {"use_adaptive_entropy": True}}), cuda=True)
    unsloth_k3 = validate({"name": "x", "kl": {"coef": 0.1}, "model": {"backend": "unsloth"}})
    assert kl_settings(unsloth_k3, "unsloth").in_loss is False
    assert kl_settings(validate(base), "transformers") == KLSettings(estimator="k2", coef=0.1, in_loss=True, every=2)


def test_diagnostics_alone_run_every_n_steps_and_whatever_needs_them_every_step():
    alone = KLSettings(diagnostics=True, every=2)
    assert [alone.due(step) for step in range(1, 6)] == [True, False, True, False, True]
    assert all(KLSettings(every=3, in_loss=True, coef=0.1).due(step) for step in range(1, 6))
    assert all(KLSettings(every=3, target=0.05).due(step) for step in range(1, 6))
    assert all(KLSettings(every=1).due(step) for step in range(1, 6))
