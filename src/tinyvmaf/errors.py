"""User-facing errors (one line naming the file or option at fault) and how entry points report them."""

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf.errors import MissingMandatoryValue


class TinyVmafError(Exception):
    """A user-facing failure: bad input, a bad option, a tool that is not what it claims to be.

    Entry points print ``error: <message>`` for it and exit non-zero, never a traceback.
    """


JOB_FAILED = "failed"
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C


def user_error(exc: BaseException) -> str | None:
    """The one-line message of a user's mistake behind ``exc``, also when Hydra wrapped it while
    instantiating a config node; None for anything else (a bug, which keeps its traceback)."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, TinyVmafError):
        return " ".join(str(exc).split())
    if isinstance(exc, MissingMandatoryValue):
        return f"{exc.full_key}: missing value; give it on the command line ({exc.full_key}=...)"
    return None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_command(command: Callable[..., Any], *args: Any) -> Any:
    """Run an entry point's command; a user error becomes ``error: ...`` and exit status 1.

    SIGTERM (a scheduler's stop, ``kill``) is handled as Ctrl-C: whatever the command holds is
    cleaned up on the way out, and the status is 130. Inside a Hydra multirun a failed job
    returns ``JOB_FAILED`` instead of exiting, so the sweep goes on and ``FailedJobsExit``
    makes it exit non-zero at the end.
    """
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        status = command(*args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        if multirun:
            return JOB_FAILED
        sys.exit(1)
    if multirun:
        return JOB_FAILED if isinstance(status, int) and status != 0 else status
    sys.exit(status if isinstance(status, int) else 0)


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
