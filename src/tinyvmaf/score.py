"""Scoring with a shipped ONNX model: a video pair (libvmaf computes the features), a libvmaf
JSON log, or a whole corpus cache (``evaluate.py onnx=...``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from tinyvmaf.cache import TeacherCache
from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.errors import TinyVmafError, instantiate_checked
from tinyvmaf.metrics import metrics_per_source
from tinyvmaf.teacher import FEATURE_NAMES
from tinyvmaf.teacher.log import LEGACY_NAMES, column, features_from_log, read_log

LIBVMAF_MODEL = "vmaf_v0.6.1"


class OnnxVmaf:
    """A tiny VMAF model loaded from its ONNX file, checked against the tinyvmaf contract."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TinyVmafError(f"{self.path}: no such model file")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise TinyVmafError(f"{self.path}: not an ONNX model ({type(exc).__name__})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] != len(FEATURE_NAMES):
            shapes = [i.shape for i in inputs]
            raise TinyVmafError(
                f"{self.path}: expects input {shapes}, not one [N, {len(FEATURE_NAMES)}] feature tensor"
            )
        self.input_name = inputs[0].name
        self.feature_names = self._feature_names()

    def _feature_names(self) -> list[str]:
        raw = self.metadata.get("feature_names")
        if raw is None:
            raise TinyVmafError(f"{self.path}: no feature_names in its metadata")
        try:
            names = json.loads(raw)
        except json.JSONDecodeError:
            raise TinyVmafError(f"{self.path}: feature_names metadata is not a JSON list") from None
        legacy = {v: k for k, v in LEGACY_NAMES.items()}
        unknown = [n for n in names if n not in FEATURE_NAMES and n not in legacy]
        if unknown or len(names) != len(FEATURE_NAMES):
            raise TinyVmafError(f"{self.path}: feature_names {names} are not libvmaf's {list(FEATURE_NAMES)}")
        return [legacy.get(n, n) for n in names]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores for features given in FEATURE_NAMES order, reordered to the model's own order."""
        order = [FEATURE_NAMES.index(n) for n in self.feature_names]
        x = np.ascontiguousarray(features[:, order], dtype=np.float32)
        return self.session.run(None, {self.input_name: x})[0].astype(np.float64)


def score_log(model: OnnxVmaf, log_path: Path) -> dict:
    log = read_log(log_path)
    features = features_from_log(log, log_path)
    metrics = log["frames"][0]["metrics"]
    own = next((k for k in ("vmaf", LIBVMAF_MODEL) if k in metrics), None)
    libvmaf = column(log, own, log_path) if own else None
    return result(model, features, libvmaf)


def score_pair(model: OnnxVmaf, libvmaf, reference: Path, distorted: Path) -> dict:
    pair = ClipPair("cli", Path(distorted).stem, Video(Path(reference)), Video(Path(distorted)))
    teacher = libvmaf.score(pair, [LIBVMAF_MODEL])
    return result(model, teacher.features, teacher.scores[LIBVMAF_MODEL])


def result(model: OnnxVmaf, features: np.ndarray, libvmaf: np.ndarray | None) -> dict:
    tiny = model.predict(features)
    out = {
        "model": str(model.path),
        "frames": [{"frame": i, "tiny": float(t)} for i, t in enumerate(tiny)],
        "pooled": {"tiny_mean": float(tiny.mean())},
    }
    if libvmaf is not None:
        for row, v in zip(out["frames"], libvmaf):
            row[LIBVMAF_MODEL] = float(v)
        out["pooled"][f"{LIBVMAF_MODEL}_mean"] = float(libvmaf.mean())
        out["pooled"]["mean_abs_diff"] = float(np.abs(tiny - libvmaf).mean())
    return out


def render(scored: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(scored, indent=2, allow_nan=False)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(scored["frames"][0]))
        writer.writeheader()
        writer.writerows(scored["frames"])
        return buffer.getvalue()
    if fmt != "table":
        raise TinyVmafError(f"format={fmt}: use table, json or csv")
    table = Table(title=f"{scored['model']}")
    for name in scored["frames"][0]:
        table.add_column(name, justify="right")
    for row in scored["frames"]:
        table.add_row(*(str(v) if isinstance(v, int) else f"{v:.3f}" for v in row.values()))
    buffer = io.StringIO()
    console = Console(file=buffer, width=100)
    console.print(table)
    console.print("pooled: " + "  ".join(f"{k} {v:.3f}" for k, v in scored["pooled"].items()))
    return buffer.getvalue()


def score_command(cfg: DictConfig) -> int:
    """``score.py``: per-frame and pooled scores of a clip pair or of a libvmaf JSON log."""
    model = OnnxVmaf(cfg.onnx)
    if cfg.get("log"):
        scored = score_log(model, Path(cfg.log))
    elif cfg.get("reference") and cfg.get("distorted"):
        scored = score_pair(model, instantiate_checked(cfg.libvmaf), Path(cfg.reference), Path(cfg.distorted))
    else:
        raise TinyVmafError("give log=LIBVMAF_JSON, or reference=REF distorted=DIS")
    print(render(scored, cfg.format), end="")
    return 0


def evaluate_onnx(cfg: DictConfig) -> int:
    """``evaluate.py onnx=MODEL``: PLCC/SROCC/RMSE of a shipped model over a corpus's cache."""
    model = OnnxVmaf(cfg.onnx)
    corpus = instantiate_checked(cfg.corpus)
    cache: TeacherCache = instantiate_checked(cfg.cache)
    table = cache.ready(corpus)
    teacher_scores = table.scores[cfg.teacher.model]
    predicted = model.predict(table.features)
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
