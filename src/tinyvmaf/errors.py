"""The one exception type a user sees: a one-line message naming the file or option at fault."""

import sys
from collections.abc import Callable
from typing import Any


class TinyVmafError(Exception):
    """A user-facing failure: bad input, a bad option, a tool that is not what it claims to be.

    Entry points print ``error: <message>`` for it and exit non-zero, never a traceback.
    """


def run_command(command: Callable[..., int | None], *args: Any) -> None:
    """Run an entry point's command; a ``TinyVmafError`` becomes ``error: ...`` and exit status 1."""
    try:
        status = command(*args)
    except TinyVmafError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(status or 0)
