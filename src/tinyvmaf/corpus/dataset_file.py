"""Netflix-style VMAF dataset files (the format of ``NFLX_dataset_public.py``), read without running them.

The file is Python, but only its assignments are read: literals, names assigned earlier in
the file and ``+`` between them (``ref_dir + '/BigBuckBunny_25fps.yuv'``). Anything else is
refused, so a dataset file can never execute code. Reading is bounded: the file's size, the
nesting depth, the size of every value built and of all of them together are capped, so a
file of a few lines cannot make the reader build gigabytes (``a = a + a``, forty times).
Every refusal is one line naming ``file:line``.
"""

from __future__ import annotations

import ast
import math
import os
from pathlib import Path
from typing import Any

from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.ffmpeg import RAW_SAMPLE_BYTES, RawFormat

MAX_FILE_BYTES = 16 * 2**20  # NFLX_dataset_public.py is 14 KB
MAX_DEPTH = 32  # nesting of lists, dicts and + chains
MAX_VALUE_SIZE = 2**20  # characters of one string, items of one list or dict
MAX_TOTAL_SIZE = 2**24  # characters and items of every value the file builds, together
_CONSTANTS = (str, int, float, bool, type(None))
_KEYS = (str, int, float, bool)


def read_dataset_file(path: str | Path) -> _Reader:
    """The file's top-level assignments (``.values``, plain values) and their lines (``.lines``)."""
    path = Path(path)
    if not path.is_file():
        raise TinyVmafError(f"{path}: no such dataset file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TinyVmafError(
            f"{path}: {path.stat().st_size} bytes, more than a dataset file may hold ({MAX_FILE_BYTES})"
        )
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise TinyVmafError(f"{path}:{exc.lineno}: not valid Python ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise TinyVmafError(f"{path}: too deeply nested or too large to read ({type(exc).__name__})") from None
    reader = _Reader(path)
    reader.assignments(tree)
    return reader


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: dict[str, Any] = {}
        self.lines: dict[str, int] = {}  # where each name was assigned, for field errors
        self.dict_lines: dict[int, int] = {}  # id() of each dict built -> its line: an entry's own line
        self.total = 0

    def assignments(self, tree: ast.Module) -> None:
        for node in tree.body:
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
                continue  # a docstring
            if not (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)):
                self.refuse(node, f"only literal assignments are allowed, found {type(node).__name__}")
            value = self.literal(node.value, depth=0)
            for target in node.targets:
                self.values[target.id] = value
                self.lines[target.id] = node.lineno

    def refuse(self, node: ast.AST, what: str) -> None:
        raise TinyVmafError(f"{self.path}:{getattr(node, 'lineno', '?')}: {what}")

    def literal(self, node: ast.AST, depth: int) -> Any:
        if depth > MAX_DEPTH:
            self.refuse(node, f"nested more than {MAX_DEPTH} deep")
        match node:
            case ast.Constant(value=value) if isinstance(value, _CONSTANTS):
                return self.counted(node, value)
            case ast.UnaryOp(op=ast.USub() | ast.UAdd(), operand=ast.Constant(value=int() | float() as number)) if (
                not isinstance(number, bool)
            ):
                return -number if isinstance(node.op, ast.USub) else number
            case ast.List() | ast.Tuple():
                return self.counted(node, [self.literal(item, depth + 1) for item in node.elts])
            case ast.Dict():
                if any(k is None for k in node.keys):
                    self.refuse(node, "only literal assignments are allowed, found a ** in a dict")
                items = {}
                for k, v in zip(node.keys, node.values, strict=True):
                    key = self.literal(k, depth + 1)
                    if not isinstance(key, _KEYS):
                        self.refuse(k, f"a dict key must be a string or a number, found {type(key).__name__}")
                    items[key] = self.literal(v, depth + 1)
                self.dict_lines[id(items)] = node.lineno
                return self.counted(node, items)
            case ast.Name() if node.id in self.values:
                return self.values[node.id]
            case ast.BinOp(op=ast.Add()):
                return self.plus(node, depth)
        self.refuse(node, f"only literal assignments are allowed, found {ast.unparse(node)!r}")

    def plus(self, node: ast.BinOp, depth: int) -> Any:
        """``a + b + c``: strings, lists or numbers of one kind, the result's size checked before it is built."""
        terms: list[ast.AST] = []
        while isinstance(node, ast.BinOp) and isinstance(
            node.op, ast.Add
        ):  # a chain is left-deep: walk it, no recursion
            terms.append(node.right)
            node = node.left
        terms.append(node)
        values = [self.literal(t, depth + 1) for t in reversed(terms)]
        kinds = {
            "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__ for v in values
        }
        if kinds == {"number"}:
            return sum(values)
        if kinds not in ({"str"}, {"list"}):
            self.refuse(node, f"+ joins strings, lists or numbers of one kind, found {' + '.join(sorted(kinds))}")
        return self.counted(
            node,
            "".join(values) if kinds == {"str"} else [x for v in values for x in v],
            size=sum(len(v) for v in values),
        )

    def counted(self, node: ast.AST, value: Any, size: int | None = None) -> Any:
        size = len(value) if size is None and isinstance(value, (str, list, dict)) else size or 1
        if size > MAX_VALUE_SIZE:
            self.refuse(node, f"a value of {size} characters or items, more than {MAX_VALUE_SIZE}")
        self.total += size
        if self.total > MAX_TOTAL_SIZE:
            self.refuse(node, f"the file builds more than {MAX_TOTAL_SIZE} characters and items in all")
        return value


