"""The entry points: user errors as one line, and nothing written under $HOME."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers import score_command


@pytest.mark.slow
def test_training_and_scoring_write_nothing_under_home(tiny_overrides, tmp_path, run_entry, repo, a_log):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")}
    clean = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_DISABLE_TELEMETRY", "ORT_DISABLE_TELEMETRY")}
    for command in (
        [sys.executable, str(repo / "train.py"), *tiny_overrides, "fold.heldout=Bars", f"hydra.run.dir={tmp_path}/h1"],
        score_command(repo, tmp_path, repo / "models" / "vmaf_tiny_v1.onnx", a_log),
    ):
        proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env={**clean, **env}, timeout=300)
        assert proc.returncode == 0, proc.stderr
    # matplotlib (imported by torchmetrics) keeps its font list there, which it offers no switch for
    assert [p for p in home.rglob("*") if p.is_file() and "matplotlib" not in p.parts] == []


def test_entry_points_print_errors_raised_inside_instantiate_as_one_line(tmp_path, run_entry):
    proc = run_entry(
        "build_cache.py", "corpus=dataset_file", f"corpus.path={tmp_path}/missing.py", f"paths.data_dir={tmp_path}/data"
    )
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: {tmp_path}/missing.py: no such dataset file"
    proc = run_entry("build_cache.py", "corpus=directory", f"paths.data_dir={tmp_path}/data")
    assert (
        proc.returncode == 1
        and proc.stderr.strip() == "error: corpus.root: missing value; give it on the command line (corpus.root=...)"
    )


def test_a_bug_in_a_sweep_callback_ends_the_sweep_where_hydra_would_only_warn(capsys):
    """Hydra catches a callback's exception and launches the jobs anyway; or_exit turns it into
    exit status 1 with the traceback, so no sweep trains without its parent run and plan."""
    from tinyvmaf.cli import or_exit

    def opening_the_sweep_run():
        raise AttributeError("dimension_attributes")

    with pytest.raises(SystemExit) as ended:
        or_exit(opening_the_sweep_run)
    err = capsys.readouterr().err
    assert (
        ended.value.code == 1 and "Traceback" in err and err.endswith("error: AttributeError: dimension_attributes\n")
    )
