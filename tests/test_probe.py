"""The LLC probe is built the way the run's training saw completions: budget, end token, sampler, chat template."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import torch
import yaml

from analysis.llc_estimator import Settings
from analysis.per_checkpoint import Context, load_model
from analysis.probe import build_probe
from analysis.run_probe import run_probe
from analysis.runs import open_run

PROMPTS = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "user", "content": "What is 13 + 29?"}]]
LONG = " ".join(str(i) for i in range(100, 160))  # well over 64 tokens
MARKER_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if probe_marker %}MARKER-SET\n{% endif %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def make_run(untrained_run_dir, tmp_path):
    """A copy of the (untrained) tiny run with `trainer:` keys changed (None removes a key); returns (run, cfg)."""
    from training_with_unsloth.yaml_reader import yaml_load

    count = iter(range(100))

    def make(**trainer: Any):
        dst = tmp_path / f"run{next(count)}"
        shutil.copytree(untrained_run_dir, dst)
        raw = yaml_load((dst / "config.yaml").read_text())
        for key, value in trainer.items():
            if value is None:
                raw["trainer"].pop(key, None)
            else:
                raw["trainer"][key] = value
        (dst / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        run = open_run(dst, checkpoints=True)
        return run, run.validated()

    return make


def probe_for(run, model, tokenizer, settings):
    """The run's probe for `settings`, built with an already-loaded model."""
    return run_probe(Context(run, "cpu", loaded=(model, tokenizer)), settings)


def targets(probe, i: int) -> list[int]:
    """The token ids row i scores (target positions start..end predict tokens start+1..end)."""
    start, end = probe.spans[i]
    return probe.input_ids[i, start + 1 : end + 1].tolist()


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_cut_completions_get_no_end_token(tok):
    long = ids(tok, LONG)
    assert len(long) > 80
    probe = build_probe(tok, PROMPTS, [LONG, "42"], max_completion_tokens=80)
    assert targets(probe, 0) == long[:80]  # cut at the budget: no eos
    assert targets(probe, 1) == [*ids(tok, "42"), tok.eos_token_id]
    assert probe.ended == [False, True]

    # the end token counts against the budget, as in training: exactly `budget` tokens leave it no room
    exact = tok.decode(long[:10])
    assert ids(tok, exact) == long[:10]
    probe = build_probe(tok, PROMPTS, [exact, tok.decode(long[:9])], max_completion_tokens=10)
    assert targets(probe, 0) == long[:10] and targets(probe, 1) == [*long[:9], tok.eos_token_id]
    assert probe.ended == [False, True]


