"""User-facing errors (one line naming the file or option at fault) and how entry points report them."""

import sys
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode


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
    sys.exit(status if isinstance(status, int) else 0)


def run_job(command: Callable[..., Any], *args: Any) -> Any:
    """Like ``run_command``, but inside a Hydra multirun a failed job prints its error and the
    sweep goes on; ``FailedJobsExit`` then makes the whole sweep exit non-zero."""
    if not (HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN):
        run_command(command, *args)
    try:
        return command(*args)
    except TinyVmafError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return JOB_FAILED


JOB_FAILED = "failed"


class FailedJobsExit(Callback):
    """Hydra callback: after a multirun, list failed jobs and exit 1 if there were any."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.total = 0

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        self.total += 1
        failed = job_return.status.name == "FAILED" or (job_return.status.name == "COMPLETED" and job_return.return_value == JOB_FAILED)
        if failed:
            self.failed.append(" ".join(job_return.overrides))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.failed:
            print(f"error: {len(self.failed)} of {self.total} runs failed: " + "; ".join(self.failed), file=sys.stderr)
            sys.exit(1)
