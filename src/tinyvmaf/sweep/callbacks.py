"""The launching process's hooks into a Hydra multirun (``configs/train.yaml``,
``configs/build_cache.yaml``, ``configs/hydra/default.yaml``): the teacher cache before any job,
the sweep's MLflow run and the plan of its jobs, and at the end the verdicts, the consolidated
cache shards and the digest.

Hydra instantiates these at every start, before any job and before the telemetry switches of
MLflow and ONNX Runtime are set (``tinyvmaf.cli.quiet_libraries``), so the stages are imported
inside the hooks, after that call: importing this module loads neither MLflow nor torch.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from tinyvmaf.cli import or_exit, quiet_libraries
from tinyvmaf.errors import TinyVmafError, instantiate_checked, user_error, without_passwords
from tinyvmaf.sweep import verdicts


class FailedJobsExit(Callback):
    """After a multirun: list the jobs that failed and exit 1 if any did (130 if the launching process
    was interrupted), or if the sweep planned no job at all (``x=glob(*)`` on a misspelled group).

    It reads the verdict files under the sweep folder, because a job may run in another process
    (joblib) or on another machine (SLURM), where this object is not.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        verdicts.clear_verdicts(_sweep_dir(config))

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        quiet_libraries()
        from tinyvmaf.sweep.ledger import LEDGER, own_jobs, read_ledger_file
        from tinyvmaf.tracking import sweep_id

        sweep_dir = _sweep_dir(config)
        jobs = verdicts.job_folders(sweep_dir)
        failed = verdicts.failed_jobs(jobs)
        if not jobs and not own_jobs(read_ledger_file(sweep_dir / LEDGER), sweep_id(config)):
            print("error: the sweep launched no job: check the swept groups and values", file=sys.stderr)
            sys.exit(1)
        if failed:
            print(f"error: {len(failed)} of {len(jobs)} jobs failed: " + "; ".join(failed), file=sys.stderr)
        interrupted = verdicts.interruption(sweep_dir)
        if interrupted:
            print(f"error: {interrupted}", file=sys.stderr)
            sys.exit(130)
        if failed:
            sys.exit(1)


# Overrides of these keys change which corpus, and which teacher cache, the jobs train on.
_CACHE_KEYS = ("corpus", "cache", "libvmaf", "paths", "n_jobs")


class CacheBeforeJobs(Callback):
    """Build or validate the configured corpus's teacher cache once, before any job starts, so
    parallel jobs (joblib workers, SLURM array tasks) never run libvmaf on the same clips twice.
    Skipped when the sweep varies the corpus or the cache."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if any(key.split("/")[0].split(".")[0] in _CACHE_KEYS for key in swept_keys(config)):
            return
        corpus, cache = or_exit(lambda: (instantiate_checked(config.corpus), instantiate_checked(config.cache)))
        report = or_exit(lambda: cache.build(corpus))
        report.warn_left_out()
        print(
            f"teacher cache of corpus {corpus.name!r}: {len(report.built)} clip(s) computed, {len(report.reused)} reused"
        )


class ConsolidateShards(Callback):
    """After a sweep over ``cache.shard``, write the corpus's ``frames.npz`` and ``summary.json``
    from the entries the shards wrote (no libvmaf). It runs after ``FailedJobsExit``, so only when
    every shard succeeded."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if "cache.shard" not in swept_keys(config):
            return
        corpus, cache = or_exit(
            lambda: (instantiate_checked(config.corpus), instantiate_checked(config.cache, shard=None))
        )
        report = or_exit(lambda: cache.build(corpus, compute=False))
        for failure in report.failures:
            print(f"error: {failure.asset}: {failure.error}", file=sys.stderr)
        if report.failures:
            sys.exit(1)
        print(
            f"consolidated {len(report.reused)} clip(s) of corpus {corpus.name!r} into {cache.folder(corpus) / 'frames.npz'}"
        )


class SweepRun(Callback):
    """Open the sweep's parent MLflow run before any job (the jobs nest their runs under it,
    wherever they run) and record the plan of its jobs; when the sweep ends write its digest there
    (``evaluate.py`` for this sweep_id)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        quiet_libraries()
        from tinyvmaf.runs import Param
        from tinyvmaf.tracking import open_sweep_run, sweep_id

        self.sweep = sweep_id(config)  # resolved now: it may read the Hydra config, gone at the end
        self.search = bool(config.get("search", {}).get("study"))
        tracking = or_exit(lambda: instantiate_checked(config.tracking))
        overrides = without_passwords(" ".join(command_line(config)))
        params = {
            Param.EXPERIMENT: config.get("experiment_name", "default"),
            Param.TEACHER: config.teacher.model,
            Param.SWEEP: overrides,
        }
        self.run_id = or_exit(lambda: open_sweep_run(tracking, self.sweep, params, launching=True))
        if not self.search:  # a search's trials are the study's to choose
            self.plan(config)

    def plan(self, config: DictConfig) -> None:
        """The sweep's jobs, what each trains and which the sweep already finished, in its ledger."""
        from hydra.core.global_hydra import GlobalHydra

        from tinyvmaf.sweep.ledger import plan_jobs, record_jobs

        loader = GlobalHydra.instance().config_loader()
        jobs = or_exit(lambda: plan_jobs(config, loader, sweep_jobs(config), 0))
        or_exit(lambda: record_jobs(config, jobs))
        done = sum(j.done for j in jobs)
        if done:
            print(
                f"{done} of {len(jobs)} jobs already finished in sweep {self.sweep} with this recipe: not trained again"
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        quiet_libraries()
        from tinyvmaf.digest import write_digest
        from tinyvmaf.runs import Tag

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
            client, _ = instantiate_checked(config.tracking).experiment()
            client.set_tag(self.run_id, Tag.ERROR, f"no digest: {message}")  # not left RUNNING: nothing will finish it
            client.set_terminated(self.run_id, "FAILED")


def _sweep_dir(config: DictConfig) -> Path:
    return Path(config.hydra.sweep.dir)


def command_line(config: DictConfig) -> list[str]:
    """The multirun's task overrides as typed: read through OmegaConf, an override holding an
    interpolation (``x='${y}'``) would come back resolved against the launching config."""
    return [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]


def swept_keys(config: DictConfig) -> list[str]:
    """The keys (or groups) a multirun sweeps over, from its command line."""
    overrides = OverridesParser.create().parse_overrides(command_line(config))
    return [o.key_or_group for o in overrides if o.is_sweep_override()]


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """The jobs Hydra's basic sweeper makes of this multirun's command line, in its order: the
    product of every key's values, a later override of a key replacing an earlier one. ``glob``
    asks the config loader for a group's options."""
    from hydra.core.global_hydra import GlobalHydra

    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    values: dict[str, list[str]] = {}
    for o in parser.parse_overrides(command_line(config)):
        key = o.get_key_element()
        if o.is_sweep_override() and not o.is_discrete_sweep():
            raise TinyVmafError(
                f"{o.input_line}: a plain multirun sweeps lists, ranges and globs; intervals are a search's"
            )
        sweep = o.sweep_string_iterator() if o.is_sweep_override() else [o.get_value_element_as_str()]
        values[key] = [f"{key}={v}" for v in sweep]
    return [list(job) for job in itertools.product(*values.values())]
