"""training_with_unsloth/controls/curriculum.py and train_source.py: phases, linear schedules, fetch-time rows, state."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest

import tasks
from training_with_unsloth.config import CurriculumConfig, ReplayConfig
from training_with_unsloth.controls.scored_batch import ScoredBatch
from training_with_unsloth.controls.train_source import PHASE, REPLAYED, build_train_source
from training_with_unsloth.errors import ConfigError

NG = 4  # num_generations in these tests
SMALL = {"train_size": 200, "eval_size": 10}


def countdown_curriculum(window: int = 3, threshold: float = 0.6, **rule) -> CurriculumConfig:
    advance = {"window": window, "threshold": threshold, **rule}
    return CurriculumConfig.model_validate(
        {"phases": [{"params": {"num_count": n}, "advance": advance} for n in (3, 4, 5)] + [{"params": {"num_count": 6}}]}
    )


def fake_trainer() -> SimpleNamespace:
    return SimpleNamespace(_metrics={"train": defaultdict(list)}, args=SimpleNamespace(dataloader_num_workers=0))


def state(step: int, max_steps: int = 100) -> SimpleNamespace:
    return SimpleNamespace(global_step=step, max_steps=max_steps)


def scored(source, indices, correct, step: int = 1) -> ScoredBatch:
    """A generation batch as TRL makes it: each index fetched NG times in one fetch.

    ``correct(group, k, row)`` says whether completion k of group ``group`` is right (then it is the
    task's gold answer and gets reward 1, else a wrong answer with reward 0).
    """
    ds_rows = source.rows_for([i for i in indices for _ in range(NG)])
    completions, rewards = [], []
    for n, row in enumerate(ds_rows):
        ok = correct(n // NG, n % NG, row)
        task = source.task_for(row[PHASE])
        completions.append(task.gold(row) if ok else "no idea")
        rewards.append(1.0 if ok else 0.0)
    return ScoredBatch(
        step=step,
        rows=ds_rows,
        completions=completions,
        rewards={"r": rewards},
        weights=[1.0],
        advantages=[0.0] * len(ds_rows),
        num_generations=NG,
    )


def rate(p: float):
    """Completions correct at rate ``p`` (exactly, per batch of 10 groups x 4)."""
    cut = round(p * 40)
    return lambda g, k, row: g * NG + k < cut


@pytest.fixture()
def countdown_source():
    ds, source = build_train_source("countdown", SMALL, countdown_curriculum(), ReplayConfig(), seed=7, max_steps=100)
    source.bind(fake_trainer())
    return ds, source


def test_phase_advances_exactly_when_window_full_and_above_threshold(countdown_source):
    _, source = countdown_source
    idx = list(range(10))
    for _ in range(2):
        source.on_scored_batch(scored(source, idx, rate(1.0)))
        assert source.phase == 0  # the window (3) is not full yet
    source.on_scored_batch(scored(source, idx, rate(1.0)))
    assert source.phase == 1 and len(source.window) == 0
    assert source.transitions[-1]["phase"] == 1

    for _ in range(3):
        source.on_scored_batch(scored(source, idx, rate(0.5)))
    assert source.phase == 1  # full, but 0.5 < 0.6
    source.on_scored_batch(scored(source, idx, rate(0.8)))  # window 0.5 0.5 0.8: mean 0.6
    assert source.phase == 2

    for _ in range(3):
        source.on_scored_batch(scored(source, idx, rate(1.0)))
    assert source.phase == 3  # the last phase: no advance rule, stays
    for _ in range(5):
        source.on_scored_batch(scored(source, idx, rate(1.0)))
    assert source.phase == 3


def test_late_batches_of_an_earlier_phase_do_not_count(countdown_source):
    _, source = countdown_source
    stale = scored(source, range(10), rate(1.0))  # fetched in phase 0
    for _ in range(3):
        source.on_scored_batch(scored(source, range(10), rate(1.0)))
    assert source.phase == 1
    for _ in range(5):
        source.on_scored_batch(stale)  # phase-0 rows arriving after the advance (the loader fetches ahead)
    assert source.phase == 1 and len(source.window) == 0


def test_rows_come_from_the_current_phase():
    ds, source = build_train_source(
        "countdown", SMALL, countdown_curriculum(window=1, threshold=0.5), ReplayConfig(), seed=3, max_steps=10
    )
    for phase in range(4):
        assert source.phase == phase
        rows = ds[list(range(50))]
        assert {len(n) for n in rows["nums"]} == {3 + phase}
        assert set(rows[PHASE]) == {phase} and set(rows[REPLAYED]) == {False}
        source.on_scored_batch(scored(source, range(10), rate(1.0)))
    # Columns are the task's plus the two added ones, in every phase.
    assert set(rows) == {"prompt", "nums", "target", "solution", "problem_id", "prompt_format", "allow_div", REPLAYED, PHASE}


def test_same_index_same_row_within_a_version(countdown_source):
    ds, _ = countdown_source
    batch = ds.__getitems__([5, 5, 5, 5, 9, 9, 9, 9, 5, 5])
    assert all(r == batch[0] for r in batch[:4] + batch[8:])
    assert all(r == batch[4] for r in batch[4:8])
    assert ds.__getitems__([5])[0] == batch[0]
    assert ds[5] == batch[0]


def test_reward_success_mode():
    _, source = build_train_source(
        "countdown",
        SMALL,
        countdown_curriculum(window=2, threshold=1.0, success="reward", min_reward=0.5),
        ReplayConfig(),
        seed=1,
        max_steps=10,
    )
    source.on_scored_batch(scored(source, range(10), rate(1.0)))
    source.on_scored_batch(scored(source, range(10), rate(0.9)))
    assert source.phase == 0  # mean 0.95 < 1.0
    source.on_scored_batch(scored(source, range(10), rate(1.0)))
    source.on_scored_batch(scored(source, range(10), rate(1.0)))
    assert source.phase == 1


def test_metrics_are_logged_every_step(countdown_source):
    _, source = countdown_source
    trainer = fake_trainer()
    source.bind(trainer)
    source.on_scored_batch(scored(source, range(10), rate(0.5)))
    source.on_step_end(None, state(1), None)
    source.on_step_end(None, state(2), None)  # a step without a batch still logs the phase
    m = trainer._metrics["train"]
    assert m["curriculum/phase"] == [0.0, 0.0]
    assert m["curriculum/success_rate"] == [0.5, 0.5]
    assert not any(k.startswith("replay/") for k in m)


def test_linear_schedule_rebuilds_and_rounds_ints():
    cur = CurriculumConfig.model_validate({"linear": [{"param": "max_operand", "start": 9, "end": 99}]})
    ds, source = build_train_source("small_sums", SMALL, cur, ReplayConfig(), seed=0, max_steps=10)
    trainer = fake_trainer()
    source.bind(trainer)
    source.on_train_begin(None, state(0, 10), None)
    first = ds[list(range(100))]
    assert max(max(int(t) for t in pid.split("+")) for pid in first["problem_id"]) <= 9
    v0 = source.version
    source.on_step_end(None, state(5, 10), None)
    assert source.values == {"max_operand": 54} and isinstance(source.values["max_operand"], int)
    assert source.version > v0
    later = ds[list(range(200))]
    assert max(max(int(t) for t in pid.split("+")) for pid in later["problem_id"]) > 9
    source.on_step_end(None, state(10, 10), None)
    assert source.values == {"max_operand": 99}
    assert trainer._metrics["train"]["curriculum/max_operand"] == [54.0, 99.0]
    assert "curriculum/phase" not in trainer._metrics["train"]  # no phases configured


def test_progress_reaches_the_phase_task():
    cur = CurriculumConfig.model_validate(
        {"phases": [{"params": {"num_count": 3}, "advance": {"window": 1, "threshold": 0.5}}, {"params": {"num_count": 4}}]}
    )
    ds, source = build_train_source("countdown", {**SMALL, "mix_oneshot": True}, cur, ReplayConfig(), seed=0, max_steps=10)
    source.on_train_begin(None, state(0, 10), None)
    assert set(ds[list(range(50))]["prompt_format"]) == {"one_shot"}
    source.on_scored_batch(scored(source, range(10), rate(1.0)))
    assert source.phase == 1
    source.on_step_end(None, state(10, 10), None)
    rows = ds[list(range(50))]
    assert set(rows["prompt_format"]) == {"zero_shot"} and {len(n) for n in rows["nums"]} == {4}


def test_eval_problems_are_never_served():
    # A phase whose own eval split differs from the base task's: its train set can hold base eval problems.
    cur = CurriculumConfig.model_validate({"phases": [{"params": {"eval_size": 3}}]})
    base = {"max_operand": 5, "train_size": 300, "eval_size": 12}
    ds, source = build_train_source("small_sums", base, cur, ReplayConfig(), seed=0, max_steps=10)
    _, eval_ds = tasks.get("small_sums", **base).build(0)
    eval_ids = set(eval_ds["problem_id"])
    assert any(pid in eval_ids for pid in source.train_set["problem_id"])  # the phase's own set overlaps
    served = set(ds[list(range(len(ds)))]["problem_id"])
    assert served and not served & eval_ids


@pytest.mark.parametrize(
    "cur, message",
    [
        ({"linear": [{"param": "max_opernd", "start": 1, "end": 2}]}, "did you mean"),
        ({"phases": [{"params": {"max_operand": 5}}], "linear": [{"param": "max_operand", "start": 9, "end": 20}]}, "both"),
        ({"phases": [{"params": {"num_terms": 99}}]}, "curriculum.phases[0]"),
        ({"linear": [{"param": "max_operand", "start": 9, "end": -5}]}, "curriculum (with {'max_operand': -5})"),
    ],
)
def test_config_errors_are_one_line(cur, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_train_source("small_sums", SMALL, CurriculumConfig.model_validate(cur), ReplayConfig(), seed=0, max_steps=10)


def test_state_round_trip_continues_from_the_restored_phase(countdown_source):
    ds, source = countdown_source
    for _ in range(3):
        source.on_scored_batch(scored(source, range(10), rate(1.0)))
    source.on_scored_batch(scored(source, range(10), rate(0.5)))
    assert source.phase == 1

    saved = json.loads(json.dumps(source.state_dict()))
    ds2, restored = build_train_source("countdown", SMALL, countdown_curriculum(), ReplayConfig(), seed=7, max_steps=100)
    restored.load_state_dict(saved)
    assert restored.phase == 1 and list(restored.window) == [0.5]
    indices = list(range(0, len(ds), 7))
    assert ds2[indices] == ds[indices]
    assert {len(n) for n in ds2[indices]["nums"]} == {4}
    # ... and it keeps advancing the same way.
    for s in (source, restored):
        s.on_scored_batch(scored(s, range(10), rate(1.0)))
        s.on_scored_batch(scored(s, range(10), rate(1.0)))
    assert source.phase == restored.phase == 2
    assert ds2[indices] == ds[indices]


def test_dataloader_with_repeat_sampler(countdown_source):
    import torch
    from trl.trainer.utils import RepeatSampler

    ds, source = countdown_source
    prompts_per_batch = 6
    sampler = RepeatSampler(ds, mini_repeat_count=NG, batch_size=prompts_per_batch, repeat_count=2, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=prompts_per_batch * NG, sampler=sampler, collate_fn=lambda x: x)
    for n, batch in enumerate(loader):
        assert len(batch) == prompts_per_batch * NG
        for g in range(prompts_per_batch):
            group = batch[g * NG : (g + 1) * NG]
            assert all(r == group[0] for r in group)
            assert len(group[0]["nums"]) == 3 + source.phase
        source.on_scored_batch(
            ScoredBatch(
                step=n + 1,
                rows=batch,
                completions=[source.task.gold(r) for r in batch],
                rewards={"r": [1.0] * len(batch)},
                weights=[1.0],
                advantages=[0.0] * len(batch),
                num_generations=NG,
            )
        )
        if n == 12:
            break
    assert source.phase == 3  # advanced every 3 batches of full success


def test_worker_processes_are_refused(tmp_path):
    from training_with_unsloth.config import validate
    from training_with_unsloth.plan import prepare

    from .helpers import tiny_config

    raw = tiny_config(tmp_path, tmp_path, **{"trainer.dataloader_num_workers": 2})
    raw["task"] = {"name": "arithmetic"}
    raw["curriculum"] = {"phases": [{"params": {"max_operand": 9}}]}
    with pytest.raises(ConfigError, match="dataloader_num_workers"):
        prepare(validate(raw), cuda=False)


@pytest.mark.slow
def test_trains_and_resumes_with_the_real_trainer(tmp_path, tiny_model_dir):
    """A few CPU steps of ResearchGRPOTrainer on the fetch-time dataset, a checkpoint, and a resume."""
    from training_with_unsloth.assembly import build_grpo_config, build_trainer
    from training_with_unsloth.config import validate
    from training_with_unsloth.models import backends
    from training_with_unsloth.plan import prepare
    from training_with_unsloth.rundir import RunDir

    from .helpers import tiny_config

    phases = [
        {"params": {"max_operand": 9}, "advance": {"window": 1, "threshold": 0.0, "success": "reward", "min_reward": -99}},
        {"params": {"max_operand": 40}, "advance": {"window": 1, "threshold": 0.0, "success": "reward", "min_reward": -99}},
        {"params": {"max_operand": 300}},
    ]
    raw = tiny_config(tmp_path, tiny_model_dir, **{"trainer.max_completion_length": 4, "curriculum.phases": phases})
    raw["replay"] = {"enabled": True, "mix": 0.5}
    cfg = validate(raw)
    prep = prepare(cfg, cuda=False)
    backends.prepare("transformers")
    import rewards
    from training_with_unsloth.controls import ResearchCallback
    from training_with_unsloth.resume import RESEARCH_STATE_FILE

    funcs, weights = rewards.build(prep.reward_specs)
    run = RunDir(tmp_path / "run")
    args = build_grpo_config(cfg, run, weights, cuda=False)

    class Recorder:
        def __init__(self):
            self.batches = []

        def on_scored_batch(self, batch):
            self.batches.append(batch)

    def trainer_for(source, recorder):
        loaded = backends.load(cfg.model, "transformers", seed=cfg.seed, gradient_checkpointing=False)

        class Hook(ResearchCallback):
            def on_scored_batch(self, batch):
                recorder.on_scored_batch(batch)

        return build_trainer(
            prep,
            run,
            args=args,
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            peft_config=loaded.peft_config,
            train_ds=ds,
            reward_funcs=funcs,
            reward_weights=weights,
            callbacks=[source, Hook()],
        )

    ds, source = build_train_source(
        cfg.task.name, cfg.task.params, cfg.curriculum, cfg.replay, seed=cfg.seed, max_steps=cfg.max_steps
    )
    recorder = Recorder()
    trainer = trainer_for(source, recorder)
    trainer.train()
    assert len(recorder.batches) == 4
    for batch in recorder.batches:
        for group in batch.groups():
            assert all(batch.rows[i] == batch.rows[group.start] for i in group)
    phases_seen = [[r["curriculum_phase"] for r in b.rows] for b in recorder.batches]
    assert phases_seen[0] == [0] * 4 and max(max(p) for p in phases_seen) >= 1
    assert source.phase == 2
    logged = [h for h in trainer.state.log_history if "curriculum/phase" in h]
    assert [h["curriculum/phase"] for h in logged][-1] == 2.0 and "replay/buffer_size" in logged[-1]

    saved = json.loads((run.trainer / "checkpoint-2" / RESEARCH_STATE_FILE).read_text())["train_source"]
    ds, resumed = build_train_source(
        cfg.task.name, cfg.task.params, cfg.curriculum, cfg.replay, seed=cfg.seed, max_steps=cfg.max_steps
    )
    recorder2 = Recorder()
    trainer2 = trainer_for(resumed, recorder2)
    trainer2.train(resume_from_checkpoint=str(run.trainer / "checkpoint-2"))
    assert len(recorder2.batches) == 2
    fresh = [r["curriculum_phase"] for b in recorder2.batches for r in b.rows if not r["replayed"]]
    assert fresh and min(fresh) >= saved["phase"]  # fetches continue from the restored phase
    assert resumed.phase == 2
