"""What a sweep was asked: the plan of its jobs, made by the launching process before any job
starts (what each trains, which the sweep already finished with the same recipe, so that a rerun
trains or submits only the others), kept in its ledger: ``jobs.json`` in the sweep folder and on
the sweep run, every launch of the sweep merged. The digest reads it for the runs it expects.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf, open_dict

from tinyvmaf.errors import TinyVmafError, instantiate_checked
from tinyvmaf.runs import ALL_FOLDS, Tag, finished_folds, fold_config, latest_per_fold, recipe_hash
from tinyvmaf.tracking import TrackedRun, Tracking, find_sweep_run, sweep_id

LEDGER = "jobs.json"  # in the sweep folder and on the sweep run: every job its launches planned
PLAN = "plan.json"  # in the sweep folder: this launch's jobs, by job number, for its launcher


@dataclass
class PlannedJob:
    """One job of a sweep as the launching process sees it before launching it."""

    index: int  # Hydra's job number: its folder under the sweep folder
    overrides: list[str]
    arch: str
    folds: list[str]  # the held-out sources it trains (every one of the corpus for fold.heldout=all)
    done: bool = False  # the sweep finished all of them earlier with this recipe: not launched again
    slurm_job: str | None = None  # once submitted to SLURM: ``<array id>_<task>``
    log: str | None = None  # the job's log, once it has one
    sweep_id: str = ""  # whose job: two sweeps may share a folder (hydra.sweep.dir), never a ledger


def read_ledger_file(path: Path) -> list[dict]:
    """A ledger or plan as written here; the folder may come from someone else, so anything else is
    one line naming the file."""
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TinyVmafError(f"{path}: not a sweep's job ledger ({type(exc).__name__})") from None
    fields = {"index": int, "overrides": list, "arch": str, "folds": list}
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and all(isinstance(e.get(k), t) for k, t in fields.items()) for e in entries
    ):
        raise TinyVmafError(f"{path}: not a sweep's job ledger (a list of jobs with index, overrides, arch, folds)")
    return entries


def ledger_of_run(client: MlflowClient, run_id: str) -> list[dict]:
    """The job ledger logged to a sweep run, or [] when it has none."""
    names = {a.path for a in client.list_artifacts(run_id)}
    if LEDGER not in names:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        return read_ledger_file(Path(client.download_artifacts(run_id, LEDGER, tmp)))


def plan_jobs(config: DictConfig, config_loader: Any, batch: list[list[str]], first: int) -> list[PlannedJob]:
    """What each job of ``batch`` (numbered from ``first``) trains, and whether the sweep finished
    it already with the same recipe (every fold's ``recipe_hash`` on a finished run of the sweep)."""
    tracking: Tracking = instantiate_checked(config.tracking)
    client, experiment_id = tracking.experiment()
    sweep = sweep_id(config)
    sources: dict[str, tuple] = {}
    finished: dict[str, dict] = {}
    jobs, teachers = [], set()
    for offset, overrides in enumerate(batch):
        cfg = config_loader.load_sweep_config(config, list(overrides))
        arch, heldout = str(cfg.arch.name), str(cfg.fold.heldout)
        teachers.add(str(cfg.teacher.model))
        if len(teachers) > 1:  # its runs are keyed by (arch, fold): two teachers' would count as one
            raise TinyVmafError(
                f"teacher: this sweep trains stand-ins of {', '.join(sorted(teachers))}; a sweep's digest, resumption and "
                "evidence are of one teacher: sweep each under its own sweep_id (python train.py -m teacher=... sweep_id=...)"
            )
        if heldout == ALL_FOLDS:
            key = OmegaConf.to_yaml(cfg.corpus) + OmegaConf.to_yaml(cfg.cache)
            if key not in sources:
                corpus = instantiate_checked(cfg.corpus)
                sources[key] = (corpus, list(instantiate_checked(cfg.cache).ready(corpus).sources))
            corpus, folds = sources[key]
            recipes = {s: recipe_hash(fold_config(cfg, corpus, s)) for s in folds}
        else:
            folds, recipes = [heldout], {heldout: recipe_hash(cfg)}
        if arch not in finished:
            finished[arch] = latest_per_fold(finished_folds(client, experiment_id, sweep=sweep, arch=arch))
        done = all(
            f in finished[arch] and finished[arch][f].data.tags.get(Tag.RECIPE_HASH) == recipes[f] for f in folds
        )
        jobs.append(PlannedJob(first + offset, list(overrides), arch, folds, done, sweep_id=sweep))
    return jobs


def job_folder(config: DictConfig, config_loader: Any, job: PlannedJob) -> Path:
    """Where Hydra puts a job's outputs (``hydra.sweep.dir``/``hydra.sweep.subdir``), verdict included."""
    sweep_config = config_loader.load_sweep_config(config, list(job.overrides))
    with open_dict(sweep_config.hydra.job):
        sweep_config.hydra.job.num = job.index
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


def record_jobs(config: DictConfig, jobs: list[PlannedJob]) -> None:
    """The sweep's ledger: every job its commands planned, by overrides (a rerun's entries replace
    the earlier ones), as the sweep run's ``jobs.json`` and in the sweep folder, whose file keeps
    the entries of other sweeps sharing the folder; and, for a plan (not a launcher's update with
    SLURM ids), this launch's jobs by number in ``plan.json``."""
    folder = Path(str(config.hydra.sweep.dir))
    folder.mkdir(parents=True, exist_ok=True)
    client, experiment_id = instantiate_checked(config.tracking).experiment()
    sweep = sweep_id(config)
    sweep_run = find_sweep_run(client, experiment_id, sweep)
    # every launch of the sweep, whatever its folder (a rerun's is a new one by default)
    earlier = ledger_of_run(client, sweep_run.info.run_id) if sweep_run is not None else []
    in_folder = read_ledger_file(folder / LEDGER)
    ledger = {json.dumps(j["overrides"]): j for j in [*earlier, *own_jobs(in_folder, sweep)]}
    ledger.update({json.dumps(j.overrides): asdict(j) for j in jobs})
    others = [j for j in in_folder if j.get("sweep_id") != sweep]
    (folder / LEDGER).write_text(json.dumps([*others, *ledger.values()], indent=1))
    if not any(j.slurm_job for j in jobs):
        (folder / PLAN).write_text(json.dumps([asdict(j) for j in jobs], indent=1))
    if sweep_run is not None:
        with tempfile.TemporaryDirectory(prefix="tinyvmaf-ledger-") as tmp:
            own = Path(tmp) / LEDGER
            own.write_text(json.dumps(list(ledger.values()), indent=1))
            TrackedRun(client, sweep_run.info.run_id, sweep_run.info.artifact_uri).log_artifact(own)


def own_jobs(entries: list[dict], sweep: str) -> list[dict]:
    """The entries of a folder's ledger that are ``sweep``'s (the folder may hold other sweeps')."""
    return [e for e in entries if e.get("sweep_id") == sweep]


def planned_jobs(sweep_dir: Path) -> dict[int, dict]:
    """This launch's plan, by job number."""
    return {j["index"]: j for j in read_ledger_file(sweep_dir / PLAN)}


def submitted(entry: dict, slurm_job: str, log: str) -> PlannedJob:
    """A planned job once SLURM took it."""
    fields = {k: entry[k] for k in ("index", "overrides", "arch", "folds", "done", "sweep_id") if k in entry}
    return PlannedJob(**fields, slurm_job=slurm_job, log=log)
