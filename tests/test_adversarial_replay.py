"""The adversarial cases, replayed through the command lines as a user types them: each ends in one `error:` line
(exit 2), within seconds and without growing the process, and no file outside a run is touched."""

from __future__ import annotations

import resource
import time
from pathlib import Path

import pytest

from .helpers import REPO

QUICKSTART = str(REPO / "experiment_configs" / "quickstart.yaml")


def _bomb() -> str:
    lines = ["name: bomb", "trainer:", "  model_init_kwargs:", "    a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(8):
        prev, name = chr(97 + i), chr(98 + i)
        lines.append(f"    {name}: &{name} [{', '.join([f'*{prev}'] * 10)}]")
    return "\n".join(lines) + "\n"


# name -> (file content or None for the quickstart, extra argv, a phrase of the error line)
CASES: dict[str, tuple[str | bytes | None, list[str], str]] = {
    "empty config": ("", [], "the config is empty"),
    "alias bomb": (_bomb(), ["--dry-run"], "once its aliases (*name) are expanded"),
    "2000-deep nesting": ("name: x\ntask: " + "[" * 2000 + "]" * 2000 + "\n", ["--dry-run"], "nested more than 64"),
    "latin-1 byte": (b"name: caf\xe9\n", ["--dry-run"], "not UTF-8 text"),
    "duplicate key": ("name: x\nseed: 1\nseed: 2\n", ["--dry-run"], "key 'seed' appears twice"),
    "max_steps 1e15": (None, ["--dry-run", "--set", "trainer.max_steps=1000000000000000"], "is beyond 1,000,000,000"),
    "learning rate NaN": (None, ["--dry-run", "--set", "trainer.learning_rate=.nan"], "not a finite number"),
    "learning rate inf": (None, ["--dry-run", "--set", "trainer.learning_rate=.inf"], "not a finite number"),
    "learning rate < 0": (None, ["--dry-run", "--set", "trainer.learning_rate=-1e-4"], "out of range"),
    "batch size 0": (None, ["--dry-run", "--set", "trainer.per_device_train_batch_size=0"], "out of range"),
    "accumulation 0": (None, ["--dry-run", "--set", "trainer.gradient_accumulation_steps=0"], "out of range"),
    "completion length 0": (None, ["--dry-run", "--set", "trainer.max_completion_length=0"], "out of range"),
    "temperature 0": (None, ["--dry-run", "--set", "trainer.temperature=0"], "out of range"),
    "temperature inf": (None, ["--dry-run", "--set", "trainer.temperature=.inf"], "not a finite number"),
    "eval temperature 0": (None, ["--dry-run", "--set", "eval.temperature=0"], "greater than 0"),
    "eval temperature inf": (None, ["--dry-run", "--set", "eval.temperature=.inf"], "not a finite number"),
    "beta < 0": (None, ["--dry-run", "--set", "trainer.beta=-0.1"], "out of range"),
    "reward weight NaN": (None, ["--dry-run", "--set", "rewards.0.weight=.nan"], "not a finite number"),
    "seed -1": (None, ["--dry-run", "--set", "seed=-1"], "seed: Input should be greater than or equal to 0"),
    "checkpoint beyond max_steps": (None, ["--dry-run", "--set", "checkpoints={steps: [5, 500]}"], "lie beyond"),
    "train_size 1e12": (None, ["--dry-run", "--set", "task.train_size=1000000000000"], "less than or equal to 100000"),
    "batch 1e12": (None, ["--dry-run", "--set", "trainer.per_device_train_batch_size=1000000000000"], "out of range"),
    "run name too long": (None, ["--dry-run", "--set", "name=" + "a" * 300], "at most 128 characters"),
    "--set nested 3000 deep": (None, ["--dry-run", "--set", "trainer.model_init_kwargs=" + "[" * 3000 + "]" * 3000], "nested"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_is_one_error_line(name, tmp_path, capsys, monkeypatch):
    from experiments.run_experiment import main
    from training_with_unsloth import experiment  # noqa: F401  (imports are not what is measured)

    text, extra, phrase = CASES[name]
    config = QUICKSTART
    if text is not None:
        config = str(tmp_path / "exp.yaml")
        Path(config).write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.chdir(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    rc = main([config, "--set", f"output_dir={tmp_path / 'runs'}", *extra])
    assert time.perf_counter() - start < 60
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1_500_000  # KiB: never the GBs of a bomb
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and phrase in err[0], err
    assert not (tmp_path / "runs").exists()


def test_overwrite_of_a_users_folder_is_refused_and_leaves_it_whole(tmp_path, capsys, tiny_model_dir):
    from experiments.run_experiment import main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')  # a name a run also writes: still not a run
    argv = [QUICKSTART, "--set", f"output_dir={tmp_path}", "--set", "name=mine", "--set", f"model.name={tiny_model_dir}"]
    assert main([*argv, "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run of this toolkit" in err[0] and "nothing was changed" in err[0]
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.jsonl", "thesis.tex"]
    assert (folder / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("command", ["evaluate", "infer", "llc", "compare_runs", "export"])
def test_analysis_and_after_training_commands_on_a_broken_run_are_one_line(command, tmp_path, capsys):
    from importlib import import_module

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("trainer: [unclosed\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "kind": "train"}\n')
    argv = {
        "evaluate": ["--run", str(run)],
        "infer": ["--run", str(run), "What is 2 + 2?"],
        "llc": ["--run", str(run)],
        "compare_runs": [str(run), "--out", str(tmp_path / "cmp")],
        "export": ["--run", str(run), "--out", str(tmp_path / "out")],
    }[command]
    package = "analysis" if command in ("llc", "compare_runs") else "experiments"
    rc = import_module(f"{package}.{command}").main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and "config.yaml" in err[0], err
