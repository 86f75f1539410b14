"""The drop-in folder of the reference toolchain (``tinyvmaf.lusoris``), which holds other
people's files: checked before anything is written, never another's entry or file replaced
unless asked, the other registry entries byte for byte, and concurrent exports that take turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinyvmaf.errors import TinyVmafError
from tinyvmaf.lusoris import DropInFolder
from tinyvmaf.model import VmafNet, mlp

METADATA = {"arch": "mlp_small", "n_params": "69", "teacher": "vmaf_v0.6.1", "corpus": "c:0", "libvmaf_version": "3",
            "experiment": "default"}  # fmt: skip
THEIRS = {"id": "tinyvmaf_a", "kind": "fr", "onnx": "tinyvmaf_a.onnx", "sha256": "0" * 64, "license": "Proprietary",
          "notes": "their own model", "smoke": True}  # fmt: skip
WRITE = """
import sys, time
from pathlib import Path
import numpy as np, torch
from tinyvmaf.lusoris import DropInFolder
from tinyvmaf.model import VmafNet, mlp
folder, prefix, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
torch.manual_seed(0)
model, features = VmafNet(mlp([4])), np.random.default_rng(0).uniform(0.1, 1, (32, 6))
meta = dict(arch="linear", n_params="1", teacher="vmaf_v0.6.1", corpus="c:0", libvmaf_version="3", experiment="d")
while not go.exists():
    time.sleep(0.01)
for i in range(4):
    DropInFolder(folder).write(f"{prefix}{i}", model, meta, features, "BSD-2-Clause-Patent")
