"""Command lines: config names a user can guess, the console scripts, and the one shared error/exit path."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from training_with_unsloth.cli import command_name, run_main
from training_with_unsloth.config_files import config_name, resolve_config, shipped_configs
from training_with_unsloth.errors import ConfigError, UserError

from .helpers import REPO

CONFIGS = REPO / "experiment_configs"
SCRIPTS = {
    "grpo-train": "experiments.run_experiment:main",
    "grpo-llc": "analysis.llc:main",
    "grpo-adapter-norms": "analysis.adapter_norms:main",
    "grpo-phases": "analysis.phases:main",
    "grpo-plot": "analysis.plot_run:main",
    "grpo-compare": "analysis.compare_evals:main",
    "grpo-eval": "experiments.evaluate:main",
    "grpo-infer": "experiments.infer:main",
    "grpo-export": "experiments.export:main",
    "grpo-compare-runs": "analysis.compare_runs:main",
    "grpo-submit": "experiments.submit:main",
    "grpo-sweep": "experiments.sweep:main",
}


# --------------------------------------------------------------------------- which config file


@pytest.mark.parametrize("spec", ["countdown", "countdown.yaml", "configs/countdown.yaml", "experiment_configs/countdown.yaml"])
def test_a_shipped_config_by_name_from_the_repository(spec, monkeypatch):
    monkeypatch.chdir(REPO)
    assert resolve_config(spec) == Path("experiment_configs/countdown.yaml")


@pytest.mark.parametrize("spec", ["quickstart", "configs/quickstart.yaml", "experiment_configs/quickstart.yaml"])
def test_a_shipped_config_by_name_from_elsewhere(spec, tmp_path, monkeypatch):
    """Outside the checkout the name still finds the repository's experiment_configs/ (shown absolute)."""
    monkeypatch.chdir(tmp_path)
    path = resolve_config(spec)
    assert path.is_absolute() and path.resolve() == (CONFIGS / "quickstart.yaml").resolve()


def test_an_existing_path_wins_over_a_shipped_name(tmp_path, monkeypatch):
    mine = tmp_path / "configs" / "countdown.yaml"
    mine.parent.mkdir()
    mine.write_text("name: mine\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config("configs/countdown.yaml") == Path("configs/countdown.yaml")
    assert resolve_config(str(mine)) == mine
    other = tmp_path / "exp.yml"
    other.write_text("name: x\n")
    assert resolve_config(other) == other


def test_names_are_the_shipped_files():
    assert shipped_configs() == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"countdown", "quickstart"} <= set(shipped_configs())
    assert config_name("configs/countdown.yaml") == config_name("countdown.yml") == "countdown"


def test_an_unknown_name_suggests_the_closest_or_lists_them():
    with pytest.raises(ConfigError, match=r"did you mean 'countdown'\?") as close:
        resolve_config("countdwn")
    with pytest.raises(ConfigError) as far:
        resolve_config("zzzz")
    assert "\n" not in str(close.value) and "\n" not in str(far.value)
    assert "shipped configs: " + ", ".join(shipped_configs()) in str(far.value)
    with pytest.raises(ConfigError, match="is a directory"):
        resolve_config(str(REPO / "tests"))


def test_an_unknown_name_through_main_is_one_line_exit_2(capsys):
    from experiments.run_experiment import main

    assert main(["countdwn", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: no config file or shipped config 'countdwn': did you mean 'countdown'?")


def test_dry_run_by_bare_name_prints_the_file_then_the_same_yaml(monkeypatch, capsys):
    from experiments.run_experiment import main
    from training_with_unsloth.config import load_config, validate

    monkeypatch.chdir(REPO)
    assert main(["quickstart", "--dry-run"]) == 0
    out = capsys.readouterr().out
    first, _, rest = out.partition("\n")
    assert first == "# config: experiment_configs/quickstart.yaml"
    # the resolved config is still one YAML document (the file line is a comment), then the plan
    document = out.split("\n---\n")[0]
    assert validate(yaml.safe_load(document)) == load_config(CONFIGS / "quickstart.yaml")
    assert "\nrun        runs/quickstart" in rest


def test_argparse_errors_are_unchanged(capsys):
    from experiments.run_experiment import main

    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--resume", "--overwrite"])
    assert exc.value.code == 2 and "--resume and --overwrite contradict each other" in capsys.readouterr().err


# --------------------------------------------------------------------------- console scripts


def test_console_scripts_are_declared_and_importable():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["scripts"] == SCRIPTS
    packages = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for target in SCRIPTS.values():
        module, _, attr = target.partition(":")
        assert module.split(".")[0] in packages
        assert callable(getattr(importlib.import_module(module), attr))


def test_usage_names_the_console_script(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/grpo-train", "x"])
    assert command_name("run_experiment.py") == "grpo-train"
    monkeypatch.setattr(sys, "argv", ["experiments/run_experiment.py"])
    assert command_name("run_experiment.py") == "run_experiment.py"


# --------------------------------------------------------------------------- the shared exit path


def test_run_main_turns_a_user_error_into_one_line_and_exit_2(capsys):
    def body():
        raise UserError("trainer.max_steps must be positive")

    assert run_main(body) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: trainer.max_steps must be positive\n" and captured.out == ""


def test_run_main_exit_statuses(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert run_main(interrupted, interrupted="interrupted: rerun to continue") == 130
    assert capsys.readouterr().err == "\ninterrupted: rerun to continue\n"
    assert run_main(lambda: None) == 0 and run_main(lambda: 0) == 0 and run_main(lambda: 3) == 3
    with pytest.raises(RuntimeError):  # a bug stays a traceback
        run_main(lambda: (_ for _ in ()).throw(RuntimeError("bug")))


def test_analysis_commands_share_the_error_line(tmp_path, capsys):
    from analysis import phases, plot_run

    assert phases.main(["--run", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: no such run directory: {tmp_path / 'nope'}\n"
    assert plot_run.main(["--run", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: no such run directory: {tmp_path / 'nope'}\n"


def test_the_command_line_modules_import_no_trainer_stack():
    """Parsing a command line must not pull in TRL/transformers/torch: Unsloth is imported first, later."""
    code = (
        "import sys, training_with_unsloth.cli, training_with_unsloth.config_files, experiments.run_experiment, "
        "experiments.evaluate, experiments.infer, experiments.export, analysis.compare_runs; "
        "print(sorted(m for m in ('torch', 'trl', 'transformers', 'peft', 'unsloth') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
