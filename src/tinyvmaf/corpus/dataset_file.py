"""Netflix-style VMAF dataset files (the format of ``NFLX_dataset_public.py``), read without running them.

The file is Python, but only its assignments are read: literals, names assigned earlier in
the file and ``+`` between them (``ref_dir + '/BigBuckBunny_25fps.yuv'``). Anything else is
refused, so a dataset file can never execute code.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.ffmpeg import RawFormat


def read_dataset_file(path: str | Path) -> dict[str, Any]:
    """The file's top-level assignments as a dict of plain values."""
    path = Path(path)
    if not path.is_file():
        raise TinyVmafError(f"{path}: no such dataset file")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise TinyVmafError(f"{path}:{exc.lineno}: not valid Python ({exc.msg})") from None
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)):
            raise TinyVmafError(
                f"{path}:{node.lineno}: only literal assignments are allowed, found {type(node).__name__}"
            )
        value = _literal(node.value, values, path)
        for target in node.targets:
            values[target.id] = value
    return values


def _literal(node: ast.AST, names: dict[str, Any], path: Path) -> Any:
    match node:
        case ast.Constant():
            return node.value
        case ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=int() | float() as number)):
            return -number
        case ast.List() | ast.Tuple():
            return [_literal(item, names, path) for item in node.elts]
        case ast.Dict():
            return {
                _literal(k, names, path): _literal(v, names, path)
                for k, v in zip(node.keys, node.values, strict=True)
            }
        case ast.Name() if node.id in names:
            return names[node.id]
        case ast.BinOp(op=ast.Add()):
            return _literal(node.left, names, path) + _literal(node.right, names, path)
    raise TinyVmafError(
        f"{path}:{node.lineno}: only literal assignments are allowed, found {ast.unparse(node)!r}"
    )


class DatasetFileCorpus:
    """Raw YUV clips (``yuv420p`` or ``yuv420p10le``) listed by a dataset file."""

    def __init__(self, path: str | Path, name: str | None = None) -> None:
        self.path = Path(path).expanduser().resolve()
        self._values = read_dataset_file(self.path)
        self.name = name or str(self._values.get("dataset_name") or self.path.stem)

    def pairs(self) -> list[ClipPair]:
        v = self._values
        for key in ("yuv_fmt", "width", "height", "ref_videos", "dis_videos"):
            if key not in v:
                raise TinyVmafError(f"{self.path}: missing {key!r}")
        fps = float(v.get("fps", 25.0))
        base = RawFormat(int(v["width"]), int(v["height"]), str(v["yuv_fmt"]), fps)
        refs = {}
        for ref in v["ref_videos"]:
            refs[ref["content_id"]] = (ref["content_name"], self._video(ref, v.get("ref_dir"), base))
        pairs = []
        for dis in v["dis_videos"]:
            if dis["content_id"] not in refs:
                raise TinyVmafError(f"{self.path}: dis_videos entry {dis} names an unknown content_id")
            source, reference = refs[dis["content_id"]]
            asset = f"{source}__{dis.get('asset_id', len(pairs))}"
            distorted = self._video(dis, v.get("dis_dir"), base)
            dmos = dis.get("dmos", dis.get("groundtruth"))
            pairs.append(ClipPair(source, asset, reference, distorted, dmos))
        if not pairs:
            raise TinyVmafError(f"{self.path}: dis_videos is empty")
        return pairs

    def _video(self, entry: dict, folder: str | None, base: RawFormat) -> Video:
        """A video entry; relative paths are taken from ``ref_dir``/``dis_dir`` or the file's folder."""
        raw_path = entry["path"]
        if not os.path.isabs(raw_path) and folder and not raw_path.startswith(folder):
            raw_path = os.path.join(folder, raw_path)
        path = Path(raw_path)
        if not path.is_absolute():
            path = self.path.parent / path
        raw = RawFormat(
            int(entry.get("width", base.width)),
            int(entry.get("height", base.height)),
            str(entry.get("yuv_fmt", base.pix_fmt)),
            float(entry.get("fps", base.fps)),
        )
        return Video(path, raw)
