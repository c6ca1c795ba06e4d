"""Which experiment YAML a command line means: an existing path, or the name of a shipped config.

`resolve_config` takes what a user types after `run_experiment.py` / `grpo-train`:

- an existing file path wins (`experiment_configs/countdown.yaml`, `/tmp/my.yaml`, `./countdown.yaml`);
- otherwise the name of a config in the repository's `experiment_configs/` folder, given as
  `countdown`, `countdown.yaml`, `configs/countdown.yaml` or `experiment_configs/countdown.yaml`.

The folder is looked up beside the package (a checkout or an editable install), then in the
current directory (an installed wheel run from a checkout). Anything else is a one-line
`ConfigError` naming the closest shipped config, or listing them.
"""

from __future__ import annotations

from pathlib import Path

from training_with_unsloth.errors import ConfigError, closest

CONFIG_DIR = "experiment_configs"
# Prefixes a user may write before a shipped config's name; `configs/` is the form on the design card.
NAME_PREFIXES = ("configs", CONFIG_DIR)
SUFFIXES = (".yaml", ".yml")


def config_dirs() -> list[Path]:
    """The `experiment_configs/` folders to look in, first match wins: beside the package, then in the cwd."""
    dirs: list[Path] = []
    for d in (Path(__file__).resolve().parent.parent / CONFIG_DIR, Path.cwd() / CONFIG_DIR):
        if d.is_dir() and all(d.resolve() != seen.resolve() for seen in dirs):
            dirs.append(d)
    return dirs


def shipped_configs() -> list[str]:
    """Names (file stems) of the configs in the `experiment_configs/` folders, sorted."""
    return sorted({p.stem for d in config_dirs() for p in d.iterdir() if p.suffix in SUFFIXES and p.is_file()})


def config_name(spec: str) -> str:
    """`configs/countdown.yaml` -> `countdown`: the text with a known folder prefix and a YAML suffix removed."""
    parts = Path(spec).parts
    if len(parts) > 1 and parts[0] in NAME_PREFIXES:
        parts = parts[1:]
    name = "/".join(parts)
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def display_path(path: Path) -> str:
    """The path relative to the current directory when it lies inside it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def resolve_config(spec: str | Path) -> Path:
    """The YAML file `spec` names: an existing path as given, else the shipped config of that name.

    Raises a one-line ConfigError for a name that is not shipped (with the closest one, or the list).
    """
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    name = config_name(text)
    if name and not Path(name).is_absolute():
        for d in config_dirs():
            for suffix in SUFFIXES:
                candidate = d / f"{name}{suffix}"
                if candidate.is_file():
                    return Path(display_path(candidate))
    shipped = shipped_configs()
    listing = f"shipped configs: {', '.join(shipped)}" if shipped else f"no {CONFIG_DIR}/ folder found"
    if path.is_dir():
        raise ConfigError(f"{text} is a directory, not a config file; pass a YAML file or a config name ({listing})")
    best = closest(name, shipped)
    hint = f"did you mean '{best}'? ({listing})" if best else listing
    raise ConfigError(f"no config file or shipped config '{text}': {hint}")
