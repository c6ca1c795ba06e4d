"""User-facing errors: one line that names the problem and the fix, never a traceback.

The types live in `rewards.errors` (the lowest leaf, so `tasks/` and `rewards/` never import the
trainer); this module re-exports the same objects, so `isinstance` checks agree everywhere.
"""

from __future__ import annotations

from rewards.errors import ConfigError, UserError, closest, unknown

__all__ = ["ConfigError", "UserError", "closest", "unknown"]
