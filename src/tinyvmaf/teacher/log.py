"""Reading libvmaf JSON logs, from the ffmpeg filter or the ``vmaf`` CLI, new and old naming.

Logs can come from another machine or another tool, so what is read is bounded and every value
is checked: the log must be a regular file of at most ``MAX_LOG_BYTES``; it is parsed frame by
frame into one array per metric (a log of millions of frames takes 8 bytes a value, not a
Python object per value); frames must carry ``frameNum`` 0, 1, 2... in order (a gap, a
duplicate or a frame out of place is an error); and a metric that is missing, null,
non-numeric or non-finite in some frame is one line naming the frame and the metric, once that
metric is asked for.
"""

from __future__ import annotations

import json
import math
import re
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.files import open_regular
from tinyvmaf.teacher import FEATURE_NAMES, TeacherResult
from tinyvmaf.teacher.function import load_teacher, shipped_teachers

# libvmaf < 2 and the float extractors write ``adm2``; libvmaf 2+ writes ``integer_adm2``.
LEGACY_NAMES = {name: name.removeprefix("integer_") for name in FEATURE_NAMES}

MAX_LOG_BYTES = 8 * 2**30
MAX_FRAMES = 20_000_000  # 93 hours at 60 frames/s
MAX_METRICS = 1024  # per frame
MAX_VALUE_BYTES = 16 * 2**20  # one JSON value of the log (a frame, or a top-level entry)
_CHUNK = 2**20
_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass
class LibvmafLog:
    """A log's frames, one array per metric (the metrics of its first frame)."""

    path: Path
    frames: int = 0
    values: dict[str, array] = field(default_factory=dict)
    problems: dict[str, tuple[int, str]] = field(default_factory=dict)  # metric -> its first non-number

    def has(self, name: str) -> bool:
        return name in self.values

    def column(self, name: str) -> np.ndarray:
        """One metric of every frame, each value a finite number."""
        if name not in self.values:
            raise TinyVmafError(f"{self.path}: frame 0: {name} is missing")
        values = np.frombuffer(self.values[name], dtype=np.float64).copy()
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            frame, problem = self.problems.get(name, (None, None))
            if frame != bad[0]:
                frame, problem = int(bad[0]), f"not finite ({values[bad[0]]})"
            raise TinyVmafError(f"{self.path}: frame {frame}: {name} is {problem}")
        return values

    def add(self, index: int, frame: object) -> None:
        if not isinstance(frame, dict) or not isinstance(frame.get("metrics"), dict):
            raise TinyVmafError(f"{self.path}: frame {index} of the libvmaf log is not an object with 'metrics'")
        number = frame.get("frameNum")
        if type(number) is not int or number != index:
            raise TinyVmafError(
                f"{self.path}: frame {index} of the libvmaf log has frameNum {number!r:.40}: frames must be numbered "
                "0, 1, 2, ... in order (a gap, a duplicate or a frame out of place)"
            )
        metrics = frame["metrics"]
        if index == 0:
            if len(metrics) > MAX_METRICS:
                raise TinyVmafError(f"{self.path}: frame 0 holds {len(metrics)} metrics, more than {MAX_METRICS}")
            self.values = {name: array("d") for name in metrics}
        for name, column in self.values.items():
            value = metrics.get(name)
            if type(value) is float or type(value) is int:  # not bool; NaN and inf are caught by column()
                column.append(value)
                continue
            column.append(math.nan)
            if name not in self.problems:
                what = ("null" if name in metrics else "missing") if value is None else f"not a number ({value!r:.40})"
                self.problems[name] = (index, what)
        self.frames = index + 1


