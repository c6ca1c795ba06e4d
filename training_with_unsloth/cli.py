"""The exit path every command line shares: a user error is one `error: ...` line (exit 2), Ctrl-C exits 130."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from training_with_unsloth.errors import UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

# Warnings other libraries log on import that say nothing about a run (docs/architecture.md, "Foreign warnings"):
# logger name -> the start of the message dropped.
HARMLESS_WARNINGS = {
    # torchao's optional C++ kernels need torch >= 2.11; the toolkit calls none of them (its 4-bit path is bitsandbytes).
    "torchao": "Skipping import of cpp extensions due to incompatible torch version",
    # bitsandbytes looks for an optional CPU 4-bit kernel on the hub; 4-bit training here is on CUDA only.
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward from kernels-community",
}


class _DropHarmless(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_harmless_warnings() -> None:
    """Drop the import-time warnings of HARMLESS_WARNINGS (installed before those libraries are imported)."""
    for name, prefix in HARMLESS_WARNINGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropHarmless) for f in logger.filters):
            logger.addFilter(_DropHarmless(prefix))


def run_main(body: Callable[[], int | None], *, interrupted: str | Callable[[], str] = "interrupted") -> int:
    """Run a command's body and return its exit status (None counts as 0).

    A `UserError` prints `error: <message>` on stderr and gives 2; Ctrl-C prints `interrupted`
    (the command's own `interrupted: ...` line when it passes one, or a function that says it once the
    interruption is known) and gives 130. Commands parse
    their arguments before calling this, so argparse's usage errors (exit 2) are unchanged.
    Imports nothing heavy: the backend (Unsloth before TRL) is chosen later, inside `body`.
    """
    quiet_harmless_warnings()
    try:
        status = body()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"\n{interrupted() if callable(interrupted) else interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0 if status is None else int(status)


def command_name(default: str) -> str:
    """The name usage lines show: the console script when run as one (`grpo-train`), else `default`."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("grpo-") else default
