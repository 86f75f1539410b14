"""What a search's pick does on content it never saw, with and without the domain guard.

    python benchmarks/search_guard.py STUDY [overrides ...]

STUDY is a search run with ``search.domain_limit=null`` (the guard off, every trial's guard figure
still logged) and ideally no pruning (``hydra.sweeper.pruner.n_startup_trials=1000``), so that
every trial is trained to its end. For each completed trial: its objective (LOSO mean RMSE), its
guard figure (``loso_domain_max_error``: the largest |fold model - teacher| over the teacher's box
of valid features) and the RMSE of its 9 fold models on the check corpus (unseen sources and
codecs; measured here, after the search, never searched on). Prints Spearman's rho of the check
RMSE with each, and the trial each rule picks: the objective alone, and the objective among the
trials within each domain limit. Record the result in docs/benchmarks.md with the machine.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np
import optuna
import torch
from common import ROOT, compose
from hydra.utils import instantiate
from scipy import stats

from tinyvmaf.export import model_from_run
from tinyvmaf.runs import LOSO_DOMAIN_MAX_ERROR, LOSO_MEAN, Kind, Param, Tag
from tinyvmaf.tracking import find_sweep_run

LIMITS = (math.inf, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5)


def check_rmse_of_folds(tracking, trial_run_id: str, table, teacher: str) -> float:
    """Mean over the trial's fold models of their RMSE on the whole check corpus."""
    client, experiment_id = tracking.experiment()
    folds = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.PARENT}` = '{trial_run_id}' and attributes.status = 'FINISHED'",
    )
    scores = table.scores[teacher]
    rmses = []
    for fold in folds:
        model, _, _ = model_from_run(tracking, fold.info.run_id)
        with torch.no_grad():
            x = torch.from_numpy(table.columns(model.inputs).astype(np.float32))
            predicted = model.eval().predict(x).double().numpy()
        rmses.append(float(np.sqrt(np.mean((predicted - scores) ** 2))))
    return float(np.mean(rmses))


def main(study_name: str, overrides: list[str]) -> None:
    os.chdir(ROOT)  # the store and the study's default storage are relative: mlruns/ of the checkout
    cfg = compose("train", "hparams_search=mlp_small_optuna", "corpus=check", *overrides, return_hydra_config=True)
    tracking = instantiate(cfg.tracking)
    client, experiment_id = tracking.experiment()
    study = optuna.load_study(study_name=study_name, storage=cfg.hydra.sweeper.storage)
    sweep = find_sweep_run(client, experiment_id, study_name)
    trial_runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{Tag.PARENT}` = '{sweep.info.run_id}' and tags.`{Tag.KIND}` = '{Kind.LOSO}' "
        "and attributes.status = 'FINISHED'",
    )
    by_number = {int(r.data.params[Param.TRIAL]): r for r in trial_runs if Param.TRIAL in r.data.params}
    table = instantiate(cfg.cache).ready(instantiate(cfg.corpus))
    rows = []
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        run = by_number.get(trial.number)
        if run is None or LOSO_DOMAIN_MAX_ERROR not in run.data.metrics:
            continue
        check = check_rmse_of_folds(tracking, run.info.run_id, table, cfg.teacher.model)
        rows.append((trial.number, run.data.metrics[LOSO_MEAN["rmse"]], run.data.metrics[LOSO_DOMAIN_MAX_ERROR], check))
        print(
            f"trial {trial.number:3d}: LOSO RMSE {rows[-1][1]:.4f}  domain max {rows[-1][2]:6.3f}  check RMSE {check:.4f}"
        )
    number, objective, domain, check = (np.array(c) for c in zip(*rows))
    print(f"{len(rows)} trials of {study_name}; check corpus {table.label}")
    for name, values in (("objective (LOSO RMSE)", objective), ("domain max error", domain)):
        rho, p = stats.spearmanr(values, check)
        print(f"Spearman rho of check RMSE with {name}: {rho:.2f} (p = {p:.2g})")
    rank = stats.rankdata(check)
    for limit in LIMITS:
        within = np.flatnonzero(domain <= limit)
        if not len(within):
            print(f"domain limit {limit:g}: no trial within it")
            continue
        i = within[np.argmin(objective[within])]
        print(
            f"domain limit {limit:g}: {len(within)} trials within; picks trial {number[i]}: LOSO RMSE "
            f"{objective[i]:.4f}, domain max {domain[i]:.3f}, check RMSE {check[i]:.4f} "
            f"({int(rank[i])} of {len(rows)} by check RMSE)"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
