"""What every entry point shares: library output tuned for a command line, user errors as one
line, SIGTERM handled as Ctrl-C, and a multirun that exits non-zero when a job failed.

Entry points call ``run_command``; importing tinyvmaf's stages changes no global state.
"""

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from tinyvmaf.errors import user_error

JOB_FAILED = "failed"
INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C


def quiet_libraries() -> None:
    """Output that repeats on every fold of a sweep and every export, with nothing for the user to do."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # banners and tips
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # every optimisation pass at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    # torchvision's detection ops are missing: an MLP never uses them
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*"
    )  # inside Lightning
    # SROCC needs every prediction in memory by nature; a few thousand frames are nothing
    warnings.filterwarnings("ignore", message=".*SpearmanCorrcoef` will save all targets.*")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded file


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_command(command: Callable[..., Any], *args: Any) -> Any:
    """Run an entry point's command; a user error becomes ``error: ...`` and exit status 1.

    SIGTERM (a scheduler's stop, ``kill``) is handled as Ctrl-C: whatever the command holds is
    cleaned up on the way out, and the status is 130. Inside a Hydra multirun a failed job
    returns ``JOB_FAILED`` instead of exiting, so the sweep goes on and ``FailedJobsExit``
    makes it exit non-zero at the end.
    """
    quiet_libraries()
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
        failed = job_return.status.name == "FAILED" or (
            job_return.status.name == "COMPLETED" and job_return.return_value == JOB_FAILED
        )
        if failed:
            self.failed.append(" ".join(job_return.overrides))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self.failed:
            print(f"error: {len(self.failed)} of {self.total} runs failed: " + "; ".join(self.failed), file=sys.stderr)
            sys.exit(1)
