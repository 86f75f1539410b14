"""A folder corpus: ``ref/<source>.<ext>`` and ``dis/<source>__<name>.<ext>``."""

from __future__ import annotations

import stat
from pathlib import Path

from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.errors import TinyVmafError, finite_number
from tinyvmaf.ffmpeg import RAW_SAMPLE_BYTES, RawFormat

SEPARATOR = "__"
YUV_KEYS = ("width", "height", "pix_fmt", "fps")


def raw_format(yuv: dict, option: str = "corpus.yuv") -> RawFormat:
    """``yuv`` checked: positive integer width and height, a supported pix_fmt, fps a finite
    number > 0, no other keys; ``option`` names it in errors."""
    yuv = dict(yuv)
    unknown = sorted(set(yuv) - set(YUV_KEYS))
    if unknown:
        raise TinyVmafError(f"{option}: unknown key(s) {', '.join(map(str, unknown))}; give {', '.join(YUV_KEYS)}")
    for key in ("width", "height"):
        value = yuv.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise TinyVmafError(f"{option}.{key}={value!r}: must be an integer > 0")
    fps = yuv.get("fps", 25.0)
    if not finite_number(fps) or fps <= 0:
        raise TinyVmafError(f"{option}.fps={fps!r}: must be a finite number > 0")
    pix_fmt = yuv.get("pix_fmt", "yuv420p")
    if pix_fmt not in RAW_SAMPLE_BYTES:
        raise TinyVmafError(f"{option}.pix_fmt={pix_fmt!r}: use one of {', '.join(sorted(RAW_SAMPLE_BYTES))}")
    return RawFormat(yuv["width"], yuv["height"], pix_fmt, float(fps))


def clips_in(folder: Path) -> list[Path]:
    """The clips of ``ref/`` or ``dis/``, hidden files left out; anything that is not a regular file
    (a folder, a FIFO, a device, a dangling link) is an error naming it, never skipped unsaid."""
    clips = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        try:
            mode = path.stat().st_mode
        except OSError:
            raise TinyVmafError(f"{path}: a link to nothing (a corpus folder holds clips only)") from None
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            link = "a link to " if path.is_symlink() else ""
            raise TinyVmafError(f"{path}: {link}{kind}, not a regular file (a corpus folder holds clips only)")
        clips.append(path)
    return clips


class DirectoryCorpus:
    """Any container ffmpeg decodes; ``.yuv`` files need ``yuv`` (width, height, pix_fmt, fps)."""

    def __init__(self, root: str | Path, name: str | None = None, yuv: dict | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.name = name or self.root.name
        self.raw = raw_format(yuv) if yuv else None

    @property
    def location(self) -> Path:
        return self.root

    def pairs(self) -> list[ClipPair]:
        ref_dir, dis_dir = self.root / "ref", self.root / "dis"
        for folder in (ref_dir, dis_dir):
            if not folder.is_dir():
                raise TinyVmafError(f"{folder}: no such folder (a directory corpus needs ref/ and dis/)")
        refs = {p.stem: p for p in clips_in(ref_dir)}
        pairs = []
        for dis in clips_in(dis_dir):
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