"""


def a_model() -> tuple[VmafNet, np.ndarray]:
    return VmafNet(mlp([4])), np.random.default_rng(0).uniform(0.1, 1, (32, 6))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.is_symlink()}


def nested(depth: int) -> str:
    return '{"schema_version": 1, "models": [' + "[" * depth + "]" * depth + "]}"


@pytest.mark.parametrize(
    "prepare, said",
    [
        (lambda f: (f / "registry.json").write_text(json.dumps({"schema_version": 1, "models": [THEIRS]})),
         "registry.json: entry 'tinyvmaf_a' was not written by tinyvmaf; overwrite=true replaces it"),
        (lambda f: (f / "tinyvmaf_a.onnx").write_bytes(b"theirs"),
         "tinyvmaf_a.onnx: not written by tinyvmaf (no entry of its in the registry); overwrite=true replaces it"),
        (lambda f: (f / "tinyvmaf_a.json").write_text("{}"),
         "tinyvmaf_a.json: not written by tinyvmaf (no entry of its in the registry); overwrite=true replaces it"),
        (lambda f: ((f / "elsewhere.json").write_text('{"schema_version": 1, "models": []}'),
                    (f / "registry.json").symlink_to(f / "elsewhere.json")),
         "registry.json: not a registry file (a link, not a regular file, or over 16 MiB)"),
        (lambda f: (f / "registry.json").write_text(nested(100_000)), "registry.json: not JSON (RecursionError)"),
        (lambda f: (f / "registry.json").write_text("{not json"), "registry.json: not JSON (JSONDecodeError)"),
        (lambda f: (f / "registry.json").write_text(json.dumps({"schema_version": 1, "models": [{"id": "x"}, {"id": "x"}]})),
         "registry.json: lists id 'x' twice"),
    ],
    ids=["their entry", "their onnx file", "their sidecar", "a linked registry", "a nested registry", "not JSON", "an id twice"],
)  # fmt: skip
def test_a_folder_that_holds_what_tinyvmaf_must_not_touch_is_refused_and_kept_byte_for_byte(prepare, said, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    prepare(folder)
    before = snapshot(folder)
    drop_in = DropInFolder(folder)
    with pytest.raises(TinyVmafError) as refused:
        drop_in.check(["a"], "vmaf_v0.6.1")
    assert str(refused.value) == f"{folder}/{said}" and snapshot(folder) == before
    with pytest.raises(TinyVmafError) as refused:
        drop_in.write("a", *a_model()[:1], METADATA, a_model()[1], "BSD-2-Clause-Patent")
    assert str(refused.value) == f"{folder}/{said}" and snapshot(folder) == before


def test_ids_and_the_folder_itself_are_checked_before_anything(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(TinyVmafError, match=r"^lusoris_dir=.*/file: not a folder$"):
        DropInFolder(tmp_path / "file").check(["a"], "vmaf_v0.6.1")
    with pytest.raises(TinyVmafError, match=r"^exports.Big: id 'tinyvmaf_Big' is not a registry id of that toolchain"):
        DropInFolder(tmp_path / "new").check(["Big"], "vmaf_v0.6.1")
    with pytest.raises(TinyVmafError, match="layout=lusoris: that toolchain's tiny models read vmaf_v0.6.1's six"):
        DropInFolder(tmp_path / "new").check(["a"], "vmaf_v1.0.16_3d0h")
    assert not (tmp_path / "new").exists()


def test_overwrite_is_true_or_false_never_a_string_python_takes_as_true(tmp_path):
    with pytest.raises(TinyVmafError, match=r"^overwrite='no': must be true or false$"):
        DropInFolder(tmp_path, overwrite="no")


def test_overwrite_replaces_their_entry_and_keeps_every_other_byte(tmp_path):
    other = {"id": "vmaf_tiny_v1", "kind": "fr", "onnx": "vmaf_tiny_v1.onnx", "sha256": "1" * 64}
    text = json.dumps({"schema_version": 1, "models": [other, THEIRS, other | {"id": "z"}]}, indent=3) + "\n"
    (tmp_path / "registry.json").write_text(text)
    model, features = a_model()
    DropInFolder(tmp_path, overwrite=True).write("a", model, METADATA, features, "BSD-2-Clause-Patent")
    after = (tmp_path / "registry.json").read_text()
    start = text.rindex("{", 0, text.index('"id": "tinyvmaf_a"'))
    end = text.index("}", start) + 1  # their entry's span: the only bytes that change
    assert after.startswith(text[:start]) and after.endswith(text[end:])
    entry = json.loads(after)["models"][1]
    assert entry["id"] == "tinyvmaf_a" and entry["notes"].startswith("tinyvmaf ") and "smoke" not in entry
    DropInFolder(tmp_path).write(
        "a", model, METADATA, features, "BSD-2-Clause-Patent"
    )  # its own now: no overwrite needed


def test_a_registry_with_windows_line_ends_keeps_them_byte_for_byte(tmp_path):
    other = {"id": "vmaf_tiny_v1", "kind": "fr", "onnx": "vmaf_tiny_v1.onnx", "sha256": "1" * 64}
    text = json.dumps({"schema_version": 1, "models": [other]}, indent=2).replace("\n", "\r\n") + "\r\n"
    (tmp_path / "registry.json").write_bytes(text.encode())
    model, features = a_model()
    DropInFolder(tmp_path).write("a", model, METADATA, features, "BSD-2-Clause-Patent")
    after = (tmp_path / "registry.json").read_bytes().decode()
    theirs_end = text.index("}") + 1  # their entry, and everything before it, untouched
    assert after.startswith(text[:theirs_end]) and after.endswith(text[text.rindex("]") :])
    assert [m["id"] for m in json.loads(after)["models"]] == ["vmaf_tiny_v1", "tinyvmaf_a"]


def test_two_exports_into_one_folder_at_once_keep_every_entry(tmp_path):
    """Each process adds four entries to a 6 MiB registry of the toolchain's, at the same time:
    without the lock, read-modify-writes interleave and entries are lost."""
    filler = [
        {"id": f"x{i}", "kind": "fr", "onnx": f"x{i}.onnx", "sha256": "0" * 64, "notes": "n" * 400}
        for i in range(12_000)
    ]
    (tmp_path / "registry.json").write_text(json.dumps({"schema_version": 1, "models": filler}))
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", WRITE, str(tmp_path), prefix, str(go)], stderr=subprocess.PIPE, text=True)
             for prefix in ("a", "b")]  # fmt: skip
    time.sleep(4)  # both have imported torch and wait
    go.touch()
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    ids = [m["id"] for m in json.loads((tmp_path / "registry.json").read_text())["models"]]
    assert ids[:12_000] == [f["id"] for f in filler]
    assert sorted(ids[12_000:]) == [f"tinyvmaf_{p}{i}" for p in "ab" for i in range(4)]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp") or p.startswith(".")]
