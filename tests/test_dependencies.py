"""Dependencies point one way: `rewards/` is the leaf, `tasks/` builds on it, the trainer on both."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO

# What tasks/ and rewards/ must never import: the trainer and the scripts built on top of them.
FORBIDDEN = ("training_with_unsloth", "analysis", "experiments")


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``path``, at any depth (relative ones skipped)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


LEAF_FILES = sorted(p for package in ("tasks", "rewards") for p in (REPO / package).rglob("*.py"))


@pytest.mark.parametrize("path", LEAF_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_tasks_and_rewards_import_nothing_above_them(path):
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for line, name in _imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    ]
    assert not bad, "; ".join(bad)


def test_rewards_imports_nothing_from_tasks():
    """rewards/ is the lowest leaf: tasks import its checkers, never the other way round."""
    bad = [
        f"{p.relative_to(REPO)}:{line} imports {name}"
        for p in sorted((REPO / "rewards").rglob("*.py"))
        for line, name in _imported_modules(p)
        if name.split(".")[0] == "tasks"
    ]
    assert not bad, "; ".join(bad)


def test_the_scan_sees_the_packages():
    assert {p.name for p in LEAF_FILES} >= {"registry.py", "errors.py", "countdown.py", "base.py"}


def test_trainer_errors_are_the_leaf_errors():
    """The trainer's error module re-exports the very same objects, so isinstance agrees everywhere."""
    import rewards.errors as leaf
    import training_with_unsloth.errors as trunk

    for name in ("UserError", "ConfigError", "closest", "unknown"):
        assert getattr(trunk, name) is getattr(leaf, name)
    assert issubclass(trunk.ConfigError, leaf.UserError)


def test_importing_tasks_and_rewards_loads_no_trainer_module():
    code = (
        "import sys, tasks, rewards; tasks.get('small_sums'); rewards.build([{'name': 'brevity'}]); "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FORBIDDEN)!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
