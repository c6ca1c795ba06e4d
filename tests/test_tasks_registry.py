"""Registries: modules found by discovery, and tasks (like rewards) named by `package.module:Class` from YAML."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import rewards
import tasks
from rewards.discovery import import_modules
from training_with_unsloth.config import load_config, validate
from training_with_unsloth.errors import ConfigError
from training_with_unsloth.experiment import prepare

from .helpers import REPO

USER_TASK = textwrap.dedent(
    '''
    """A task outside the package: "What is a * b?"."""

    from __future__ import annotations

    import datasets
    from pydantic import BaseModel, ConfigDict, Field

    from rewards.parsing import last_number
    from tasks.base import Task
    from tasks.sampling import draw_split


    class ProductsParams(BaseModel):
        model_config = ConfigDict(extra="forbid")

        max_factor: int = Field(9, ge=2)
        train_size: int = Field(50, ge=1)
        eval_size: int = Field(8, ge=1)


    class Products(Task):
        name = "products"
        Params = ProductsParams
        default_rewards = [{"name": "last_number_correct", "weight": 1.0, "params": {}}]

        def build(self, seed):
            p = self.params
            train, eval_ = draw_split(self.name, self._draw, seed, p.eval_size, p.train_size)
            return datasets.Dataset.from_list(train), datasets.Dataset.from_list(eval_)

        def is_correct(self, completion, row):
            return last_number(completion) == row["answer"]

        def gold(self, row):
            return str(row["answer"])

        def _draw(self, rng):
            a, b = rng.randint(2, self.params.max_factor), rng.randint(2, self.params.max_factor)
            return {
                "prompt": [{"role": "user", "content": f"What is {a} * {b}?"}],
                "answer": a * b,
                "problem_id": f"{a}*{b}",
            }


    class NoParams(Task):
        default_rewards = []

        def build(self, seed): ...
        def is_correct(self, completion, row): ...
        def gold(self, row): ...


    class Half(Task):
        Params = ProductsParams
        default_rewards = []

        def build(self, seed): ...


    not_a_class = 3
    '''
)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module on sys.path, written per test and forgotten afterwards (a fresh import each time)."""
    written: list[str] = []

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in written:
        sys.modules.pop(name, None)


def _raw(task: dict, tmp_path: Path, **extra) -> dict:
    return {"name": "user-task", "output_dir": str(tmp_path / "runs"), "task": task, "trainer": {"max_steps": 4}, **extra}


# --------------------------------------------------------------------------- tasks by import path


def test_import_path_task_is_found_and_validates_its_params(user_module):
    mod = user_module("user_task_products", USER_TASK)
    task = tasks.get(f"{mod}:Products", max_factor=5)
    assert type(task).__name__ == "Products" and task.params.max_factor == 5
    train, eval_ = task.build(seed=0)
    assert len(eval_) == 8 and not set(train["problem_id"]) & set(eval_["problem_id"])
    with pytest.raises(ConfigError, match=r"^unknown task parameter 'task.max_factr': did you mean 'task.max_factor'\?$"):
        tasks.get(f"{mod}:Products", max_factr=5)
    with pytest.raises(ConfigError, match=r"^invalid task.max_factor: Input should be greater than or equal to 2"):
        tasks.get(f"{mod}:Products", max_factor=1)
    assert "products" not in tasks.names()  # found by its path, not registered


def test_import_path_task_passes_dry_run_validation(user_module, tmp_path):
    """What `run_experiment.py <config> --dry-run` checks before any model: config, task, default rewards, curriculum."""
    mod = user_module("user_task_dry_run", USER_TASK)
    cfg = validate(_raw({"name": f"{mod}:Products", "max_factor": 7}, tmp_path))
    prepared = prepare(cfg, cuda=False)
    assert prepared.task.params.max_factor == 7
    assert [s["name"] for s in prepared.reward_specs] == ["last_number_correct"]
    assert "name: user_task_dry_run:Products" in cfg.to_yaml()

    curriculum = {"linear": [{"param": "max_factor", "start": 3, "end": 9}]}
    prepare(validate(_raw({"name": f"{mod}:Products"}, tmp_path, curriculum=curriculum)), cuda=False)
    bad = {"linear": [{"param": "max_factor", "start": 1, "end": 9}]}
    with pytest.raises(ConfigError, match=r"^curriculum \(with \{'max_factor': 1\}\): invalid task.max_factor"):
        prepare(validate(_raw({"name": f"{mod}:Products"}, tmp_path, curriculum=bad)), cuda=False)


