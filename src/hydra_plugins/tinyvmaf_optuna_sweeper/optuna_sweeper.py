"""Hydra sweeper plugin: tinyvmaf's Optuna search (``hydra/sweeper=tinyvmaf_optuna``).

Hydra's published ``hydra-optuna-sweeper`` pins optuna 2.10, whose database storage breaks under
SQLAlchemy 2 (which MLflow 3 needs), so a shared, resumable study cannot work with it. This
plugin keeps the same configuration style on Optuna >= 4; the search itself is
``tinyvmaf.search``. Hydra loads sweepers from the ``hydra_plugins`` package only, hence this
folder.
"""

from __future__ import annotations

from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class TinyvmafOptunaSweeper(Sweeper):
    def __init__(
        self,
        study_name: str,
        storage: str,
        direction: str,
        n_trials: int,
        trials_at_once: int,
        params: dict[str, str],
        sampler: Any = None,
        pruner: Any = None,
        fresh_seeds: list[int] | None = None,
    ) -> None:
        self.study_name, self.storage, self.direction = study_name, storage, direction
        self.n_trials, self.trials_at_once, self.params = n_trials, trials_at_once, dict(params)
        self.sampler, self.pruner = sampler, pruner
        self.fresh_seeds = [int(s) for s in fresh_seeds or []]

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from tinyvmaf.cli import quiet_libraries

        quiet_libraries()  # before Optuna and MLflow are imported (MLflow reads its telemetry switch then)
        from tinyvmaf.errors import TinyVmafError
        from tinyvmaf.search import distribution, fresh_seed_values, log_study, open_study, run_search
        from tinyvmaf.tracking import sweep_id

        sweep = sweep_id(self.config)  # before any job: launchers reset Hydra's config, which it may read
        swept = [o.input_line for o in OverridesParser.create().parse_overrides(arguments) if o.is_sweep_override()]
        if swept:
            raise TinyVmafError(
                f"{' '.join(swept)}: a search samples its own values; fix the others on the command line"
            )
        study = open_study(self.study_name, self.storage, self.direction, self.sampler, self.pruner)
        space = {key: distribution(key, str(spec)) for key, spec in self.params.items()}

        def launch(jobs: list[list[str]], first: int) -> Any:
            return self.launcher.launch(jobs, initial_job_idx=first)

        run_search(study, space, self.n_trials, self.trials_at_once, arguments, launch)
        fresh = fresh_seed_values(study, self.fresh_seeds, arguments, launch)
        log_study(_tracking(self.config), sweep, study, fresh)


def _tracking(config: DictConfig) -> Any:
    from tinyvmaf.errors import instantiate_checked

    return instantiate_checked(config.tracking)
