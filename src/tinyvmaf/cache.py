"""The teacher cache: what real libvmaf says about every frame of a corpus, one JSON per clip.

Layout under ``root/<corpus name>/``:

- ``clips/<asset>.json``: one entry per distorted clip (features, per-model scores, key, provenance);
- ``frames.npz``: every entry in columnar form, rewritten whenever an entry changes, so that
  training loads ~15,000 frames in milliseconds;
- ``summary.json``: per source, clips, frames and teacher score statistics;
- ``inputs.json``: memo of input-file digests (by size and mtime) and of the libvmaf probe,
  so that a warm build neither rehashes unchanged files nor runs libvmaf;
- ``corpus.json``: where the corpus lives, so that two corpora of one name never share entries.

An entry's key hashes the content of both input files, their raw format, the teacher model set,
the backend and libvmaf's version: a change of any of them recomputes exactly the clips it touches.
Entries are written atomically, so an interrupted build resumes where it stopped; builds of one
corpus take turns on a lock of its folder. Every file here is read only if it is a regular file
of bounded size: anything else is damage, recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tinyvmaf import ffmpeg
from tinyvmaf.corpus import ClipPair, Corpus, Video, sources_of
from tinyvmaf.errors import TinyVmafError, instantiate_checked
from tinyvmaf.ffmpeg import tools_stopped_on_interrupt
from tinyvmaf.files import atomic_path, folder_lock, inside, read_bounded, sha256_file
from tinyvmaf.teacher import FEATURE_NAMES, Libvmaf, Measurement, named_columns

SCHEMA = 2  # 2: feature variants (e.g. *_egl_1 for vmaf_v0.6.1neg) stored too
# An entry holds ~150 bytes a frame with three models: 256 MiB is over 8 hours at 60 fps.
MAX_ENTRY_BYTES = 256 * 2**20


@dataclass
class Failure:
    asset: str
    error: str


@dataclass
class BuildReport:
    corpus: str
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    repaired: list[Failure] = field(default_factory=list)  # damaged entries found and recomputed
    unwritten: str | None = None  # why frames.npz or summary.json could not be written (a full disk)

    def warn_left_out(self) -> None:
        """For commands that go on with the clips that did build; none can if frames.npz was not written."""
        for failure in self.failures:
            print(f"warning: {failure.asset} left out of the cache: {failure.error}")
        if self.unwritten:
            raise TinyVmafError(self.unwritten)


@dataclass
class FrameTable:
    """Every cached frame of a corpus as arrays; row i is one distorted frame."""

    corpus: str
    manifest: str  # hash of the entries behind the table: identifies the exact data
    libvmaf_version: str
    backend: str
    features: np.ndarray  # [n, 6] float64, FEATURE_NAMES order
    scores: dict[str, np.ndarray]  # teacher model -> [n]
    clip: np.ndarray  # [n] index into clips
    clips: list[str]  # asset names
    clip_source: list[str]  # the source of each clip
    sources: list[str]
    variants: dict[str, np.ndarray] = field(default_factory=dict)  # feature variants, e.g. integer_adm2_egl_1

    def columns(self, names: tuple[str, ...] | list[str]) -> np.ndarray:
        """[n, len(names)] of features or feature variants, by libvmaf log name."""
        return named_columns(self.features, self.variants, names, f"the cache of corpus {self.corpus!r}")

    @property
    def source_of_frame(self) -> np.ndarray:
        """[n] index into ``sources``."""
        index = {s: i for i, s in enumerate(self.sources)}
        return np.array([index[s] for s in self.clip_source], dtype=np.int64)[self.clip]

    def __len__(self) -> int:
        return len(self.features)

    @property
    def label(self) -> str:
        """``corpus:hash``: which corpus, and exactly which data (recorded with runs and models)."""
        return f"{self.corpus}:{self.manifest[:12]}"


class TeacherCache:
    """The cache of one teacher set. With ``num_shards`` > 1 and ``shard`` set, a build computes
    only that shard's clips (balanced by cost across shards) and leaves consolidation to a plain
    build, which then only reads: the way to spread a corpus over a cluster's jobs."""

    def __init__(
        self,
        root: str | Path,
        libvmaf: Libvmaf,
        models: list[str],
        n_jobs: int | None = None,
        num_shards: int = 1,
        shard: int | None = None,
        display: list[int] | None = None,
        bit_depth: int | None = None,
    ) -> None:
        self.measurement = Measurement(display, bit_depth)
        self.root = Path(root).expanduser().resolve()
        self.libvmaf = libvmaf
        self.models = list(models)
        if not self.models:
            raise TinyVmafError("cache.teachers: at least one teacher model is needed")
        self.n_jobs = n_jobs or os.cpu_count() or 1
        if not (isinstance(num_shards, int) and num_shards >= 1):
            raise TinyVmafError(f"cache.num_shards={num_shards!r}: must be an integer >= 1")
        if shard is not None and not (isinstance(shard, int) and 0 <= shard < num_shards):
            raise TinyVmafError(f"cache.shard={shard!r}: must be an integer in [0, {num_shards})")
        self.num_shards, self.shard = num_shards, shard

    def folder(self, corpus: Corpus) -> Path:
        """``<root>/<corpus>``, or ``<root>/@1920x1080p10/<corpus>`` for a display-resolution
        measurement: a corpus's native cache stays valid beside it (a corpus name's own ``@`` is
        percent-encoded, so no corpus's folder is ever a measurement's)."""
        label = self.measurement.label
        return inside(self.root / f"@{label}" if label else self.root, corpus.name, what="corpus name")

    def entry_path(self, corpus: Corpus, asset: str) -> Path:
        return inside(self.folder(corpus) / "clips", asset, ".json", what=f"corpus {corpus.name!r}: clip name")

    # -- build ------------------------------------------------------------------------------
    def build(self, corpus: Corpus, pairs: list[ClipPair] | None = None, compute: bool = True) -> BuildReport:
        """Compute every missing or stale entry (of this shard, when sharded) and consolidate;
        a warm cache runs no libvmaf at all. ``compute=False`` only consolidates what the shards
        wrote: a missing entry is a failure, and an entry of another libvmaf version an error."""
        folder = self.folder(corpus)
        folder.mkdir(parents=True, exist_ok=True)
        # Shards of one build write distinct entries and run together; a whole build (or the
        # consolidation after shards) waits for them and for any other whole build of the corpus.
        busy = f"waiting for another build of corpus {corpus.name!r} ({folder}) to finish"
        with folder_lock(folder, shared=self.shard is not None, busy=busy):
            self._claim(corpus, write=True)
            return self._build_locked(corpus, corpus.pairs() if pairs is None else pairs, compute)

    def _claim(self, corpus: Corpus, write: bool = False) -> None:
        """A cache folder is named after its corpus; ``corpus.json`` records where that corpus
        lives, so that another corpus of the same name (two folders both called ``clips``) is
        refused instead of sharing, and overwriting, its entries. A claim whose corpus is gone
        (the corpus was moved) passes to the corpus asking: entries are keyed by content."""
        claim = self.folder(corpus) / "corpus.json"
        here = str(Path(corpus.location).expanduser().resolve())
        try:
            held = json.loads(read_bounded(claim, 2**16, "a corpus claim")).get("location")
        except (FileNotFoundError, TinyVmafError, ValueError, AttributeError):
            held = None  # none yet, or damaged: the corpus asking claims the folder
        if isinstance(held, str) and held != here and os.path.lexists(held):
            raise TinyVmafError(
                f"{claim.parent}: holds the cache of corpus {corpus.name!r} at {held}; the corpus at {here} "
                "has the same name: set corpus.name to tell them apart"
            )
        if write and held != here:
            with atomic_path(claim) as tmp:
                tmp.write_text(json.dumps({"corpus": corpus.name, "location": here}))

    def _build_locked(self, corpus: Corpus, pairs: list[ClipPair], compute: bool) -> BuildReport:
        folder = self.folder(corpus)
        inputs = _InputMemo(folder / "inputs.json")
        version = inputs.probe(self.libvmaf, self.models)
        report = BuildReport(corpus.name)
        if self.shard is not None:
            pairs = shard_of(pairs, self.shard, self.num_shards)
        todo: list[tuple[ClipPair, str]] = []
        keys: dict[str, str] = {}
        for pair in pairs:
            try:
                key = keys[pair.asset] = self._key(pair, inputs, version)
                path = self.entry_path(corpus, pair.asset)
            except (TinyVmafError, OSError) as exc:
                report.failures.append(Failure(pair.asset, _one_line(exc)))
                continue
            try:
                read_entry(path, key, self.models)
                report.reused.append(pair.asset)
            except StaleEntry as stale:
                if not compute and stale.libvmaf_version not in (None, version):
                    raise TinyVmafError(
                        f"{path}: computed with libvmaf {stale.libvmaf_version}, but this machine has {version}; "
                        "every shard must run the same libvmaf (a mixed cache is refused)"
                    ) from None
                todo.append((pair, key))
            except DamagedEntry as exc:
                report.repaired.append(Failure(pair.asset, str(exc)))
                todo.append((pair, key))
        inputs.save()
        if not compute:
            report.failures += [Failure(p.asset, "no shard computed it") for p, _ in todo]
        elif todo:
            self._compute(corpus, todo, version, report)
        if self.shard is None:  # a shard leaves frames.npz to the consolidating build
            failed = {f.asset for f in report.failures}
            try:
                self._consolidate(corpus, [(p, keys[p.asset]) for p in pairs if p.asset not in failed], report)
            except OSError as exc:  # the entries are written and kept: a rerun with space consolidates them
                report.unwritten = (
                    f"{folder}: frames.npz cannot be written ({exc.strerror or type(exc).__name__}); "
                    "every clip entry written so far is kept: free space and rerun"
                )
        return report

    def _key(self, pair: ClipPair, inputs: _InputMemo, version: str) -> str:
        described = {
            "schema": SCHEMA,
            "reference": _describe(pair.reference, inputs),
            "distorted": _describe(pair.distorted, inputs),
            "models": sorted(self.models),
            "backend": self.libvmaf.backend,
            "libvmaf_version": version,
            **({"measurement": self.measurement.label} if self.measurement.label else {}),  # native keys unchanged
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()

    def _compute(self, corpus: Corpus, todo: list[tuple[ClipPair, str]], version: str, report: BuildReport) -> None:
        columns = (TextColumn("libvmaf {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # Tools are stopped before the pool waits for its threads: Ctrl-C or SIGTERM ends at once.
        with (
            Progress(*columns, transient=True) as progress,
            ThreadPoolExecutor(self.n_jobs) as pool,
            tools_stopped_on_interrupt(pool),
        ):
            task = progress.add_task(corpus.name, total=len(todo))
            futures = {pool.submit(self._compute_one, corpus, p, k, version): p for p, k in todo}
            for future in as_completed(futures):
                pair = futures[future]
                try:
                    future.result()
                    report.built.append(pair.asset)
                except Exception as exc:  # one bad clip must not stop the others
                    report.failures.append(Failure(pair.asset, _one_line(exc)))
                progress.advance(task)

    def _compute_one(self, corpus: Corpus, pair: ClipPair, key: str, version: str) -> None:
        result = self.libvmaf.score(pair, self.models, self.measurement)
        entry = {
            "schema": SCHEMA,
            "key": key,
            "source": pair.source,
            "asset": pair.asset,
            "reference": str(pair.reference.path),
            "distorted": str(pair.distorted.path),
            "dmos": pair.dmos,
            "backend": self.libvmaf.backend,
            "libvmaf_version": version,
            "n_frames": len(result.features),
            "features": {"names": list(FEATURE_NAMES), "per_frame": result.features.tolist()},
            "scores": {m: s.tolist() for m, s in result.scores.items()},
            "variants": {n: v.tolist() for n, v in result.variants.items()},
        }
        with atomic_path(self.entry_path(corpus, pair.asset)) as tmp:
            tmp.write_text(json.dumps(entry))

    # -- load -------------------------------------------------------------------------------
    def _consolidate(self, corpus: Corpus, entries: list[tuple[ClipPair, str]], report: BuildReport) -> None:
        """Rewrite ``frames.npz`` if the set of entries behind it changed; an entry that cannot be
        read now becomes a failure of this build, never a crash."""
        folder = self.folder(corpus)
        manifest = _manifest(entries)
        npz = folder / "frames.npz"
        if npz.exists() and self._intact_manifest(corpus) == manifest:
            return
        read, pairs = [], []
        for pair, key in entries:
            try:
                read.append(read_entry(self.entry_path(corpus, pair.asset), key, self.models))
                pairs.append(pair)
            except (StaleEntry, DamagedEntry) as exc:
                report.failures.append(Failure(pair.asset, f"its cache entry cannot be used: {exc}"))
        if len(pairs) < len(entries):
            manifest = _manifest([(p, e["key"]) for p, e in zip(pairs, read, strict=True)])
        if not read:
            return
        arrays = {
            "manifest": np.array(manifest),
            "corpus": np.array(corpus.name),
            "libvmaf_version": np.array(read[0]["libvmaf_version"]),
            "backend": np.array(read[0]["backend"]),
            "features": np.concatenate([np.asarray(e["features"]["per_frame"], dtype=np.float64) for e in read]),
            "clip": np.concatenate([np.full(e["n_frames"], i, dtype=np.int64) for i, e in enumerate(read)]),
            "clips": np.array([e["asset"] for e in read]),
            "clip_source": np.array([e["source"] for e in read]),
            "sources": np.array(sources_of(pairs)),
            "models": np.array(self.models),
        }
        shared_variants = set.intersection(*(set(e["variants"]) for e in read))
        for name in sorted(shared_variants):
            arrays[f"variant:{name}"] = np.concatenate(
                [np.asarray(e["variants"][name], dtype=np.float64) for e in read]
            )
        for m in self.models:
            arrays[f"score:{m}"] = np.concatenate([np.asarray(e["scores"][m], dtype=np.float64) for e in read])
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        self._write_summary(corpus, self.load(corpus))

    def ready(self, corpus: Corpus) -> FrameTable:
        """The corpus's frames, after building whatever is missing; clips that fail are left out with a warning."""
        self.build(corpus).warn_left_out()
        return self.load(corpus)

    def _intact_manifest(self, corpus: Corpus) -> str | None:
        """The manifest of a ``frames.npz`` that loads whole; a damaged one is rebuilt."""
        try:
            return self.load(corpus).manifest
        except TinyVmafError:
            return None

    def load(self, corpus: Corpus) -> FrameTable:
        """The consolidated frames of ``corpus``; raises if the cache was never built or its
        ``frames.npz`` is damaged (truncated, not a regular file, object arrays)."""
        npz = self.folder(corpus) / "frames.npz"
        self._claim(corpus)
        if not npz.exists():
            raise TinyVmafError(
                f"{npz}: the teacher cache of corpus {corpus.name!r} is missing or empty; build it first"
            )
        if not stat.S_ISREG(npz.stat().st_mode):
            raise TinyVmafError(f"{npz}: not a regular file; build_cache.py writes it anew")
        try:
            return _read_table(npz)
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise TinyVmafError(f"{npz}: damaged ({_one_line(exc)}); build_cache.py writes it anew") from None

    # -- summary ----------------------------------------------------------------------------
    def summary(self, table: FrameTable) -> dict:
        per_source = {}
        source_of_frame = table.source_of_frame
        for i, source in enumerate(table.sources):
            rows = source_of_frame == i
            per_source[source] = {
                "clips": sum(1 for s in table.clip_source if s == source),
                "frames": int(rows.sum()),
                "teachers": {m: _stats(s[rows]) for m, s in table.scores.items()},
            }
        return {
            "corpus": table.corpus,
            "backend": table.backend,
            "libvmaf_version": table.libvmaf_version,
            "sources": per_source,
            "total": {
                "sources": len(table.sources),
                "clips": len(table.clips),
                "frames": len(table),
                "teachers": {m: _stats(s) for m, s in table.scores.items()},
            },
        }

    def _write_summary(self, corpus: Corpus, table: FrameTable) -> None:
        with atomic_path(self.folder(corpus) / "summary.json") as tmp:
            tmp.write_text(json.dumps(self.summary(table), indent=2))


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, TinyVmafError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


def shard_of(pairs: list[ClipPair], shard: int, num_shards: int) -> list[ClipPair]:
    """The pairs of one shard: longest first, each to the least loaded shard, cost = frames x pixels
    of the reference (what libvmaf scores at). Every shard computes the same split."""
    costs = {p.asset: _cost(p.reference) for p in pairs}
    loads = [0] * num_shards
    mine = set()
    for pair in sorted(pairs, key=lambda p: (-costs[p.asset], p.asset)):
        lightest = loads.index(min(loads))
        loads[lightest] += costs[pair.asset]
        if lightest == shard:
            mine.add(pair.asset)
    return [p for p in pairs if p.asset in mine]


@functools.cache
def _cost(video: Video) -> int:
    try:
        info = ffmpeg.probe(video.path, video.raw)
    except TinyVmafError:
        return 0  # the clip fails in whichever shard takes it, with its one-line reason
    return info.n_frames * info.width * info.height


class StaleEntry(Exception):
    """No entry, or one computed from other inputs, models or libvmaf: recompute it, silently."""

    def __init__(self, reason: str, libvmaf_version: str | None = None) -> None:
        super().__init__(reason)
        self.libvmaf_version = libvmaf_version  # the stale entry's, when it has one


class DamagedEntry(Exception):
    """An entry that does not parse or disagrees with itself (a truncated file, an edit): recompute it and say so."""


def read_entry(path: Path, key: str, models: list[str]) -> dict:
    """A cache entry, parsed and checked before anything uses it: schema and key as expected, and
    one finite row of features and of every model's score per frame."""
    try:
        entry = json.loads(read_bounded(path, MAX_ENTRY_BYTES, "a cache entry"))
    except FileNotFoundError:
        raise StaleEntry("no entry") from None
    except TinyVmafError as exc:  # a link, a FIFO, a device: replaced by the recomputed entry
        raise DamagedEntry(str(exc).removeprefix(f"{path.parent}/")) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise DamagedEntry(f"{path.name} does not parse ({_one_line(exc)})") from None
    if not isinstance(entry, dict) or entry.get("schema") != SCHEMA or not isinstance(entry.get("key"), str):
        raise DamagedEntry(f"{path.name} is not a schema-{SCHEMA} cache entry")
    if entry["key"] != key:
        raise StaleEntry("computed from other inputs", entry.get("libvmaf_version"))
    try:
        n = entry["n_frames"]
        features = np.asarray(entry["features"]["per_frame"], dtype=np.float64)
        columns = [
            np.asarray(v, dtype=np.float64)
            for v in (*(entry["scores"][m] for m in models), *entry["variants"].values())
        ]
        named = (
            entry["features"]["names"] == list(FEATURE_NAMES)
            and isinstance(entry["asset"], str)
            and isinstance(entry["source"], str)
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DamagedEntry(f"{path.name} lacks or garbles a field ({_one_line(exc)})") from None
    if not (
        named
        and isinstance(n, int)
        and n > 0
        and features.shape == (n, len(FEATURE_NAMES))
        and all(c.shape == (n,) for c in columns)
    ):
        raise DamagedEntry(f"{path.name}: its frame count, feature names or array shapes disagree")
    if not (np.isfinite(features).all() and all(np.isfinite(c).all() for c in columns)):
        raise DamagedEntry(f"{path.name} holds non-finite values")
    return entry


def _manifest(entries: list[tuple[ClipPair, str]]) -> str:
    """What identifies the entries behind a frames.npz: each clip's name and key, in order."""
    return hashlib.sha256(json.dumps([[p.asset, k] for p, k in entries]).encode()).hexdigest()


def _read_table(npz: Path) -> FrameTable:
    with np.load(npz) as z:  # allow_pickle stays False: an object array is damage, never code
        models = [str(m) for m in z["models"]]
        return FrameTable(
            corpus=str(z["corpus"]),
            manifest=str(z["manifest"]),
            libvmaf_version=str(z["libvmaf_version"]),
            backend=str(z["backend"]),
            features=z["features"],
            scores={m: z[f"score:{m}"] for m in models},
            variants={k.removeprefix("variant:"): z[k] for k in z.files if k.startswith("variant:")},
            clip=z["clip"],
            clips=[str(c) for c in z["clips"]],
            clip_source=[str(s) for s in z["clip_source"]],
            sources=[str(s) for s in z["sources"]],
        )


def _describe(video: Video, inputs: _InputMemo) -> dict:
    return {"sha256": inputs.digest(video.path), "raw": asdict(video.raw) if video.raw else None}


class _InputMemo:
    """Digests of input files, remembered by (size, mtime), and libvmaf probe results."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:  # only a memo: whatever cannot be read is rebuilt by hashing again
            self.data = json.loads(read_bounded(path, MAX_ENTRY_BYTES, "an input memo"))
        except (OSError, TinyVmafError, ValueError, RecursionError):
            self.data = {}
        if not (isinstance(self.data, dict) and all(isinstance(self.data.get(k), dict) for k in ("files", "probes"))):
            self.data = {"files": {}, "probes": {}}

    def digest(self, path: Path) -> str:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise TinyVmafError(f"{path}: no such file") from None
        if not path.is_file():
            raise TinyVmafError(f"{path}: not a file")
        stamp = [stat.st_size, stat.st_mtime_ns]
        known = self.data["files"].get(str(path))
        if known and known[:2] == stamp:
            return known[2]
        digest = sha256_file(path)
        self.data["files"][str(path)] = [*stamp, digest]
        return digest

    def probe(self, libvmaf: Libvmaf, models: list[str]) -> str:
        """libvmaf's version, after checking the models load; remembered per binary and model set."""
        binary = Path(libvmaf.binary)
        stamp = binary.stat().st_mtime_ns if binary.exists() else None
        probe_key = json.dumps([libvmaf.backend, str(binary), stamp, sorted(models)])
        if probe_key not in self.data["probes"]:
            libvmaf.check_models(models)
            self.data["probes"][probe_key] = libvmaf.version()
        return self.data["probes"][probe_key]

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.data))


def build_cache(cfg: DictConfig) -> int:
    """``build_cache.py``: build the cache of the configured corpus (or one shard of it), print and
    save its summary. ``compute=false`` only consolidates what shards wrote.

    Exit status 1 if any clip failed; the failures are listed last, the other clips are kept.
    """
    corpus = instantiate_checked(cfg.corpus)
    cache: TeacherCache = instantiate_checked(cfg.cache)
    report = cache.build(corpus, compute=cfg.get("compute", True))
    console = Console()
    summary_path = cache.folder(corpus) / "summary.json"
    if cache.shard is not None:
        console.print(f"shard {cache.shard} of {cache.num_shards}: its clips are in {cache.folder(corpus) / 'clips'}")
    elif summary_path.exists():
        console.print(summary_table(json.loads(summary_path.read_text()), OmegaConf.select(cfg, "teacher.model")))
        console.print(f"summary: {summary_path}")
    console.print(f"{len(report.built)} clip(s) computed, {len(report.reused)} reused from the cache")
    for damaged in report.repaired:
        console.print(f"[yellow]repaired[/yellow] {damaged.asset}: {damaged.error}; recomputed", soft_wrap=True)
    for failure in report.failures:
        console.print(f"[red]failed[/red] {failure.asset}: {failure.error}", soft_wrap=True)
    if report.failures:
        console.print(f"[red]{len(report.failures)} clip(s) failed[/red]")
    if report.unwritten:
        raise TinyVmafError(report.unwritten)
    return 1 if report.failures else 0


def summary_table(summary: dict, teacher: str | None) -> Table:
    """The configured teacher's scores per source (summary.json has every cached model's)."""
    models = [teacher] if teacher in summary["total"]["teachers"] else list(summary["total"]["teachers"])[:1]
    table = Table(
        title=f"teacher cache: {summary['corpus']} (libvmaf {summary['libvmaf_version']}, {summary['backend']})"
    )
    table.add_column("source")
    table.add_column("clips", justify="right")
    table.add_column("frames", justify="right")
    for m in models:
        table.add_column(f"{m} mean [min, max]", justify="right")
    rows = [*summary["sources"].items(), ("total", summary["total"])]
    for name, row in rows:
        stats = [
            f"{row['teachers'][m]['mean']:.2f} [{row['teachers'][m]['min']:.2f}, {row['teachers'][m]['max']:.2f}]"
            for m in models
        ]
        table.add_row(name, str(row["clips"]), str(row["frames"]), *stats, end_section=name == rows[-2][0])
    return table