class _Reader:
    """JSON values read one at a time from a file, with a bounded buffer."""

    def __init__(self, path: Path, file) -> None:
        self.path, self.file, self.buffer, self.at, self.eof = path, file, "", 0, False

    def _fill(self) -> bool:
        if self.eof:
            return False
        chunk = self.file.read(_CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buffer = self.buffer[self.at :] + chunk.decode("utf-8", errors="replace")
        self.at = 0
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end of the file)."""
        while True:
            self.at = _WHITESPACE.match(self.buffer, self.at).end()
            if self.at < len(self.buffer) or not self._fill():
                return self.buffer[self.at : self.at + 1]

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.bad(f"expected {char!r}")
        self.at += 1

    def value(self) -> object:
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.at)
            except (ValueError, RecursionError):
                if len(self.buffer) - self.at > MAX_VALUE_BYTES:
                    raise self.bad(f"a value larger than {MAX_VALUE_BYTES:,} bytes") from None
                if self._fill():
                    continue
                raise self.bad("not valid JSON") from None
            if end == len(self.buffer) and self._fill():  # a number may go on in the next chunk
                continue
            self.at = end
            return value

    def bad(self, why: str) -> TinyVmafError:
        return TinyVmafError(f"{self.path}: not a libvmaf JSON log ({why})")


def read_log(path: Path) -> LibvmafLog:
    """A libvmaf JSON log, checked and bounded as this module's docstring says."""
    path = Path(path)
    try:
        with open_regular(path, MAX_LOG_BYTES, "a libvmaf log", follow_links=True) as file:
            return _parsed_log(path, file)
    except FileNotFoundError:
        raise TinyVmafError(f"{path}: no such libvmaf log") from None


def _parsed_log(path: Path, file: BinaryIO) -> LibvmafLog:
    log = LibvmafLog(path)
    found = False
    reader = _Reader(path, file)
    reader.expect("{")
    while reader.peek() != "}":
        key = reader.value()
        if not isinstance(key, str):
            raise reader.bad("a key that is not a string")
        reader.expect(":")
        if key == "frames":
            if found:
                raise reader.bad("two 'frames' lists")
            _read_frames(reader, log)
            found = True
        else:
            reader.value()  # another entry (version, fps, pooled metrics...): read and dropped
        if reader.peek() != "}":
            reader.expect(",")
    reader.expect("}")
    if reader.peek():
        raise reader.bad("more after the log's closing '}'")
    if not found:
        raise TinyVmafError(f"{path}: not a libvmaf JSON log (no 'frames' list)")
    if not log.frames:
        raise TinyVmafError(f"{path}: the libvmaf log has zero frames")
    return log


def _read_frames(reader: _Reader, log: LibvmafLog) -> None:
    if reader.peek() != "[":
        raise TinyVmafError(f"{reader.path}: not a libvmaf JSON log (no 'frames' list)")
    reader.expect("[")
    index = 0
    while reader.peek() != "]":
        if index:
            reader.expect(",")
        if index >= MAX_FRAMES:
            raise TinyVmafError(f"{reader.path}: more than {MAX_FRAMES:,} frames")
        log.add(index, reader.value())
        index += 1
    reader.expect("]")


def features_from_log(log: LibvmafLog) -> np.ndarray:
    """The six features per frame, [n_frames, 6], whichever naming the log uses."""
    names = list(FEATURE_NAMES)
    if not all(log.has(n) for n in names):
        names = [LEGACY_NAMES[n] for n in FEATURE_NAMES]
    missing = [n for n in FEATURE_NAMES if not log.has(n) and not log.has(LEGACY_NAMES[n])]
    if missing:
        raise TinyVmafError(f"{log.path}: the libvmaf log lacks feature(s) {', '.join(missing)}")
    return np.stack([log.column(n) for n in names], axis=1)


def scores_from_log(log: LibvmafLog, models: list[str]) -> dict[str, np.ndarray]:
    missing = [m for m in models if not log.has(m)]
    if missing:
        raise TinyVmafError(f"{log.path}: the libvmaf log has no score for {', '.join(missing)}")
    return {m: log.column(m) for m in models}


def variants_from_log(log: LibvmafLog, models: list[str]) -> dict[str, np.ndarray]:
    """The other features the models read (vmaf_v0.6.1neg's ``_egl_1`` variants, a v1.0.16
    model's four), for the teacher function; a model whose JSON tinyvmaf does not ship has none."""
    shipped = set(shipped_teachers())
    names = dict.fromkeys(c for m in models if m in shipped for c in load_teacher(m).feature_columns)
    return {n: log.column(n) for n in names if n not in FEATURE_NAMES}


def result_from_log(path: Path, models: list[str]) -> TeacherResult:
    log = read_log(path)
    return TeacherResult(features_from_log(log), scores_from_log(log, models), variants_from_log(log, models))
