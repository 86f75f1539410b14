"""Importing tinyvmaf changes no global state (a notebook user's logging and warnings stay theirs),
and its stages import one way, in the order data flows."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SNAPSHOT = """
import json, logging, os, warnings
import lightning, matplotlib, mlflow, onnx, onnxruntime, torch, torchmetrics, hydra  # third-party state first
def state():
    loggers = {n: l.level for n, l in logging.root.manager.loggerDict.items() if isinstance(l, logging.Logger) and l.level}
    return json.dumps([loggers, logging.root.level, [str(f) for f in warnings.filters], matplotlib.get_backend(), dict(os.environ)], sort_keys=True)
before = state()
import tinyvmaf.model, tinyvmaf.metrics, tinyvmaf.digest, tinyvmaf.export, tinyvmaf.training, tinyvmaf.score, tinyvmaf.cache
after = state()
print("same" if before == after else "changed")
"""


def test_importing_tinyvmaf_changes_no_logging_or_warning_state():
    proc = subprocess.run(
        [sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "same"


# The stages in the order data flows (docs/architecture.md); a module imports, at its top, only from
# stages before its own, its own package, and the support modules any stage may use.
STAGES = [
    "corpus", "teacher", "features", "cache", "data", "model", "fused", "stacked", "onnx_io", "runs", "metrics",
    "tracking", "sweep.ledger", "sweep.status", "search", "training", "digest", "lusoris", "export", "score",
    "sweep.callbacks", "sweep.launcher",
]  # fmt: skip
SUPPORT = {"errors", "files", "ffmpeg", "slurm", "mlflow_artifacts", "cli", "sweep", "sweep.verdicts"}
SOURCE = Path(__file__).resolve().parents[1] / "src" / "tinyvmaf"


def _stage(module: str) -> str:
    return next((s for s in STAGES if module == s or module.startswith(f"{s}.")), module)


def _top_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.parse(path.read_text()).body:  # the module's own body: not inside functions or TYPE_CHECKING
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tinyvmaf"):
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == "tinyvmaf" else [node.module]
            found |= {n.removeprefix("tinyvmaf.") for n in names}
    return found


def test_each_stage_imports_only_from_earlier_stages():
    backwards = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not module:
            continue
        mine = _stage(module)
        if mine not in STAGES and mine not in SUPPORT:
            backwards.append(f"{module} is in no stage: add it to STAGES or SUPPORT, and to docs/architecture.md")
            continue
        for dep in _top_level_imports(path):
            if mine in SUPPORT:
                ok = _stage(dep) in SUPPORT
            else:
                ok = dep in SUPPORT or _stage(dep) == mine or STAGES.index(_stage(dep)) < STAGES.index(mine)
            if not ok:
                backwards.append(f"{module} imports {dep}")
    assert not backwards, backwards
