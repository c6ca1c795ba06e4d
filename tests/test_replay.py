"""training_with_unsloth/controls/replay.py through the TrainSource: buffer, mix, drop_solved, metrics and state."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from types import SimpleNamespace

from training_with_unsloth.config import CurriculumConfig, ReplayConfig
from training_with_unsloth.controls.scored_batch import ScoredBatch
from training_with_unsloth.controls.train_source import PHASE, REPLAYED, build_train_source

NG = 4
PARAMS = {"max_operand": 99, "train_size": 300, "eval_size": 10}


def make(seed: int = 0, **replay):
    ds, source = build_train_source(
        "small_sums", PARAMS, CurriculumConfig(), ReplayConfig(enabled=True, **replay), seed=seed, max_steps=100
    )
    trainer = SimpleNamespace(_metrics={"train": defaultdict(list)}, args=SimpleNamespace(dataloader_num_workers=0))
    source.bind(trainer)
    return ds, source, trainer


def scored(rows_per_group, correct, step: int = 1) -> ScoredBatch:
    """Completions of each group: ``correct(g, k)`` says whether completion k of group g is right."""
    rows, completions, rewards = [], [], []
    for g, row in enumerate(rows_per_group):
        for k in range(NG):
            ok = correct(g, k)
            rows.append(row)
            completions.append(str(row["answer"]) if ok else "no")
            rewards.append(1.0 if ok else 0.0)
    return ScoredBatch(step, rows, completions, {"r": rewards}, [1.0], [0.0] * len(rows), NG)


def half(g, k):  # every group has reward variance
    return k < 2


def fetch(ds, indices):
    """One fetch as TRL makes it: every index NG times in a row; returns one row per index."""
    rows = ds.__getitems__([i for i in indices for _ in range(NG)])
    groups = [rows[n : n + NG] for n in range(0, len(rows), NG)]
    assert all(all(r == g[0] for r in g) for g in groups)
    return [g[0] for g in groups]


def test_only_groups_with_variance_enter_the_buffer():
    ds, source, _ = make()
    rows = fetch(ds, range(12))
    # groups 0-3 all right, 4-7 all wrong, 8-11 mixed
    source.on_scored_batch(scored(rows, lambda g, k: g < 4 or (g >= 8 and k == 0)))
    assert [r["problem_id"] for r in source.buffer] == [r["problem_id"] for r in rows[8:]]
    assert all(REPLAYED not in r for r in source.buffer)


def test_mix_share_and_replayed_rows():
    ds, source, _ = make(mix=0.25)
    rows = fetch(ds, range(20))
    source.on_scored_batch(scored(rows, half))
    assert len(source.buffer) == 20
    served = fetch(ds, range(len(ds))) + fetch(ds, range(len(ds)))
    share = sum(r[REPLAYED] for r in served) / len(served)
    assert abs(share - 0.25) < 0.04
    buffered = {r["problem_id"] for r in source.buffer}
    assert all(r["problem_id"] in buffered for r in served if r[REPLAYED])
    assert all(set(r) == set(served[0]) for r in served)  # same columns for fresh and replayed rows
    # Another version draws other indices from the buffer.
    before = [r[REPLAYED] for r in fetch(ds, range(200))]
    source.on_scored_batch(scored(fetch(ds, range(20, 24)), half))
    after = [r[REPLAYED] for r in fetch(ds, range(200))]
    assert before != after


def test_capacity_is_fifo_and_deduplicated():
    ds, source, _ = make(capacity=5, mix=0.0)
    first = fetch(ds, range(4))
    source.on_scored_batch(scored(first, half))
    source.on_scored_batch(scored(first, half))  # the same problems again: not duplicated
    assert len(source.buffer) == 4
    second = fetch(ds, range(100, 104))
    source.on_scored_batch(scored(second, half))
    ids = [r["problem_id"] for r in source.buffer]
    assert len(ids) == 5 == len(set(ids))
    assert ids == [first[3]["problem_id"]] + [r["problem_id"] for r in second]


def test_drop_solved_never_serves_a_dropped_problem():
    ds, source, trainer = make(mix=0.5, drop_solved=True)
    rows = fetch(ds, range(40))
    source.on_scored_batch(scored(rows, half))  # all 40 enter the buffer
    solved_rows = fetch(ds, range(0, 300, 3))
    source.on_scored_batch(scored(solved_rows, lambda g, k: True))  # fresh and replayed: all solved
    dropped = {r["problem_id"] for r in solved_rows}
    assert source.dropped == dropped
    assert not dropped & {r["problem_id"] for r in source.buffer}
    for _ in range(3):
        served = fetch(ds, range(len(ds)))
        assert not dropped & {r["problem_id"] for r in served}
        source.on_scored_batch(scored(fetch(ds, range(290, 294)), half))  # a new version
    source.on_step_end(None, SimpleNamespace(global_step=1, max_steps=100), None)
    assert trainer._metrics["train"]["replay/dropped"] == [float(len(dropped))]


def test_everything_dropped_falls_back_to_the_buffer():
    # Phase 1 has 8 problems; once all are solved (dropped), only the buffer (from phase 0) is left.
    cur = CurriculumConfig.model_validate(
        {
            "phases": [
                {"advance": {"window": 1, "threshold": 0.5, "success": "reward", "min_reward": 0.5}},
                {"params": {"max_operand": 3, "eval_size": 1}},
            ]
        }
    )
    ds, source = build_train_source(
        "small_sums", PARAMS, cur, ReplayConfig(enabled=True, mix=0.0, drop_solved=True), seed=0, max_steps=10
    )
    source.on_scored_batch(scored(fetch(ds, range(6)), half))
    assert source.phase == 1 and len(source.buffer) == 6
    phase1 = fetch(ds, range(len(ds)))
    assert {r[PHASE] for r in phase1} == {1} and not any(r[REPLAYED] for r in phase1)
    source.on_scored_batch(scored(phase1, lambda g, k: True))
    assert len(source.dropped) == 8 and source.buffer
    served = fetch(ds, range(100))
    assert all(r[REPLAYED] for r in served)
    assert {r["problem_id"] for r in served} <= {r["problem_id"] for r in source.buffer}


def test_step_metrics():
    ds, source, trainer = make(mix=0.5)
    source.on_step_end(None, SimpleNamespace(global_step=1, max_steps=100), None)
    m = trainer._metrics["train"]
    assert m["replay/buffer_size"] == [0.0] and "replay/zero_std_replayed" not in m
    source.on_scored_batch(scored(fetch(ds, range(8)), lambda g, k: g < 2 and k == 0))  # 2 of 8 groups vary
    source.on_step_end(None, SimpleNamespace(global_step=2, max_steps=100), None)
    assert m["replay/zero_std_fresh"] == [0.75] and m["replay/replayed_frac"] == [0.0]
    assert m["replay/buffer_size"] == [0.0, 2.0]
    served = fetch(ds, range(200, 240))
    replayed = [r for r in served if r[REPLAYED]]
    fresh = [r for r in served if not r[REPLAYED]]
    assert replayed and fresh
    batch = replayed + fresh
    n_rep = len(replayed)
    source.on_scored_batch(scored(batch, lambda g, k: g < n_rep and k == 0))  # replayed vary, fresh do not
    source.on_step_end(None, SimpleNamespace(global_step=3, max_steps=100), None)
    assert m["replay/zero_std_replayed"] == [0.0]
    assert m["replay/zero_std_fresh"] == [0.75, 1.0]
    assert math.isclose(m["replay/replayed_frac"][-1], n_rep / len(batch))
    assert all(r[PHASE] == 0 for r in batch)


def test_state_round_trip_gives_identical_fetches():
    ds, source, _ = make(mix=0.3, capacity=16, drop_solved=True)
    source.on_scored_batch(scored(fetch(ds, range(30)), half))
    source.on_scored_batch(scored(fetch(ds, range(30, 40)), lambda g, k: True))
    saved = json.loads(json.dumps(source.state_dict()))
    ds2, restored, _ = make(mix=0.3, capacity=16, drop_solved=True)
    restored.load_state_dict(saved)
    assert restored.state_dict() == saved
    indices = list(range(len(ds)))
    assert fetch(ds2, indices) == fetch(ds, indices)
    # The same next batch moves both the same way.
    nxt = fetch(ds, range(50, 60))
    source.on_scored_batch(scored(nxt, half))
    restored.on_scored_batch(scored(nxt, half))
    assert fetch(ds2, indices) == fetch(ds, indices)
