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
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from tinyvmaf.errors import Interrupted, instantiate_checked, user_error, without_passwords

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


def _interrupt(signum: int, frame: Any) -> None:
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
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
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


FAILED_MARKER = "FAILED"


def _mark_failed(message: str) -> None:
    """The job's verdict, where the launching process finds it: the job's own output folder."""
    folder = Path(HydraConfig.get().runtime.output_dir)
    overrides = " ".join(HydraConfig.get().overrides.task)
    (folder / FAILED_MARKER).write_text(without_passwords(f"{overrides}: {' '.join(message.split())}") + "\n")


class FailedJobsExit(Callback):
    """Hydra callback, in the launching process: after a multirun, list the jobs that failed and
    exit 1 if any did, or if the sweep launched no job at all (``x=glob(*)`` on a misspelled group).

    It reads the ``FAILED`` files the jobs leave in their folders under the sweep folder, because a
    job may run in another process (joblib) or on another machine (SLURM), where this object is not.
    """

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = [d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir()] if sweep_dir.is_dir() else []
        failed = sorted((d / FAILED_MARKER).read_text().strip() for d in jobs if (d / FAILED_MARKER).is_file())
        if not jobs:
            print("error: the sweep launched no job: check the swept groups and values", file=sys.stderr)
            sys.exit(1)
        if failed:
            print(f"error: {len(failed)} of {len(jobs)} runs failed: " + "; ".join(failed), file=sys.stderr)
            sys.exit(1)


# Overrides of these keys change which corpus, and which teacher cache, the jobs train on.
_CACHE_KEYS = ("corpus", "cache", "libvmaf", "paths", "n_jobs")


class CacheBeforeJobs(Callback):
    """Hydra callback, in the launching process: build or validate the configured corpus's teacher
    cache once, before any job starts, so parallel jobs (joblib workers, SLURM array tasks) never
    run libvmaf on the same clips twice. Skipped when the sweep varies the corpus or the cache."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if any(key.split("/")[0].split(".")[0] in _CACHE_KEYS for key in _swept_keys(config)):
            return
        corpus, cache = _or_exit(lambda: (instantiate_checked(config.corpus), instantiate_checked(config.cache)))
        report = _or_exit(lambda: cache.build(corpus))
        report.warn_left_out()
        print(
            f"teacher cache of corpus {corpus.name!r}: {len(report.built)} clip(s) computed, {len(report.reused)} reused"
        )


class ConsolidateShards(Callback):
    """Hydra callback, in the launching process: after a sweep over ``cache.shard``, write the
    corpus's ``frames.npz`` and ``summary.json`` from the entries the shards wrote (no libvmaf).
    It runs after ``FailedJobsExit``, so only when every shard succeeded."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if "cache.shard" not in _swept_keys(config):
            return
        corpus, cache = _or_exit(
            lambda: (instantiate_checked(config.corpus), instantiate_checked(config.cache, shard=None))
        )
        report = _or_exit(lambda: cache.build(corpus, compute=False))
        for failure in report.failures:
            print(f"error: {failure.asset}: {failure.error}", file=sys.stderr)
        if report.failures:
            sys.exit(1)
        print(
            f"consolidated {len(report.reused)} clip(s) of corpus {corpus.name!r} into {cache.folder(corpus) / 'frames.npz'}"
        )


class SweepRun(Callback):
    """Hydra callback, in the launching process: open the sweep's parent MLflow run before any job
    (the jobs nest their runs under it, wherever they run), and when the sweep ends write its
    digest there (``evaluate.py`` for this sweep_id)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        quiet_libraries()  # before MLflow is imported: its telemetry switch is read then
        from tinyvmaf.tracking import open_sweep_run, sweep_id

        self.sweep = sweep_id(config)  # resolved now: it may read the Hydra config, gone at the end
        self.search = bool(config.get("search", {}).get("study"))
        tracking = _or_exit(lambda: instantiate_checked(config.tracking))
        overrides = without_passwords(" ".join(config.hydra.overrides.task))
        params = {"experiment": config.get("experiment_name", "default"), "teacher": config.teacher.model}
        _or_exit(lambda: open_sweep_run(tracking, self.sweep, {**params, "sweep": overrides}))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from tinyvmaf.digest import write_digest

        quiet_libraries()
        # A search's digest is its best trial's; the study's run has Optuna's figures instead.
        options = config.copy()
        OmegaConf.set_struct(options, False)
        options.sweep_id, options.trial = self.sweep, "best" if self.search else None
        try:
            write_digest(options)
        except Exception as exc:
            message = user_error(exc)
            if message is None:
                raise
            print(f"error: no digest for this sweep: {message}", file=sys.stderr)


def _swept_keys(config: DictConfig) -> list[str]:
    """The keys (or groups) a multirun sweeps over, from its command line."""
    overrides = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    return [o.key_or_group for o in overrides if o.is_sweep_override()]


def _or_exit(step: Callable[[], Any]) -> Any:
    """A launching-process step of a callback: a user error ends the sweep with its one line."""
    quiet_libraries()
    try:
        return step()
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
