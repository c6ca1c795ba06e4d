"""training_with_unsloth/controls/__init__.py: the research-callback protocol, the declared order, and `callbacks:` from YAML."""

from __future__ import annotations

import json
import textwrap

import pytest

from training_with_unsloth.config import validate
from training_with_unsloth.errors import ConfigError

from .helpers import tiny_config

USER_MODULE = '''
from training_with_unsloth.controls import ResearchCallback


class CountBatches(ResearchCallback):
    """Counts scored batches and completions; logs the count; keeps it across resumes."""

    state_key = "count_batches"

    def __init__(self, run, label="n", scale=1):
        self.run, self.label, self.scale = run, label, scale
        self.batches = self.completions = 0

    def on_scored_batch(self, batch):
        self.batches += 1
        self.completions += len(batch.completions)

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._metrics["train"][f"user/{self.label}"].append(float(self.batches * self.scale))

    def state_dict(self):
        return {"batches": self.batches, "completions": self.completions}

    def load_state_dict(self, state):
        self.batches, self.completions = state["batches"], state["completions"]


class NotAControl:
    pass
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_controls.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_controls"


def _cfg(tmp_path, model_dir, callbacks):
    raw = tiny_config(tmp_path, model_dir)
    raw["callbacks"] = callbacks
    return validate(raw)


def test_callbacks_section_is_validated(tmp_path):
    with pytest.raises(ConfigError, match="callbacks"):
        _cfg(tmp_path, tmp_path, [{"name": "no_colon_here"}])
    with pytest.raises(ConfigError, match="unknown key 'callbacks.0.parms'"):
        _cfg(tmp_path, tmp_path, [{"name": "a.b:C", "parms": {}}])


def test_user_callback_classes_are_checked_before_training(tmp_path, user_module):
    from training_with_unsloth.controls import check_user_callback

    check_user_callback(f"{user_module}:CountBatches", {"label": "x", "scale": 2})
    cases = {
        "nowhere_module_xyz:Thing": "cannot import 'nowhere_module_xyz'",
        f"{user_module}:Missing": "has no 'Missing'",
        f"{user_module}:NotAControl": "not a subclass of training_with_unsloth.controls.ResearchCallback",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message) as err:
            check_user_callback(path, {})
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="params"):
        check_user_callback(f"{user_module}:CountBatches", {"colour": "red"})


def test_dry_run_names_the_users_controls_and_refuses_a_bad_one(tmp_path, tiny_model_dir, user_module, capsys):
    from training_with_unsloth.experiment import run_experiment

    cfg = _cfg(tmp_path, tiny_model_dir, [{"name": f"{user_module}:CountBatches", "params": {"scale": 3}}])
    assert run_experiment(cfg, dry_run=True) is None
    assert f"callbacks  {user_module}:CountBatches {{'scale': 3}}" in capsys.readouterr().out
    bad = _cfg(tmp_path, tiny_model_dir, [{"name": f"{user_module}:NotAControl"}])
    with pytest.raises(ConfigError, match="NotAControl"):
        run_experiment(bad, dry_run=True)


def test_a_duck_typed_callback_is_refused():
    from transformers import TrainerCallback

    from training_with_unsloth.controls import ResearchCallback, check_protocol

    class Duck(TrainerCallback):
        def on_scored_batch(self, batch):
            pass

    with pytest.raises(TypeError, match="does not derive from training_with_unsloth.controls.ResearchCallback"):
        check_protocol(Duck())
    check_protocol(TrainerCallback())
    assert not ResearchCallback().wants_batches


def test_research_callbacks_run_in_the_declared_order(tmp_path, tiny_model_dir, user_module):
    from training_with_unsloth.models import backends
    from training_with_unsloth.plan import prepare
    from training_with_unsloth.rundir import RunDir

    backends.prepare("transformers")
    from training_with_unsloth.assembly import research_callbacks

    raw = tiny_config(tmp_path, tiny_model_dir, **{"kl.coef": 0.1, "logging.completions": 2})
    raw["callbacks"] = [{"name": f"{user_module}:CountBatches"}]
    cfg = validate(raw)
    prep = prepare(cfg, cuda=False)
    train_ds, eval_ds = prep.task.build(cfg.seed)
    names = [type(cb).__name__ for cb in research_callbacks(prep, RunDir(tmp_path / "r"), eval_ds, [], [], 8)]
    assert names == [
        "TimingLog",
        "AdaptiveKL",
        "MetricsLogger",
        "TaskProgress",
        "CompactProgress",
        "PassKCallback",
        "AdapterCheckpoints",
        "BestCheckpoint",
        "CompletionLog",
        "CountBatches",
        "LivePlots",
        "TimingSummary",
    ]


@pytest.mark.slow
def test_a_users_control_sees_batches_logs_and_keeps_its_state(tmp_path, tiny_model_dir, user_module):
    from training_with_unsloth.experiment import run_experiment
    from training_with_unsloth.resume import RESEARCH_STATE_FILE

    raw = tiny_config(tmp_path, tiny_model_dir, **{"eval.enabled": False, "logging.plots": False})
    raw["callbacks"] = [{"name": f"{user_module}:CountBatches", "params": {"label": "seen", "scale": 2}}]
    run = run_experiment(validate(raw))
    train = [r for r in run.read_metrics() if r["kind"] == "train"]
    assert [r["user/seen"] for r in train] == [2.0, 4.0, 6.0, 8.0]
    state = json.loads((run.trainer / "checkpoint-2" / RESEARCH_STATE_FILE).read_text())
    assert state["count_batches"] == {"batches": 2, "completions": 8}
