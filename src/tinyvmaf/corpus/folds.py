"""Fold options: one ``configs/fold/<source>.yaml`` per source of a corpus.

Hydra's ``fold=glob(*)`` sweeps the options of the primary config folder only, so the fold
group is rewritten to mirror the configured corpus (the default corpus's ship with tinyvmaf).
"""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig

from tinyvmaf.corpus import Corpus, sources_of
from tinyvmaf.errors import instantiate_checked
from tinyvmaf.files import inside

HEADER = "# written by make_folds.py for corpus {corpus!r}; rerun it for another corpus\n"


def write_fold_options(corpus: Corpus, folder: Path) -> list[str]:
    sources = sources_of(corpus.pairs())
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for source in sources:
        body = yaml.safe_dump({"heldout": source, "corpus": corpus.name}, allow_unicode=True, sort_keys=False)
        inside(folder, source, ".yaml", what="source name").write_text(HEADER.format(corpus=corpus.name) + body)
    return sources


def make_folds(cfg: DictConfig) -> int:
    """``make_folds.py``: point the ``fold`` group at the configured corpus's sources."""
    folder = Path(cfg.fold_dir)
    sources = write_fold_options(instantiate_checked(cfg.corpus), folder)
    print(f"{folder}: {len(sources)} fold options: {', '.join(sources)}")
    return 0
