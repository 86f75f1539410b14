"""``tinyvmaf_slurm`` and ``tinyvmaf_submitit_local``: hydra-submitit-launcher's launchers, with
tinyvmaf's verdict on every job and ``cancel_jobs_on_exit`` (``tinyvmaf.sweep.launcher``).
Without the cluster extra (hydra-submitit-launcher) there is nothing to add to, and nothing is
registered. No ``from __future__ import annotations``: Hydra loads plugin modules outside
``sys.modules``, where dataclasses cannot resolve string annotations."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # pip install -e '.[cluster]'
    pass
else:
    from tinyvmaf.sweep.launcher import SubmititVerdict

    class TinyvmafSlurmLauncher(SubmititVerdict, SlurmLauncher):
        pass

    class TinyvmafLocalLauncher(SubmititVerdict, LocalLauncher):
        pass

    @dataclass
    class TinyvmafSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.tinyvmaf_sweeps.launchers.TinyvmafSlurmLauncher"
        cancel_jobs_on_exit: bool = True  # configs/hydra/launcher/slurm.yaml says what it does

    @dataclass
    class TinyvmafLocalConf(LocalQueueConf):
        _target_: str = "hydra_plugins.tinyvmaf_sweeps.launchers.TinyvmafLocalLauncher"
        cancel_jobs_on_exit: bool = True

    store = ConfigStore.instance()
    store.store(group="hydra/launcher", name="tinyvmaf_slurm", node=TinyvmafSlurmConf, provider="tinyvmaf")
    store.store(group="hydra/launcher", name="tinyvmaf_submitit_local", node=TinyvmafLocalConf, provider="tinyvmaf")
