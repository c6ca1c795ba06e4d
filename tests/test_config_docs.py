"""The documentation beside the code: docs/configuration.md is generated and current; every relative link resolves."""

import re

import tasks
from training_with_unsloth import config, config_docs

from .helpers import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_check_flags_a_stale_file(tmp_path, capsys):
    out = tmp_path / "configuration.md"
    assert config_docs.main(["--check", "--output", str(out)]) == 1  # missing
    assert config_docs.main(["--output", str(out)]) == 0
    assert config_docs.main(["--check", "--output", str(out)]) == 0
    out.write_text(out.read_text().replace("LoRA rank", "LoRA rnak"))
    assert config_docs.main(["--check", "--output", str(out)]) == 1
    assert "stale" in capsys.readouterr().err


def test_render_is_deterministic():
    assert config_docs.render() == config_docs.render()


def test_every_task_parameter_and_trainer_rule_is_documented():
    text = config_docs.render()
    for name in tasks.names():
        assert f"### `task: {name}`" in text
        section = text.split(f"### `task: {name}`", 1)[1].split("\n### ", 1)[0]
        for param in type(tasks.get(name)).Params.model_fields:
            assert f"| `task.{param}` |" in section, (name, param)
    for key in config.TRAINER_DEFAULTS:
        assert f"| `trainer.{key}` | `{config.TRAINER_DEFAULTS[key]}` |" in text
    for key in config._OWNED_TRAINER_KEYS:
        assert f"| `trainer.{key}` |" in text
    assert "every `GRPOConfig`\nfield is accepted, with TRL's default" in text


def _markdown_files():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _anchors(md):
    """GitHub's heading anchors of a Markdown file (lower case, punctuation dropped, spaces as hyphens)."""
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    headings = re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_relative_link_in_readme_and_docs_resolves():
    broken = []
    for md in _markdown_files():
        for target in LINK.findall(md.read_text()):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            path = (md.parent / file).resolve() if file else md
            if not (path.exists() and path.is_relative_to(REPO)):
                broken.append(f"{md.relative_to(REPO)}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{md.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, f"links to files (or headings) not in the repository: {broken}"
