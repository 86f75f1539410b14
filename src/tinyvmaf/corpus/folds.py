"""Fold options for a user's corpus: ``configs/fold/<corpus>/<source>.yaml``, one per source.

Hydra's ``glob(*)`` lists the options of the primary config folder only (an added search path
is not listed), so the options are written there, in a subgroup of ``fold`` per corpus that git
ignores: ``+fold/<corpus>=glob(*)`` then sweeps exactly that corpus's sources, and the tracked
options of the default corpus (``configs/fold/*.yaml``) are never touched.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import DictConfig

from tinyvmaf.corpus import Corpus, sources_of
from tinyvmaf.errors import instantiate_checked
from tinyvmaf.files import config_key, config_literal, inside

# Each option sits in the subgroup fold/<corpus> but fills the `fold` node, like the default's.
HEADER = "# @package fold\n# written by make_folds.py for corpus {corpus!r}; rerun it when the corpus changes\n"


def write_fold_options(corpus: Corpus, folder: Path) -> tuple[str, list[str]]:
    """The subgroup's name and the sources it holds options for, in the corpus's order."""
    sources = sources_of(corpus.pairs())
    group = folder / config_key(corpus.name, what="corpus name")  # a Hydra group name: no % or spaces
    group.mkdir(parents=True, exist_ok=True)
    for old in group.glob("*.yaml"):
        old.unlink()
    for source in sources:
        names = {"heldout": config_literal(source), "corpus": config_literal(corpus.name)}  # data, never interpolations
        body = yaml.safe_dump(names, allow_unicode=True, sort_keys=False)
        inside(group, source, ".yaml", what="source name").write_text(HEADER.format(corpus=corpus.name) + body)
    return f"fold/{group.name}", sources


def make_folds(cfg: DictConfig) -> int:
    """``make_folds.py``: fold options for the configured corpus, and the sweep command that uses them."""
    corpus = instantiate_checked(cfg.corpus)
    group, sources = write_fold_options(corpus, Path(cfg.fold_dir))
    print(f"{Path(cfg.fold_dir) / group.removeprefix('fold/')}: {len(sources)} fold options: {', '.join(sources)}")
    print(f"sweep them with: python train.py -m <the same corpus options> '+{group}=glob(*)'")
    return 0
