"""A folder corpus: ``ref/<source>.<ext>`` and ``dis/<source>__<name>.<ext>``."""

from __future__ import annotations

from pathlib import Path

from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.ffmpeg import RawFormat

SEPARATOR = "__"


class DirectoryCorpus:
    """Any container ffmpeg decodes; ``.yuv`` files need ``yuv`` (width, height, pix_fmt, fps)."""

    def __init__(self, root: str | Path, name: str | None = None, yuv: dict | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.name = name or self.root.name
        self.raw = RawFormat(**yuv) if yuv else None

    @property
    def location(self) -> Path:
        return self.root

    def pairs(self) -> list[ClipPair]:
        ref_dir, dis_dir = self.root / "ref", self.root / "dis"
        for folder in (ref_dir, dis_dir):
            if not folder.is_dir():
                raise TinyVmafError(f"{folder}: no such folder (a directory corpus needs ref/ and dis/)")
        refs = {p.stem: p for p in sorted(ref_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
        pairs = []
        for dis in sorted(p for p in dis_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            source, sep, _ = dis.stem.partition(SEPARATOR)
            if not sep:
                raise TinyVmafError(f"{dis}: name must be <source>{SEPARATOR}<name>.<ext>")
            if source not in refs:
                raise TinyVmafError(f"{dis}: no reference {ref_dir}/{source}.* for source {source!r}")
            pairs.append(ClipPair(source, dis.stem, self._video(refs[source]), self._video(dis)))
        if not pairs:
            raise TinyVmafError(f"{dis_dir}: no distorted clips")
        return pairs

    def _video(self, path: Path) -> Video:
        if path.suffix == ".yuv":
            if self.raw is None:
                raise TinyVmafError(f"{path}: a .yuv file needs corpus.yuv (width, height, pix_fmt, fps)")
            return Video(path, self.raw)
        return Video(path)