def test_import_path_task_from_yaml_and_set(user_module, tmp_path):
    mod = user_module("user_task_yaml", USER_TASK)
    path = tmp_path / "exp.yaml"
    path.write_text(f"task: {mod}:Products\ntrainer:\n  max_steps: 4\noutput_dir: {tmp_path / 'runs'}\n")
    assert prepare(load_config(path), cuda=False).task.params.max_factor == 9
    path.write_text(f"task: small_sums\ntrainer:\n  max_steps: 4\noutput_dir: {tmp_path / 'runs'}\n")
    cfg = load_config(path, [f"task.name={mod}:Products", "task.max_factor=4"])
    assert prepare(cfg, cuda=False).task.params.max_factor == 4


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "user_task_bad:Missing",
            "cannot import task 'user_task_bad:Missing': module 'user_task_bad' has no attribute 'Missing'",
        ),
        (
            "user_task_bad:not_a_class",
            "task 'user_task_bad:not_a_class' is not a Task: make 'not_a_class' a subclass of tasks.base.Task",
        ),
        ("user_task_bad:ProductsParams", "task 'user_task_bad:ProductsParams' is not a Task"),
        ("user_task_bad:Half", "task 'user_task_bad:Half' is abstract: implement gold, is_correct"),
        ("user_task_bad:NoParams", "task 'user_task_bad:NoParams' needs a Params class (a pydantic BaseModel)"),
        (
            "no_such_module_xyz:Task",
            "cannot import task 'no_such_module_xyz:Task': no module named 'no_such_module_xyz'; put it on the Python path",
        ),
        ("no_such_pkg_xyz.sub:Task", "no module named 'no_such_pkg_xyz'; put it on the Python path"),
        ("user_task_bad:", "task 'user_task_bad:' must look like 'package.module:Class'"),
        (":Products", "task ':Products' must look like 'package.module:Class'"),
        (
            "user_task_bad.Products",
            "unknown task 'user_task_bad.Products': a task outside the registry is named 'package.module:Class'",
        ),
        (
            "user_task_broken:Products",
            "cannot import task 'user_task_broken:Products': importing 'user_task_broken' raised ZeroDivisionError: "
            "division by zero (",
        ),
        (
            "user_task_needs:Products",
            "cannot import task 'user_task_needs:Products': ModuleNotFoundError: No module named 'not_installed_xyz'",
        ),
        ("smal_sums", "unknown task 'smal_sums': did you mean 'small_sums'?"),
    ],
)
def test_bad_task_paths_are_one_line_config_errors(user_module, tmp_path, name, message):
    user_module("user_task_bad", USER_TASK)
    user_module("user_task_broken", "1 / 0\n")
    user_module("user_task_needs", "import not_installed_xyz\n")
    with pytest.raises(ConfigError) as info:
        tasks.get(name)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="task"):  # the same line from the config checks
        prepare(validate(_raw({"name": name}, tmp_path)), cuda=False)


# --------------------------------------------------------------------------- discovery


def test_discovery_imports_a_package_s_public_modules_in_order(tmp_path, monkeypatch):
    pkg = tmp_path / "discovered_pkg_xyz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("ORDER = []\n")
    for name in ("zeta", "alpha", "_private", "infra"):
        (pkg / f"{name}.py").write_text(f"import discovered_pkg_xyz as p\np.ORDER.append({name!r})\n")
    (pkg / "sub").mkdir()
    (pkg / "sub" / "__init__.py").write_text("import discovered_pkg_xyz as p\np.ORDER.append('sub')\n")
    (pkg / "notes.txt").write_text("not a module")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import discovered_pkg_xyz

        assert import_modules("discovered_pkg_xyz", discovered_pkg_xyz.__path__, skip={"infra"}) == ["alpha", "sub", "zeta"]
        assert discovered_pkg_xyz.ORDER == ["alpha", "sub", "zeta"]
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "discovered_pkg_xyz"]:
            del sys.modules[name]


def test_a_new_task_file_in_a_package_registers_itself(tmp_path, monkeypatch):
    """What dropping `tasks/mytask.py` does, on a stand-in package: discovery runs its @register."""
    from tasks import registry

    pkg = tmp_path / "stand_in_tasks_xyz"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    source = USER_TASK.replace("class Products(Task):", "@register\nclass Products(Task):")
    source = source.replace("from tasks.base import Task", "from tasks.base import Task\nfrom tasks.registry import register")
    source = source.replace('name = "products"', 'name = "stand_in_products_xyz"')
    (pkg / "mytask.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # forget the registration afterwards
    try:
        import stand_in_tasks_xyz

        import_modules("stand_in_tasks_xyz", stand_in_tasks_xyz.__path__)
        assert "stand_in_products_xyz" in tasks.names()
        assert tasks.get("stand_in_products_xyz", max_factor=3).params.max_factor == 3
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "stand_in_tasks_xyz"]:
            del sys.modules[name]


@pytest.mark.parametrize(("package", "infrastructure"), [(tasks, tasks._INFRASTRUCTURE), (rewards, rewards._INFRASTRUCTURE)])
def test_every_shipped_module_is_discovered(package, infrastructure):
    files = {p.stem for p in (REPO / package.__name__).glob("*.py") if not p.stem.startswith("_")}
    assert infrastructure <= files  # the skip list names real modules
    for stem in files - infrastructure:
        assert f"{package.__name__}.{stem}" in sys.modules, stem


def test_shipped_names():
    assert set(tasks.names()) >= {"addition", "anomaly_free", "arithmetic", "countdown", "gsm8k", "small_sums"}
    assert set(rewards.names()) >= {"brevity", "countdown_shaped", "format_tags", "gsm8k_correct", "xml_count"}
