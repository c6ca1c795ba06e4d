"""The exit path every command line shares: a user error is one `error: ...` line (exit 2), Ctrl-C exits 130."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from training_with_unsloth.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_main(body: Callable[[], int | None], *, interrupted: str = "interrupted") -> int:
    """Run a command's body and return its exit status (None counts as 0).

    A `UserError` prints `error: <message>` on stderr and gives 2; Ctrl-C prints `interrupted`
    (the command's own `interrupted: ...` line when it passes one) and gives 130. Commands parse
    their arguments before calling this, so argparse's usage errors (exit 2) are unchanged.
    Imports nothing heavy: the backend (Unsloth before TRL) is chosen later, inside `body`.
    """
    try:
        status = body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)


def command_name(default: str) -> str:
    """The name usage lines show: the console script when run as one (`grpo-train`), else `default`."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("grpo-") else default
