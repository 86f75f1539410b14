"""What every entry point shares: library output tuned for a command line, user errors as one
line, SIGTERM handled as Ctrl-C, and a job's verdict where its sweep finds it (``tinyvmaf.sweep.verdicts``).

Entry points call ``run_command``; importing tinyvmaf's stages changes no global state.
"""

import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from tinyvmaf.errors import Interrupted, user_error
from tinyvmaf.sweep.verdicts import FAILED_MARKER, mark_failed_job

INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C


def no_telemetry() -> None:
    """MLflow and ONNX Runtime report usage to their makers and keep files for it under ``$HOME``
    (``~/.config/mlflow/telemetry.json``, ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``);
    both let a user turn it off, before they are imported. A user who sets either variable wins."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def quiet_libraries() -> None:
    """Output that repeats on every fold of a sweep and every export, with nothing for the user to
    do; and no telemetry (``no_telemetry``)."""
    no_telemetry()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # banners and tips
    warnings.filterwarnings(
        "ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*"
    )  # inside Lightning
    # SROCC needs every prediction in memory by nature; a few thousand frames are nothing
    warnings.filterwarnings("ignore", message=".*SpearmanCorrcoef` will save all targets.*")
    # Lightning's check for multi-process SLURM jobs, on any machine with SLURM installed: tinyvmaf's
    # jobs are one process each (tinyvmaf.training.make_trainer)
    warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is not used.*")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per downloaded file
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # "View run at ..." per run on a server


def interrupt(signum: int, frame: Any) -> None:
    """The entry points' handler of SIGTERM and Ctrl-C (``run_command``)."""
    raise Interrupted(signal.Signals(signum).name)


def run_command(command: Callable[..., Any], *args: Any) -> Any:
    """Run an entry point's command; a user error becomes ``error: ...`` and exit status 1.

    SIGTERM (a scheduler's stop or preemption, ``kill``) is handled as Ctrl-C: whatever the command
    holds is cleaned up on the way out (its MLflow runs end KILLED), and the status is 130. Both
    raise ``Interrupted``, not ``KeyboardInterrupt``, which Lightning's ``Trainer.fit`` would turn
    into ``sys.exit(1)``. Inside a Hydra multirun a failed job
    leaves a ``FAILED`` file in its output folder and returns instead of exiting, so the sweep
    goes on; ``FailedJobsExit`` reads those files in the launching process, wherever the job ran.
    """
    quiet_libraries()
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    if multirun:  # a rerun into the same folder: an earlier attempt's verdict is not this one's
        (Path(HydraConfig.get().runtime.output_dir) / FAILED_MARKER).unlink(missing_ok=True)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
        signal.signal(signal.SIGINT, interrupt)
    try:
        status = command(*args)
    except (KeyboardInterrupt, Interrupted):
        print("error: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    except Exception as exc:
        message = user_error(exc)
        if multirun:
            _mark_failed(message or f"{type(exc).__name__}: {exc}")
        if message is None:
            raise  # a bug in tinyvmaf: its traceback is what helps
        print(f"error: {message}", file=sys.stderr)
        if multirun:
            return None  # the FAILED file is the verdict; the sweep goes on
        sys.exit(1)
    if multirun:
        if isinstance(status, int) and status != 0:
            _mark_failed(f"exit status {status}")
            return None
        return status
    sys.exit(status if isinstance(status, int) else 0)


def _mark_failed(message: str) -> None:
    """The job's verdict, where the launching process finds it: the job's own output folder."""
    mark_failed_job(Path(HydraConfig.get().runtime.output_dir), list(HydraConfig.get().overrides.task), message)


def or_exit(step: Callable[[], Any]) -> Any:
    """A step of a sweep's launching process (a Hydra callback, a launcher): a user error ends the
    sweep with its one line and status 1, and so does a bug, with its traceback. Hydra turns an
    exception in a callback into a warning and launches the jobs anyway: a sweep whose parent run
    failed to open would train with no record of its plan (seen in CI, an MLflow migration racing)."""
    quiet_libraries()
    try:
        return step()
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            traceback.print_exc()
            message = f"{type(exc).__name__}: {exc}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
