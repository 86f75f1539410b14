"""What every benchmark script shares: the checkout it runs from, and configs composed as the
entry points compose them. Scripts run as ``python benchmarks/<name>.py`` from anywhere."""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]


def compose(name: str, *overrides: str, return_hydra_config: bool = False) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(name, overrides=list(overrides), return_hydra_config=return_hydra_config)
