"""Importing tinyvmaf changes no global state: a notebook user's logging and warnings stay theirs."""

from __future__ import annotations

import subprocess
import sys

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