def test_probe_loss_scores_cut_and_ended_rows_exactly(tok, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    probe = build_probe(tok, PROMPTS, [LONG, "42"], max_completion_tokens=70)
    per_token = probe.loss_fn()(model, probe.input_ids)
    for i, (start, end) in enumerate(probe.spans):
        row = probe.input_ids[i, : end + 1]
        with torch.no_grad():
            logits = model(row[None]).logits[0, :-1]
        ce = torch.nn.functional.cross_entropy(logits[start:end], row[start + 1 : end + 1])
        torch.testing.assert_close(per_token[i].mean(), ce, rtol=1e-4, atol=1e-5)
    assert probe.spans[0][1] - probe.spans[0][0] == 70  # 70 completion tokens, no end token
    assert probe.spans[1][1] - probe.spans[1][0] == len(ids(tok, "42")) + 1


def test_reference_probe_uses_the_runs_completion_length(make_run, monkeypatch, tok):
    import tasks

    long = ids(tok, LONG)
    settings = Settings(num_probes=2, batch_size=2, probe="reference")
    run, cfg = make_run(max_completion_length=100)
    monkeypatch.setattr(type(tasks.get(cfg.task.name, **cfg.task.params)), "gold", lambda self, row: LONG)
    model, tokenizer = load_model(cfg, "cpu")
    probe = probe_for(run, model, tokenizer, settings)
    assert len(long) > 100
    assert all(targets(probe, i) == long[:100] for i in range(2))  # not 64, and no eos after a cut
    assert probe.ended == [False, False]

    from analysis.probe import grpo_defaults

    run, cfg = make_run(max_completion_length=None)  # absent: TRL's default budget
    assert grpo_defaults(["max_completion_length"])["max_completion_length"] > len(long)
    probe = probe_for(run, model, tokenizer, settings)
    assert all(targets(probe, i) == [*long, tok.eos_token_id] for i in range(2))
    assert probe.ended == [True, True]


@pytest.fixture
def processors(monkeypatch):
    """The logits processors each `generate` call builds (after merging with the model's generation_config)."""
    from transformers.generation.utils import GenerationMixin

    seen: list[list] = []
    real = GenerationMixin._get_logits_processor

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen.append(list(out))
        return out

    monkeypatch.setattr(GenerationMixin, "_get_logits_processor", spy)
    return seen


@pytest.mark.slow
def test_rollouts_sample_with_the_runs_sampler_not_the_models_defaults(make_run, processors):
    from transformers.generation import logits_process as lp

    settings = Settings(num_probes=2, batch_size=2, probe="rollouts", probe_from=(4,))
    run, cfg = make_run(max_completion_length=4, temperature=0.7)
    model, tokenizer = load_model(cfg, "cpu")
    gen = model.generation_config  # the model's own defaults, as Qwen ships them (top_k 20, top_p 0.8, ...) but harsher
    gen.top_k, gen.top_p, gen.repetition_penalty = 1, 0.1, 2.0
    probe_for(run, model, tokenizer, settings)
    (used,) = processors
    kinds = {type(p) for p in used}
    assert not kinds & {lp.TopKLogitsWarper, lp.TopPLogitsWarper, lp.RepetitionPenaltyLogitsProcessor}, used
    (temp,) = [p for p in used if isinstance(p, lp.TemperatureLogitsWarper)]
    assert temp.temperature == pytest.approx(0.7)

    processors.clear()
    run, cfg = make_run(
        max_completion_length=4, top_k=5, top_p=0.9, repetition_penalty=1.3, generation_kwargs={"no_repeat_ngram_size": 2}
    )
    probe_for(run, model, tokenizer, settings)
    (used,) = processors
    by_kind = {type(p): p for p in used}
    assert by_kind[lp.TopKLogitsWarper].top_k == 5 and by_kind[lp.TopPLogitsWarper].top_p == pytest.approx(0.9)
    assert by_kind[lp.RepetitionPenaltyLogitsProcessor].penalty == pytest.approx(1.3)
    assert lp.NoRepeatNGramLogitsProcessor in by_kind and lp.TemperatureLogitsWarper not in by_kind  # TRL's 1.0


class FakeGenerate:
    """Stands in for `model.generate`: row 0 stops on eos after two tokens, the others run to the budget."""

    def __init__(self, tok, token: int):
        self.tok, self.token, self.calls = tok, token, []

    def __call__(self, input_ids=None, attention_mask=None, generation_config=None, **kwargs):
        budget = kwargs.get("max_new_tokens") or generation_config.max_new_tokens
        self.calls.append(input_ids.clone())
        rows = [[self.token] * budget for _ in range(input_ids.shape[0])]
        rows[0] = [self.token, self.token, self.tok.eos_token_id] + [self.tok.pad_token_id] * (budget - 3)
        return torch.cat([input_ids, torch.tensor(rows, dtype=torch.long)], dim=1)


def test_rollouts_keep_where_each_completion_ended(make_run, monkeypatch, tok):
    settings = Settings(num_probes=2, batch_size=2, probe="rollouts", probe_from=(4,))
    run, cfg = make_run(max_completion_length=5)
    model, tokenizer = load_model(cfg, "cpu")
    token = ids(tok, "x")[0]
    fake = FakeGenerate(tok, token)
    monkeypatch.setattr(model, "generate", fake)

    # a rollouts file from before `ended` was recorded is resampled, not trusted
    path = run.analysis / f"probe-rollouts-{run.adapter_steps()[-1]}-n2-d0.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    prompts = _eval_prompts(cfg, 2)
    path.write_text("".join(json.dumps({"step": 4, "prompt": p, "completion": "x"}) + "\n" for p in prompts))

    probe = probe_for(run, model, tokenizer, settings)
    assert len(fake.calls) == 1
    assert targets(probe, 0) == [token, token, tok.eos_token_id]  # stopped on eos: the eos is scored
    assert targets(probe, 1) == [token] * 5  # ran to max_new_tokens: no eos appended
    assert probe.ended == [True, False]
    saved = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["ended"] for r in saved] == [True, False]
    assert [r["completion_ids"] for r in saved] == [[token, token], [token] * 5]

    again = probe_for(run, model, tokenizer, settings)  # the new file is reused as is
    assert len(fake.calls) == 1 and torch.equal(again.input_ids, probe.input_ids) and again.ended == probe.ended


def _eval_prompts(cfg, n: int) -> list:
    import tasks

    task = tasks.get(cfg.task.name, **cfg.task.params)
    return [r["prompt"] for r in list(task.build(cfg.seed)[1])[:n]]


def test_chat_template_kwargs_reach_the_template(make_run, monkeypatch, tok):
    settings = Settings(num_probes=2, batch_size=2, probe="reference")
    run, cfg = make_run(max_completion_length=5, chat_template_kwargs={"probe_marker": True})
    model, tokenizer = load_model(cfg, "cpu")
    tokenizer.chat_template = MARKER_TEMPLATE
    marker = "MARKER-SET"
    assert marker not in tokenizer.apply_chat_template(PROMPTS[0], tokenize=False, add_generation_prompt=True)

    probe = probe_for(run, model, tokenizer, settings)
    for i, (start, _) in enumerate(probe.spans):
        prompt = tokenizer.decode(probe.input_ids[i, : start + 1])
        assert marker in prompt and prompt.endswith("<|im_start|>assistant\n")  # add_generation_prompt

    fake = FakeGenerate(tok, ids(tok, "x")[0])
    monkeypatch.setattr(model, "generate", fake)
    probe_for(run, model, tokenizer, Settings(num_probes=2, batch_size=2, probe="rollouts", probe_from=(4,)))
    (sent,) = fake.calls
    assert all(marker in tokenizer.decode(row, skip_special_tokens=True) for row in sent)
