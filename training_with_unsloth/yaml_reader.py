"""YAML as the toolkit reads it: YAML 1.2 scalars, within bounds, every problem one line.

`yaml_load` is `yaml.safe_load` with `1e-5` a float and only true/false booleans, refusing repeated keys and
documents past the bounds below (size, nesting depth, values once aliases are expanded): a few anchors can
stand for billions of values, and 2,000 nested brackets exhaust the composer's recursion. `read_yaml_file`
and `read_yaml_mapping` read a file (configs, a run's `config.yaml`, sweep files) and turn every problem,
undecodable bytes included, into a one-line ConfigError. Imports nothing heavy.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from training_with_unsloth.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.2 scalars: `1e-5` is a float (YAML 1.1 reads a string) and only true/false are
    booleans (YAML 1.1 turns `save_strategy: no` into False)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))

_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# Bounds on what the YAML reader accepts: configs are small, and a few aliases can stand for billions of nodes.
MAX_YAML_BYTES = 1 << 20  # 1 MiB of text
MAX_YAML_DEPTH = 64  # nested mappings and lists
MAX_YAML_NODES = 100_000  # scalars, mappings and lists once every alias is expanded


class YAMLLimitError(yaml.YAMLError):
    """A YAML document the reader refuses: too large, too deep, an alias bomb, a recursive alias, a repeated key."""

    def __init__(self, problem: str, mark: Any = None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def _compose_node(self: _Loader, parent: Any, index: Any) -> Any:
    depth = getattr(self, "_depth", 0)
    if depth >= MAX_YAML_DEPTH:
        raise YAMLLimitError(f"nested more than {MAX_YAML_DEPTH} levels deep", self.peek_event().start_mark)
    self._depth = depth + 1
    try:
        return yaml.SafeLoader.compose_node(self, parent, index)
    finally:
        self._depth = depth


def _construct_mapping(self: _Loader, node: Any, deep: bool = False) -> Any:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = self.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: SafeLoader reports it below
            continue
        if first is not None:
            raise YAMLLimitError(
                f"key '{key}' appears twice in one mapping (lines {first.line + 1} and {key_node.start_mark.line + 1}): keep one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return yaml.SafeLoader.construct_mapping(self, node, deep=deep)


_Loader.compose_node = _compose_node  # type: ignore[method-assign]
_Loader.construct_mapping = _construct_mapping  # type: ignore[method-assign]


def _expanded_size(root: Any) -> int:
    """Nodes in the document with every alias expanded, counted without expanding (memoised per node)."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise YAMLLimitError("an alias refers to the mapping or list that contains it (a recursive alias)", node.start_mark)
        active.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v) for v in node.value)
        active.discard(key)
        sizes[key] = min(total, MAX_YAML_NODES + 1)
        return sizes[key]

    return size(root)  # depth is bounded by MAX_YAML_DEPTH, so the recursion is too


def yaml_load(text: str) -> Any:
    """`yaml.safe_load` with YAML 1.2 scalars (`1e-5` is a float), refusing repeated keys and documents past
    the bounds above (size, depth, nodes after alias expansion): those raise `YAMLLimitError`."""
    if len(text) > MAX_YAML_BYTES:
        raise YAMLLimitError(f"{len(text):,} characters, more than the {MAX_YAML_BYTES:,} a config may hold")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_YAML_NODES:
            raise YAMLLimitError(
                f"more than {MAX_YAML_NODES:,} values once its aliases (*name) are expanded: write the values out"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def yaml_error_text(exc: yaml.YAMLError) -> str:
    """`not valid YAML (line N): problem` for any error the YAML reader raises."""
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1})" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    kind = "refused" if isinstance(exc, YAMLLimitError) else "not valid YAML"
    return f"{kind}{where}: {problem}"


def read_yaml_file(path: str | Path, *, what: str = "config") -> Any:
    """The YAML document in `path`, read within the bounds above; any problem is a one-line ConfigError.

    Refuses a file that is not UTF-8 text, is larger than MAX_YAML_BYTES (checked before it is read), or is
    not valid YAML. Returns whatever the document holds (None for an empty file).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {size:,} bytes, more than the {MAX_YAML_BYTES:,} a {what} file may hold")
        with path.open("rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}): save the {what} as UTF-8"
        ) from None
    try:
        return yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {yaml_error_text(exc)}") from None
    except RecursionError:  # a bound above should come first; never a traceback
        raise ConfigError(f"{path}: refused: nested too deeply") from None


def read_yaml_mapping(path: str | Path, *, what: str = "config") -> dict[str, Any]:
    """`read_yaml_file`, which must hold a non-empty mapping."""
    raw = read_yaml_file(path, what=what)
    if raw is None or raw == {}:
        raise ConfigError(f"{path}: the {what} is empty: write its sections (see experiment_configs/quickstart.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, found a {type(raw).__name__}")
    return raw
