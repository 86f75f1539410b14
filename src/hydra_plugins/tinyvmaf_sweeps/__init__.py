"""Hydra launcher plugins for tinyvmaf's sweeps: hydra-submitit-launcher's launchers whose jobs,
failed on the job's side or SLURM's, end the sweep with tinyvmaf's verdict, and which submit only
what a sweep lacks (``hydra/launcher=slurm``). The logic is ``tinyvmaf.sweep.launcher``; Hydra loads plugins
from the ``hydra_plugins`` package only."""
