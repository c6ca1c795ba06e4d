"""Module discovery for the registries: import a package's own modules so their ``@register`` decorators run."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Collection, Iterable


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
