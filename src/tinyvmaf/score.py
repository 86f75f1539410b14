"""Scoring with a shipped ONNX model: a video pair (libvmaf computes the features), a libvmaf
JSON log, or a whole corpus cache (``evaluate.py onnx=...``)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.corpus.directory import raw_format
from tinyvmaf.errors import TinyVmafError, instantiate_checked
from tinyvmaf.ffmpeg import RawFormat
from tinyvmaf.metrics import metrics_per_source
from tinyvmaf.onnx_io import OnnxVmaf
from tinyvmaf.runs import COVERAGES, INTERVAL
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.log import LibvmafLog, features_from_log, read_log


def score_log(model: OnnxVmaf, log_path: Path) -> dict:
    log = read_log(log_path)
    own = next((k for k in ("vmaf", model.teacher) if log.has(k)), None)
    return result(model, lambda names: log_columns(log, names), log.column(own) if own else None)


def log_columns(log: LibvmafLog, names: list[str]) -> np.ndarray:
    """Features by name: the six of vmaf_v0.6.1 whichever naming the log uses, others as logged."""
    if set(names) <= set(FEATURE_NAMES):
        return features_from_log(log)[:, [FEATURE_NAMES.index(n) for n in names]]
    return np.stack([log.column(n) for n in names], axis=1)


def score_pair(model: OnnxVmaf, libvmaf, reference: Path, distorted: Path, raw: RawFormat | None = None) -> dict:
    """libvmaf computes exactly the features the model names, where its metadata says they were
    measured (a v1.0.16 stand-in: at its display's size and bit depth), and its teacher's score.
    ``raw`` is what a headerless ``.yuv`` clip cannot say itself (a corpus's ``yuv`` option)."""
    videos = [Video(Path(path), raw if Path(path).suffix == ".yuv" else None) for path in (reference, distorted)]
    headerless = next((v.path for v in videos if v.path.suffix == ".yuv" and raw is None), None)
    if headerless:
        raise TinyVmafError(f"{headerless}: a .yuv file needs yuv='{{width: W, height: H, pix_fmt: yuv420p, fps: 25}}'")
    if raw and not any(v.raw for v in videos):
        raise TinyVmafError("yuv: given, but neither clip is a .yuv file")
    pair = ClipPair("cli", Path(distorted).stem, *videos)
    models = list(dict.fromkeys(["vmaf_v0.6.1", model.teacher]))  # every libvmaf run logs v0.6.1's six
    teacher = libvmaf.score(pair, models, model.measurement)
    return result(model, teacher.columns, teacher.scores[model.teacher])


def intervals_of(model: OnnxVmaf) -> dict[tuple[str, int], float]:
    """The file's conformal radii (``interval_<frame|clip|source>_<coverage>`` metadata), where it has them."""
    radii = {}
    for unit_coverage, key in INTERVAL.items():
        if key in model.metadata:
            try:
                radius = float(model.metadata[key])
            except ValueError:
                radius = math.nan
            if not (math.isfinite(radius) and radius >= 0):
                raise TinyVmafError(f"{model.path}: {key} metadata {model.metadata[key]!r:.40} is not a radius")
            radii[unit_coverage] = radius
    return radii


def result(model: OnnxVmaf, columns: Callable[[list[str]], np.ndarray], libvmaf: np.ndarray | None) -> dict:
    """Per-frame scores as columns (a log of millions of frames stays arrays) and their means."""
    tiny = model.predict(columns)
    scored = {"frame": np.arange(len(tiny)), "tiny": tiny}
    pooled = {"tiny_mean": float(tiny.mean())}
    pooled |= {INTERVAL[key]: radius for key, radius in intervals_of(model).items()}
    if libvmaf is not None:
        scored[model.teacher] = libvmaf
        pooled[f"{model.teacher}_mean"] = float(libvmaf.mean())
        pooled["mean_abs_diff"] = float(np.abs(tiny - libvmaf).mean())
    return {"model": str(model.path), "columns": scored, "pooled": pooled}


ROWS_PER_CHUNK = 10_000


def _rows(scored: dict) -> Iterator[list[tuple]]:
    """The per-frame rows, ``ROWS_PER_CHUNK`` at a time (frame numbers as ints, scores as floats)."""
    columns = list(scored["columns"].values())
    for start in range(0, len(columns[0]), ROWS_PER_CHUNK):
        yield list(zip(*(c[start : start + ROWS_PER_CHUNK].tolist() for c in columns)))


def render(scored: dict, fmt: str) -> Iterator[str]:
    """The scores as text, in pieces (a long log is never one string): ``table`` (aligned columns),
    ``json`` (``{"model", "frames": [{...}, ...], "pooled"}``) or ``csv``."""
    names = list(scored["columns"])
    if fmt == "json":
        yield json.dumps(scored["model"]).join(['{"model": ', ', "frames": ['])
        first = True
        for rows in _rows(scored):
            text = ",\n".join(json.dumps(dict(zip(names, row)), allow_nan=False) for row in rows)
            yield ("\n" if first else ",\n") + text
            first = False
        yield f'\n], "pooled": {json.dumps(scored["pooled"], allow_nan=False)}}}\n'
    elif fmt == "csv":
        yield ",".join(names) + "\n"
        for rows in _rows(scored):
            yield "".join(",".join(map(repr, row)) + "\n" for row in rows)
    elif fmt == "table":
        widths = [max(len(n), 9) for n in names]
        yield f"{scored['model']}\n" + " ".join(n.rjust(w) for n, w in zip(names, widths)) + "\n"
        line = " ".join(f"{{:>{w}d}}" if i == 0 else f"{{:>{w}.3f}}" for i, w in enumerate(widths)) + "\n"
        for rows in _rows(scored):
            yield "".join(line.format(*row) for row in rows)
        yield "pooled: " + "  ".join(f"{k} {v:.3f}" for k, v in scored["pooled"].items()) + "\n"
        yield from interval_line(scored["pooled"])
    else:
        raise TinyVmafError(f"format={fmt}: use table, json or csv")


def interval_line(pooled: dict) -> Iterator[str]:
    """The pooled score with how far from libvmaf's it may be: the model's conformal radius per
    clip, from the held-out clips of its LOSO (sources it never trained on)."""
    radii = {c: pooled[INTERVAL[("clip", c)]] for c in COVERAGES if INTERVAL[("clip", c)] in pooled}
    if radii:
        widest, *others = sorted(radii, reverse=True)
        also = "".join(f", ±{radii[c]:.2f} at {c} %" for c in others)
        yield (
            f"VMAF {pooled['tiny_mean']:.2f}, within ±{radii[widest]:.2f} of libvmaf ({widest} %{also}; "
            "conformal, from the held-out clips of its LOSO)\n"
        )


def score_command(cfg: DictConfig) -> int:
    """``score.py``: per-frame and pooled scores of a clip pair or of a libvmaf JSON log."""
    if cfg.format not in ("table", "json", "csv"):
        raise TinyVmafError(f"format={cfg.format}: use table, json or csv")
    model = OnnxVmaf(cfg.onnx)
    if cfg.get("log"):
        scored = score_log(model, Path(cfg.log))
    elif cfg.get("reference") and cfg.get("distorted"):
        raw = raw_format(cfg.yuv, "yuv") if cfg.get("yuv") else None
        scored = score_pair(model, instantiate_checked(cfg.libvmaf), Path(cfg.reference), Path(cfg.distorted), raw)
    else:
        raise TinyVmafError("give log=LIBVMAF_JSON, or reference=REF distorted=DIS")
    for piece in render(scored, cfg.format):
        sys.stdout.write(piece)
    return 0


def evaluate_onnx(cfg: DictConfig) -> int:
    """``evaluate.py onnx=MODEL``: PLCC/SROCC/RMSE of a shipped model over a corpus's cache."""
    model = OnnxVmaf(cfg.onnx)
    corpus = instantiate_checked(cfg.corpus)
    cache: TeacherCache = instantiate_checked(cfg.cache)
    table = cache.ready(corpus)
    teacher_scores = table.scores[cfg.teacher.model]
    predicted = model.predict(table.columns)
    report = Table(title=f"{model.path} on corpus {table.corpus} (teacher {cfg.teacher.model})")
    for name in ("source", "n", "PLCC", "SROCC", "RMSE"):
        report.add_column(name, justify="right")
    per_source = metrics_per_source(predicted, teacher_scores, table.source_of_frame, table.sources)
    everything = metrics_per_source(predicted, teacher_scores, np.zeros(len(table), dtype=np.int64), ["all"])
    for m in [*per_source, *everything]:
        report.add_row(
            m["source"],
            str(m["n"]),
            f"{m['plcc']:.4f}",
            f"{m['srocc']:.4f}",
            f"{m['rmse']:.3f}",
            end_section=m is per_source[-1],
        )
    Console().print(report)
    return 0
