"""Nothing a user owns is touched, nothing written is lost, no traceback: run directories, resumes and files
(issue items 1, 4, 5, 7, 9, 10 without training; the trained cases are in test_resume.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from training_with_unsloth.config import validate
from training_with_unsloth.errors import ConfigError, UserError
from training_with_unsloth.rundir import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    checkpoint_problem,
    read_jsonl,
    temp_dir_beside,
)

from .helpers import tiny_config


def user_folder(path: Path) -> dict[str, bytes]:
    """A folder of a user's files (one with a run's name among them); returns their contents."""
    path.mkdir(parents=True)
    files = {"notes.md": b"my notes", "data/train.csv": b"a,b\n1,2\n", "config.yaml": b"my: own config\n"}
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    return files


def contents(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def fake_run(path: Path, *, steps: tuple[int, ...] = (2, 4), dtype: str = "float32", max_steps: int = 4) -> RunDir:
    """A run as the toolkit leaves it, written by hand: config.yaml, env.json, metrics and trainer checkpoints."""
    run = RunDir(path)
    run.create()
    cfg = validate(tiny_config(path.parent.parent, path, name=path.name, **{"trainer.max_steps": max_steps}))
    atomic_write_text(run.config, cfg.to_yaml())
    atomic_write_json(run.env, {"created": "t", "packages": {}, "backend": "transformers", "seed": 7, "git": {},
                                "model": {"dtype": dtype}})  # fmt: skip
    for s in range(1, max(steps) + 1):
        run.append_metrics({"step": s, "kind": "train", "reward": s})
    for s in steps:
        ckpt = run.trainer / f"checkpoint-{s}"
        ckpt.mkdir()
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": s}))
        write_safetensors(ckpt / "adapter_model.safetensors")
    return run


def write_safetensors(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64)}, str(path))


# ---------------------------------------------------------------------------- item 1: only a run is cleared


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, tiny_model_dir):
    from training_with_unsloth.experiment import plan

    folder = tmp_path / "runs" / "tiny"
    files = user_folder(folder)
    cfg = validate(tiny_config(tmp_path, tiny_model_dir))
    for overwrite in (True, False):
        with pytest.raises(UserError) as info:
            plan(cfg, overwrite=overwrite)
        message = str(info.value)
        assert "exists and is not a run of this toolkit" in message and "nothing was changed" in message
        assert "config.yaml, data, notes.md" in message
    with pytest.raises(UserError, match="not a run of this toolkit"):
        RunDir(folder).clear()
    assert contents(folder) == files


def test_overwrite_clears_what_a_run_writes_and_keeps_the_rest(tmp_path):
    run = fake_run(tmp_path / "runs" / "tiny")
    (run.path / "my-notes.md").write_text("keep me")
    (run.jobs).mkdir()
    (run.jobs / "1_0_log.out").write_text("log")
    (run.path / ".metrics.jsonl.abc123").write_text("a temporary file of ours")
    (run.analysis).mkdir()
    (run.analysis / "llc.csv").write_text("step\n")
    kept = run.clear()
    assert kept == ["my-notes.md"]  # what --overwrite reports keeping: the user's (jobs/ is the run's own)
    assert sorted(p.name for p in run.path.iterdir()) == ["jobs", "my-notes.md"]
    assert (run.jobs / "1_0_log.out").read_text() == "log"


def test_a_folder_with_only_the_empty_start_of_a_run_is_ours(tmp_path):
    run = RunDir(tmp_path / "runs" / "tiny")
    run.create()  # killed right after: empty eval/, checkpoints/, trainer/, plots/
    run.jobs.mkdir()
    assert not run.is_run() and run.leftovers_only()
    run.check_ours("overwrite")
    (run.checkpoints / "x").write_text("a file of someone's")
    with pytest.raises(UserError):
        run.check_ours("overwrite")


# ---------------------------------------------------------------------------- item 5: the umask decides modes


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_and_folders_written_atomically_follow_the_umask(tmp_path, mask):
    from training_with_unsloth.controls.callbacks import save_adapter
    from training_with_unsloth.plots import save_figure

    class Model:
        def save_pretrained(self, folder, **kw):
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"w")

    class Trainer:
        model = Model()

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "config.yaml", "a: 1\n")
        atomic_write_json(tmp_path / "env.json", {"a": 1})
        folder = temp_dir_beside(tmp_path / "best")
        adapter = save_adapter(Trainer(), tmp_path / "checkpoints" / "adapter-1", {"step": 1})
        import matplotlib.pyplot as plt

        fig = plt.figure()
        png = save_figure(fig, tmp_path / "plots" / "rewards.png")
        plt.close(fig)
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    for path in (tmp_path / "config.yaml", tmp_path / "env.json", adapter / "meta.json", png):
        assert mode(path) == 0o666 & ~mask, path
    for path in (folder, adapter):
        assert mode(path) == 0o777 & ~mask, path


# ---------------------------------------------------------------------------- item 4: metrics and checkpoints


def test_a_record_appended_after_a_torn_line_stays_whole(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    run.append_metrics({"step": 1, "kind": "train"})
    with run.metrics.open("a") as f:
        f.write('{"step": 2, "kind": "tra')  # killed mid-write
    assert [r["step"] for r in run.read_metrics()] == [1]
    assert capsys.readouterr().err == ""  # a torn last line is expected after a crash: no note
    run.append_metrics({"step": 2, "kind": "train"})
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    assert "skipped 1 line that is not a JSON object (line 2)" in capsys.readouterr().err


def test_a_corrupt_or_non_object_line_is_skipped_with_a_note(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1}\n[1, 2]\n7\n{not json\n\xff\xfe\n{"step": 2}\n')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]
    err = capsys.readouterr().err
    assert f"note: {path}: skipped 4 lines that are not a JSON object (line 2, 3, 4, 5)" in err
    list(read_jsonl(path))
    assert capsys.readouterr().err == ""  # once per file


def truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_a_checkpoint_whose_files_do_not_parse_is_incomplete(tmp_path):
    import torch

    run = fake_run(tmp_path / "runs" / "tiny")
    ckpt = run.trainer / "checkpoint-4"
    assert checkpoint_problem(ckpt) is None and run.last_trainer_checkpoint() == ckpt
    torch.save({"state": torch.zeros(256)}, ckpt / "optimizer.pt")
    assert checkpoint_problem(ckpt) is None
    truncate(ckpt / "optimizer.pt", 300)
    assert checkpoint_problem(ckpt) == "optimizer.pt is unreadable (BadZipFile)"
    torch.save({"state": torch.zeros(256)}, ckpt / "optimizer.pt")
    truncate(ckpt / "adapter_model.safetensors", 100)
    assert checkpoint_problem(ckpt).startswith("adapter_model.safetensors is truncated (100 bytes")
    write_safetensors(ckpt / "adapter_model.safetensors")
    truncate(ckpt / "trainer_state.json", 5)
    assert checkpoint_problem(ckpt) == "trainer_state.json is unreadable (JSONDecodeError)"
    assert run.last_trainer_checkpoint() == run.trainer / "checkpoint-2"


def test_resume_passes_over_an_incomplete_checkpoint_with_a_note(tmp_path, capsys):
    from training_with_unsloth.plan import check_resume

    run = fake_run(tmp_path / "runs" / "tiny")
    cfg = validate(tiny_config(tmp_path, run.path, name="tiny", **{"trainer.max_steps": 4}))
    truncate(run.trainer / "checkpoint-4" / "adapter_model.safetensors", 50)
    assert check_resume(cfg, run) == str(run.trainer / "checkpoint-2")
    assert "note: trainer/checkpoint-4 is incomplete (adapter_model.safetensors is truncated" in capsys.readouterr().out
    truncate(run.trainer / "checkpoint-2" / "trainer_state.json", 3)
    before = contents(run.path)
    with pytest.raises(UserError, match=r"holds no complete trainer checkpoint \(checkpoint-4: adapter_model") as info:
        check_resume(cfg, run)
    assert "start again with --overwrite" in str(info.value)
    assert contents(run.path) == before


def test_resume_refuses_max_steps_below_its_checkpoint(tmp_path):
    from training_with_unsloth.plan import check_resume

    run = fake_run(tmp_path / "runs" / "tiny")
    cfg = validate(tiny_config(tmp_path, run.path, name="tiny", **{"trainer.max_steps": 3}))
    with pytest.raises(UserError, match=r"trainer.max_steps 3 is below step 4 of checkpoint-4.*set trainer.max_steps to 4"):
        check_resume(cfg, run)


def test_a_resume_sets_unreadable_metrics_lines_aside(tmp_path):
    from training_with_unsloth import resume

    run = fake_run(tmp_path / "runs" / "tiny", steps=(2,), max_steps=4)
    for step in (3, 4):
        run.append_metrics({"step": step, "kind": "train"})
    with run.metrics.open("a") as f:
        f.write('{"step": 5, "kind": "tr')
    record = resume.resume_run(run, run.trainer / "checkpoint-2", config_text=run.config.read_text(),
                               config=validate(tiny_config(tmp_path, run.path)).model_dump(mode="json"),
                               env={"created": "now"})  # fmt: skip
    folder = run.path / record["set_aside_to"]
    assert (folder / "metrics-unreadable.txt").read_text() == '{"step": 5, "kind": "tr\n'
    assert [json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [3, 4]
    assert run.metrics.read_text().endswith("\n") and [r["step"] for r in run.read_metrics()] == [1, 2]
    run.append_metrics({"step": 3, "kind": "train"})
    assert [r["step"] for r in run.read_metrics()] == [1, 2, 3]


# ---------------------------------------------------------------------------- item 7: one line, never a traceback


def test_interrupt_before_the_first_checkpoint_says_what_to_do(tmp_path):
    from experiments.run_experiment import INTERRUPTED, interrupted_text

    run = RunDir(tmp_path / "runs" / "tiny")
    assert interrupted_text({}) == "interrupted before the run started: nothing was written"
    run.create()
    run.append_metrics({"step": 1, "kind": "train"})
    text = interrupted_text({"run": run.path, "save_steps": 50})
    assert "before the first trainer checkpoint (one is saved every trainer.save_steps = 50 steps)" in text
    assert "--resume has nothing to continue from: start again with --overwrite" in text
    ckpt = run.trainer / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text("{}")
    assert interrupted_text({"run": run.path}) == INTERRUPTED


def test_output_dir_that_is_a_file_or_a_name_too_long_for_the_file_system(tmp_path):
    from training_with_unsloth.plan import check_new_run

    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match=r"afile is a file, not a folder"):
        check_new_run(RunDir(tmp_path / "afile" / "tiny"), resume=False, overwrite=False)
    with pytest.raises(UserError, match=r"is longer than the 255 bytes a file name may have here"):
        check_new_run(RunDir(tmp_path / ("d" * 300) / "tiny"), resume=False, overwrite=False)
    with pytest.raises(UserError, match=r"cannot create the run directory .*: set output_dir to a folder you can write"):
        RunDir(tmp_path / "afile" / "tiny").create()


@pytest.mark.parametrize("text", ["trainer: [unclosed\n", "- just\n- a list\n", ""])
def test_a_run_whose_config_is_not_a_mapping_is_one_line_for_every_reader(tmp_path, text):
    from analysis.compare_runs import read_run
    from analysis.runs import open_run
    from training_with_unsloth.evaluations import read_run_config

    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config.write_text(text)
    run.metrics.write_text('{"step": 1, "kind": "train"}\n')
    for read in (read_run_config, lambda r: read_run(r.path), lambda r: open_run(r.path)):
        with pytest.raises(ConfigError, match=r"config.yaml: ") as info:
            read(run)
        assert "\n" not in str(info.value)


def test_analysis_commands_skip_lines_that_are_not_objects(untrained_run_dir, tmp_path, capsys):
    import shutil

    from analysis import compare_runs, phases, plot_run

    run = RunDir(tmp_path / "tiny")
    shutil.copytree(untrained_run_dir, run.path)
    lines = [{"step": s, "kind": "train", "reward": s / 10, "time": s} for s in range(1, 13)]
    text = "".join(json.dumps(r) + "\n" for r in lines[:6]) + "[1, 2]\n42\n" + "".join(json.dumps(r) + "\n" for r in lines[6:])
    run.metrics.write_text(text)
    assert plot_run.main(["--run", str(run.path)]) == 0
    assert phases.main(["--run", str(run.path), "--column", "reward"]) == 0
    assert compare_runs.main([str(run.path), "--out", str(tmp_path / "cmp")]) == 0
    err = capsys.readouterr().err
    assert "skipped 2 lines that are not a JSON object (line 7, 8)" in err and "Traceback" not in err


def test_a_truncated_init_adapter_is_one_line(untrained_run_dir, tmp_path):
    import shutil

    from training_with_unsloth.checkpoints import init_adapter_ref

    adapter = tmp_path / "adapter"
    shutil.copytree(Path(untrained_run_dir) / "checkpoints" / "adapter-2", adapter)
    truncate(adapter / "adapter_model.safetensors", 1000)
    cfg = validate(tiny_config(tmp_path, tmp_path, **{"model.init_adapter": str(adapter)}))
    with pytest.raises(UserError, match=r"model.init_adapter: .*adapter_model.safetensors is truncated .*save the adapter"):
        init_adapter_ref(cfg.model)


@pytest.mark.parametrize("source", ["x = (\n", "1 / 0\n", "import no_such_module_xyz\n"])
def test_a_plugin_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch, source):
    import rewards
    from training_with_unsloth.controls import user_callback_class

    (tmp_path / "broken_plugin.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    for call in (lambda: rewards.get("broken_plugin:f"), lambda: user_callback_class("broken_plugin:C")):
        with pytest.raises(ConfigError, match=r"cannot import .*broken_plugin") as info:
            call()
        assert "\n" not in str(info.value)
        assert "broken_plugin.py:1" in str(info.value) or "no_such_module_xyz" in str(info.value)


def test_a_corrupt_llc_settings_file_is_one_line(tmp_path):
    from training_with_unsloth.rundir import read_json_object

    path = tmp_path / "llc_settings.json"
    path.write_text('{"lr": 1e-')
    with pytest.raises(UserError, match=r"llc_settings.json is not a readable JSON object: delete it"):
        read_json_object(path, remedy="delete it")
    assert read_json_object(tmp_path / "absent.json") is None


# ---------------------------------------------------------------------------- items 9 and 10: precision


@pytest.fixture
def card(monkeypatch):
    """A CUDA card of a chosen compute capability, whose torch.cuda.is_bf16_supported() counts emulation."""
    import torch

    def use(capability: tuple[int, int], name: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)

    return use


def test_a_t4_gets_float16_even_where_torch_counts_emulated_bfloat16(card):
    import torch

    from training_with_unsloth.models import backends
    from training_with_unsloth.trainer_args import resolve_precision

    card((7, 5), "Tesla T4")
    assert not backends.bf16_supported()
    assert backends.torch_dtype("auto", True) == torch.float16
    cfg = validate({"name": "x", "model": {"backend": "transformers"}})
    assert resolve_precision(cfg, cuda=True) == ("float16", {"bf16": False, "fp16": True})
    card((8, 0), "NVIDIA A100")
    assert backends.bf16_supported() and backends.torch_dtype("auto", True) == torch.bfloat16


def test_a_resumed_run_keeps_the_precision_it_trained_in(tmp_path, card):
    from training_with_unsloth.plan import keep_resumed_precision

    run = fake_run(tmp_path / "runs" / "tiny", dtype="float16")
    card((8, 0), "NVIDIA A100")
    cfg = validate(tiny_config(tmp_path, run.path))
    note = keep_resumed_precision(cfg, run, cuda=True)
    assert cfg.model.dtype == "float16" and "pinned to float16" in note and "auto would pick bfloat16" in note
    explicit = validate(tiny_config(tmp_path, run.path, **{"model.dtype": "bfloat16"}))
    with pytest.raises(UserError, match=r"trained in float16 \(env.json\) and model.dtype asks for bfloat16"):
        keep_resumed_precision(explicit, run, cuda=True)

    bf16_run = fake_run(tmp_path / "runs" / "bf16", dtype="bfloat16")
    card((7, 5), "Tesla T4")
    with pytest.raises(UserError, match=r"trained in bfloat16 .* has no bfloat16 \(model.dtype auto resolves to float16"):
        keep_resumed_precision(validate(tiny_config(tmp_path, run.path)), bf16_run, cuda=True)
    with pytest.raises(UserError, match=r"trained in bfloat16 on a GPU .* model.dtype auto resolves to float32"):
        keep_resumed_precision(validate(tiny_config(tmp_path, run.path)), bf16_run, cuda=False)
    same = validate(tiny_config(tmp_path, run.path))
    assert keep_resumed_precision(same, fake_run(tmp_path / "runs" / "cpu"), cuda=False) is None
    assert same.model.dtype == "auto"


def test_a_refused_resume_on_another_precision_changes_nothing(tmp_path, tiny_model_dir):
    from training_with_unsloth.experiment import plan

    run = fake_run(tmp_path / "runs" / "tiny", dtype="bfloat16")
    atomic_write_text(run.config, validate(tiny_config(tmp_path, tiny_model_dir, **{"trainer.max_steps": 4})).to_yaml())
    before = contents(run.path)
    cfg = validate(tiny_config(tmp_path, tiny_model_dir, **{"trainer.max_steps": 4}))
    with pytest.raises(UserError, match=r"model.dtype auto resolves to float32"):
        plan(cfg, resume=True)
    assert contents(run.path) == before


def test_a_pinned_dtype_in_the_saved_config_still_resumes_with_auto(tmp_path):
    from training_with_unsloth.plan import check_resume

    run = fake_run(tmp_path / "runs" / "tiny", dtype="float16")
    pinned = validate(tiny_config(tmp_path, run.path, **{"model.dtype": "float16"}))
    atomic_write_text(run.config, pinned.to_yaml())
    assert check_resume(validate(tiny_config(tmp_path, run.path)), run).endswith("checkpoint-4")
    with pytest.raises(UserError, match="model differ"):
        check_resume(validate(tiny_config(tmp_path, run.path, **{"model.dtype": "float32"})), run)


def test_evaluate_and_export_never_write_into_a_folder_of_someone_elses(tmp_path):
    from training_with_unsloth import evaluations, exporting

    folder = tmp_path / "project"
    files = user_folder(folder)
    with pytest.raises(UserError, match=r"holds files that are not an evaluation's .*refusing to write into it"):
        evaluations.check_out(folder)
    for overwrite in (False, True):
        with pytest.raises(UserError):
            exporting.check_out(folder, overwrite=overwrite)
    assert contents(folder) == files
    evaluations.check_out(tmp_path / "new")  # a new or empty folder is fine
    (tmp_path / "empty").mkdir()
    evaluations.check_out(tmp_path / "empty")
    earlier = tmp_path / "earlier-export"
    earlier.mkdir()
    (earlier / "export.json").write_text("{}")
    exporting.check_out(earlier, overwrite=True)  # an earlier export is replaced on request


# ---------------------------------------------------------------------------- item 8: the first lines a newcomer sees


def test_the_two_harmless_import_warnings_are_dropped_and_nothing_else(caplog):
    import logging

    from training_with_unsloth.cli import HARMLESS_WARNINGS, run_main

    def body() -> int:
        for name, prefix in HARMLESS_WARNINGS.items():
            logging.getLogger(name).warning(prefix + " (the library's own words)")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("a warning that does matter")
        return 0

    with caplog.at_level(logging.WARNING):
        assert run_main(body) == 0
    shown = [r.getMessage() for r in caplog.records]
    assert shown == ["a warning that does matter"]
