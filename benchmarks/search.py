"""Run a search from configs/hparams_search/ on this machine, timed; print its best trial.

    python benchmarks/search.py                      # mlp_small_optuna, 40 trials, 2 at a time (joblib)
    python benchmarks/search.py hparams_search=budget_optuna hydra.sweeper.n_trials=30

It runs the user's command against the project's own store (mlruns/: MLflow and the Optuna
study), so the search is then in the MLflow UI and ``python evaluate.py sweep_id=<study>
trial=best`` gives its best trial's digest. A rerun resumes the study: only missing trials run.
Record the result in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import optuna
from common import ROOT, compose

from tinyvmaf.runs import LOSO_MEAN, LOSO_WORST

DEFAULT = ["hparams_search=mlp_small_optuna", "hydra.sweeper.n_trials=40"]
TWO_AT_ONCE = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.trials_at_once=2"]


def main(overrides: list[str]) -> None:
    overrides = overrides or DEFAULT
    os.chdir(ROOT)  # the study's default storage is relative: mlruns/optuna.db of the checkout
    cfg = compose("train", *overrides, return_hydra_config=True)
    command = [sys.executable, "train.py", "-m", *overrides, *TWO_AT_ONCE]
    print(f"{platform.node()}: {os.cpu_count()} cores; {' '.join(command[1:])}")
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - start
    study = optuna.load_study(study_name=cfg.hydra.sweeper.study_name, storage=cfg.hydra.sweeper.storage)
    states = [t.state.name for t in study.trials]
    best = study.best_trial
    print(
        f"\n{len(study.trials)} trials ({', '.join(f'{s} {states.count(s)}' for s in sorted(set(states)))}) in {seconds:.0f} s"
    )
    print(f"best: trial {best.number}, LOSO mean RMSE {best.value:.4f}, worst fold {best.user_attrs[LOSO_WORST['rmse']]:.4f}, "
          f"PLCC {best.user_attrs[LOSO_MEAN['plcc']]:.5f}")  # fmt: skip
    for key, value in best.params.items():
        print(f"  {key}={value}")


if __name__ == "__main__":
    main(sys.argv[1:])