class DatasetFileCorpus:
    """Raw YUV clips (``yuv420p`` or ``yuv420p10le``) listed by a dataset file."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        read = read_dataset_file(self.path)
        self._values, self._lines, self._dict_lines = read.values, read.lines, read.dict_lines
        self.name = name or self._field("dataset_name", str, self.path.stem)

    def _where(self, key: str, entry: str) -> str:
        """``file:line`` of the assignment holding ``key`` (or the entry's list), for field errors."""
        line = self._lines.get(entry.partition("[")[0] if entry else key)
        return f"{self.path}:{line}" if line else str(self.path)

    def _entry_line(self, entry: dict, list_key: str) -> str:
        """``file:line`` of one ref/dis entry (its own dict's line, else its list's)."""
        line = self._dict_lines.get(id(entry), self._lines.get(list_key))
        return f"{self.path}:{line}" if line else str(self.path)

    def _unique(self, seen: dict[str, str], key: str, where: str, what: str) -> None:
        """Refuse a second entry under the same name (1 and '1' are the same: names are text)."""
        if key in seen:
            raise TinyVmafError(f"{where}: {what} is also that of {seen[key]}: each entry needs its own")
        seen[key] = where

    def _field(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., within: dict | None = None, entry: str = ""
    ) -> Any:
        """One field, type-checked: top-level (``within=None``) or of a ref/dis entry."""
        values = self._values if within is None else within
        if key not in values:
            if default is ...:
                raise TinyVmafError(f"{self._where(key, entry)}: {entry}missing {key!r}")
            return default
        value = values[key]
        if (
            isinstance(value, bool)
            and bool not in (kind if isinstance(kind, tuple) else (kind,))
            or not isinstance(value, kind)
        ):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise TinyVmafError(f"{self._where(key, entry)}: {entry}{key} must be {names}, found {value!r:.60}")
        if kind is str and not value:
            raise TinyVmafError(f"{self._where(key, entry)}: {entry}{key} is empty")
        return value

    def _positive(
        self, key: str, within: dict | None = None, entry: str = "", default: Any = ..., kind: type | tuple = int
    ) -> Any:
        value = self._field(key, kind, default, within, entry)
        if not (math.isfinite(value) and value > 0):
            raise TinyVmafError(f"{self._where(key, entry)}: {entry}{key} must be > 0, found {value!r}")
        return value

    def _yuv_fmt(self, within: dict | None = None, entry: str = "", default: Any = ...) -> str:
        fmt = self._field("yuv_fmt", str, default, within, entry)
        if fmt not in RAW_SAMPLE_BYTES:
            raise TinyVmafError(
                f"{self._where('yuv_fmt', entry)}: {entry}yuv_fmt {fmt!r} is not supported; use one of {', '.join(sorted(RAW_SAMPLE_BYTES))}"
            )
        return fmt

    @property
    def location(self) -> Path:
        return self.path

    def pairs(self) -> list[ClipPair]:
        base = RawFormat(
            self._positive("width"),
            self._positive("height"),
            self._yuv_fmt(),
            float(self._positive("fps", default=25.0, kind=(int, float))),
        )
        refs, ref_ids, assets = {}, {}, {}
        for i, ref in enumerate(self._field("ref_videos", list)):
            entry = f"ref_videos[{i}]: "
            if not isinstance(ref, dict):
                raise TinyVmafError(f"{self._where('', entry)}: {entry}must be a dict, found {ref!r:.60}")
            content_id = self._field("content_id", (int, str), within=ref, entry=entry)
            where = f"{self._entry_line(ref, 'ref_videos')} (ref_videos[{i}])"
            self._unique(ref_ids, str(content_id), where, f"content_id {content_id!r}")
            refs[content_id] = (
                self._field("content_name", str, within=ref, entry=entry),
                self._video(ref, "ref_dir", base, entry),
            )
        pairs = []
        for i, dis in enumerate(self._field("dis_videos", list)):
            entry = f"dis_videos[{i}]: "
            if not isinstance(dis, dict):
                raise TinyVmafError(f"{self._where('', entry)}: {entry}must be a dict, found {dis!r:.60}")
            content_id = self._field("content_id", (int, str), within=dis, entry=entry)
            if content_id not in refs:
                raise TinyVmafError(
                    f"{self._where('', entry)}: {entry}content_id {content_id!r} names no ref_videos entry"
                )
            source, reference = refs[content_id]
            asset_id = self._field("asset_id", (int, str), i, dis, entry)
            asset = f"{source}__{asset_id}"
            where = f"{self._entry_line(dis, 'dis_videos')} (dis_videos[{i}])"
            self._unique(assets, asset, where, f"asset_id {asset_id!r} of content_id {content_id!r}")
            distorted = self._video(dis, "dis_dir", base, entry)
            dmos = self._field(
                "dmos",
                (int, float, type(None)),
                self._field("groundtruth", (int, float, type(None)), None, dis, entry),
                dis,
                entry,
            )
            pairs.append(ClipPair(source, asset, reference, distorted, None if dmos is None else float(dmos)))
        if not pairs:
            raise TinyVmafError(f"{self._where('dis_videos', '')}: dis_videos is empty")
        return pairs

    def _video(self, entry: dict, folder_key: str, base: RawFormat, where: str) -> Video:
        """A video entry; relative paths are taken from ``ref_dir``/``dis_dir`` or the file's folder."""
        raw_path = self._field("path", str, within=entry, entry=where)
        folder = self._field(folder_key, str, None)
        if not os.path.isabs(raw_path) and folder and not raw_path.startswith(folder):
            raw_path = os.path.join(folder, raw_path)
        path = Path(raw_path)
        if not path.is_absolute():
            path = self.path.parent / path
        raw = RawFormat(
            self._positive("width", entry, where, base.width),
            self._positive("height", entry, where, base.height),
            self._yuv_fmt(entry, where, base.pix_fmt),
            float(self._positive("fps", entry, where, base.fps, kind=(int, float))),
        )
        return Video(path, raw)
