"""Module discovery for the registries: import a package's own modules so their ``@register`` decorators run."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Collection, Iterable
from types import ModuleType

from rewards.errors import ConfigError


def import_modules(package: str, path: Iterable[str], skip: Collection[str] = ()) -> list[str]:
    """Import every module and subpackage of ``package`` found on ``path`` (its ``__path__``), sorted by name.

    Private names (a leading ``_``) and those in ``skip`` (infrastructure such as the registry itself) are
    left out. Returns the names imported, in import order. An error inside a module propagates unchanged.
    """
    found = sorted({m.name for m in pkgutil.iter_modules(list(path))})
    imported = [name for name in found if not name.startswith("_") and name not in skip]
    for name in imported:
        importlib.import_module(f"{package}.{name}")
    return imported


def failure_text(exc: BaseException) -> str:
    """``Type: message`` on one line, with the file and line of a syntax error or of the user's code that raised."""
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{text} ({exc.filename}:{exc.lineno})" if f"{exc.filename}" not in text else text
    tb = exc.__traceback__
    frame = None
    while tb is not None:  # the innermost frame outside the import machinery
        if "importlib" not in tb.tb_frame.f_code.co_filename:
            frame = tb
        tb = tb.tb_next
    if frame is not None and frame.tb_frame.f_code.co_filename != __file__:
        return f"{text} ({frame.tb_frame.f_code.co_filename}:{frame.tb_lineno})"
    return text


def import_user_module(module_name: str, what: str, where: str = "") -> ModuleType:
    """Import the module a config names (importing runs its code); any failure is one ConfigError naming `what`.

    A module that is missing says how to make it importable; one that raises while it is imported (a syntax
    error, a NameError, an exception of its own) says what it raised and where. `where` prefixes the message
    (`callbacks: `).
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        sys.modules.pop(module_name, None)
        if exc.name and (module_name + ".").startswith(exc.name + "."):  # the module (or its package) is missing
            raise ConfigError(
                f"{where}cannot import {what}: no module named '{exc.name}'; put it on the Python path (e.g. PYTHONPATH)"
            ) from None
        raise ConfigError(f"{where}cannot import {what}: {failure_text(exc)}") from None
    except Exception as exc:  # noqa: BLE001  (any failure of user code is reported in one line)
        sys.modules.pop(module_name, None)
        raise ConfigError(f"{where}cannot import {what}: importing '{module_name}' raised {failure_text(exc)}") from None
