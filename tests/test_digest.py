"""The digest of a sweep: its numbers are the runs', and it writes only where it should."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from helpers import set_artifact_uri
from mlflow.tracking import MlflowClient

from tinyvmaf.digest import INCOMPLETE, write_digest
from tinyvmaf.errors import TinyVmafError


def store_overrides(tmp: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp}/mlruns/mlflow.db"]


def corpus_overrides(base: list[str]) -> list[str]:
    return [o for o in base if o.startswith(("corpus", "paths.", "cache."))]


def test_digest_numbers_equal_the_mlflow_run_metrics(swept, capsys, compose):
    tmp, base = swept
    cfg = compose(
        "evaluate",
        *store_overrides(tmp),
        *corpus_overrides(base),
        f"paths.reports_dir={tmp}/reports",
        "sweep_id=s1",
        "compare_sweep_id=plain",
    )
    assert write_digest(cfg) == INCOMPLETE  # a failed and a missing run: the digest is written, the status says so
    out = capsys.readouterr().out
    assert "- failed: mlp_small fold Ghost: FAILED fold=Ghost: no such source" in out
    digest = json.loads((tmp / "reports" / "s1" / "digest.json").read_text())
    client = MlflowClient(cfg.tracking.uri)
    for arch, params in (("mlp_small", 257), ("linear", 7)):
        row = digest["archs"][arch]
        assert row["params"] == params and [f["fold"] for f in row["folds"]] == ["Bars", "Mandel"]
        for f in row["folds"]:
            metrics = client.get_run(f["run_id"]).data.metrics
            assert (f["plcc"], f["srocc"], f["rmse"]) == (
                metrics["heldout_plcc"],
                metrics["heldout_srocc"],
                metrics["heldout_rmse"],
            )
            assert f["n"] == 24 and f["teacher_std"] > 0
            assert (f["clip_plcc"], f["clip_rmse"]) == (metrics["heldout_clip_plcc"], metrics["heldout_clip_rmse"])
        rmse = [f["rmse"] for f in row["folds"]]
        assert row["rmse_mean"] == pytest.approx(np.mean(rmse)) and row["rmse_std"] == pytest.approx(
            np.std(rmse, ddof=1)
        )
        assert set(row) >= {"plcc_mean", "plcc_std", "srocc_mean", "srocc_std", "rmse_mean", "rmse_std", "folds"}
    assert [(f["arch"], f["fold"], f["status"]) for f in digest["failed_runs"]] == [("mlp_small", "Ghost", "FAILED")]
    tf = digest["teacher_function"]
    assert tf["params"] == 0 and tf["max_abs"] <= 1e-3 and [f["fold"] for f in tf["folds"]] == ["Bars", "Mandel"]
    md = (tmp / "reports" / "s1" / "digest.md").read_text()
    assert "| teacher function | 0 |" in md and "## s1 vs plain" in md
    assert digest["compared_with"]["sweep_id"] == "plain" and list(digest["compared_with"]["archs"]) == ["mlp_small"]
    assert "| mlp_small | 257 |" in md and "teacher std" in md
    clip_rmse = [f["clip_rmse"] for f in digest["archs"]["linear"]["folds"]]
    assert (
        f"| {np.mean(clip_rmse):.3f} ± {np.std(clip_rmse, ddof=1):.3f} |"
        in md.split("| linear | 7 |")[1].split("\n")[0]
    )
    (paired,) = digest["paired"]  # two folds: no test can tell them apart
    assert paired["rmse"]["folds"] == 2 and "indistinguishable" in paired["verdict"] and paired["verdict"] in md
    assert "Paired over the folds both sweeps trained" in md
    assert "2 arch(s), 3 fold(s): 6 runs expected: 4 finished, 1 failed, 0 still RUNNING, 1 missing." in md
    assert "- missing: linear fold Ghost" in md and digest["completeness"]["finished"] == 4
    for png in ("scatter.png", "rmse_per_fold.png"):
        assert matplotlib.image.imread(tmp / "reports" / "s1" / png).shape[0] > 100
    # How far from the teacher: each arch's frame radius is the order statistic of its folds' held-out
    # |residuals| that holds c of them (48 frames: 45th and 47th); 2 sources promise no source radius.
    for arch, radii in digest["intervals"].items():
        residuals = []
        for f in digest["archs"][arch]["folds"]:
            with np.load(client.download_artifacts(f["run_id"], "heldout.npz", str(tmp)), allow_pickle=False) as d:
                residuals.append(np.abs(d["predicted"].astype(np.float64) - d["teacher"]))
        magnitudes = np.sort(np.concatenate(residuals))
        assert radii["interval_frame_90"] == magnitudes[44] and radii["interval_frame_95"] == magnitudes[46]
        assert "interval_source_95" not in radii
        row = md.split("## How far from the teacher")[1].split(f"| {arch} | ")[1].split("\n")[0]
        assert row.startswith(f"{magnitudes[44]:.3f} | {magnitudes[46]:.3f} | ") and row.endswith("— | — |")
    # The sweep's run: created by evaluate.py for runs trained without one, which it nests under it.
    (sweep,) = client.search_runs(
        [client.get_experiment_by_name("tinyvmaf-loso").experiment_id], "tags.kind = 'sweep' and tags.sweep_id = 's1'"
    )
    assert (
        sweep.info.run_name == "s1" and sweep.data.metrics["linear/rmse_mean"] == digest["archs"]["linear"]["rmse_mean"]
    )
    assert sweep.data.metrics["linear/clip_rmse_mean"] == digest["archs"]["linear"]["clip_rmse_mean"]
    assert sweep.data.metrics["linear/interval_frame_95"] == digest["intervals"]["linear"]["interval_frame_95"]
    assert sweep.data.metrics["folds_missing"] == 1 and sweep.info.status == "FAILED"
    for f in digest["archs"]["mlp_small"]["folds"]:
        tags = client.get_run(f["run_id"]).data.tags
        assert tags["mlflow.parentRunId"] == sweep.info.run_id and tags["nested_by"] == "evaluate.py"
    assert {a.path for a in client.list_artifacts(sweep.info.run_id)} == {
        "digest.md",
        "digest.json",
        "scatter.png",
        "rmse_per_fold.png",
    }


def test_unknown_sweep_id_is_a_one_line_error(swept, compose):
    tmp, _ = swept
    cfg = compose(
        "evaluate",
        *store_overrides(tmp),
        *corpus_overrides(swept[1]),
        "sweep_id=nope",
        f"paths.reports_dir={tmp}/reports",
    )
    with pytest.raises(TinyVmafError, match="sweep_id=nope: no such sweep; recent sweeps: "):
        write_digest(cfg)


def test_evaluate_writes_no_digest_outside_the_store(their_store, tmp_path, repo):
    folder, base, run = their_store
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    corpus = [o for o in base if o.startswith(("corpus", "paths.", "cache.", "tracking."))]
    evaluate = [
        sys.executable, str(repo / "evaluate.py"), *corpus, "sweep_id=theirs", f"paths.reports_dir={tmp_path}/reports",
        f"hydra.run.dir={tmp_path}/hydra",
    ]  # fmt: skip
    assert subprocess.run(evaluate, capture_output=True, timeout=300).returncode == 0  # opens the sweep's run
    (sweep,) = client.search_runs([experiment], "tags.kind = 'sweep'")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    set_artifact_uri(folder, sweep.info.run_id, f"file://{elsewhere}")
    proc = subprocess.run(evaluate, capture_output=True, text=True, timeout=300)
    assert list(elsewhere.iterdir()) == []
    assert proc.returncode == 1 and "lies outside the store's artifact folder" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_run_whose_metrics_are_not_finite_is_reported_failed_and_the_json_stays_strict(
    their_store, compose, tmp_path
):
    folder, base, _ = their_store
    db = folder / "mlruns" / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    (run,) = [r for r in client.search_runs([experiment], "tags.kind = 'fold'") if r.data.params["fold"] == "Mandel"]
    with sqlite3.connect(db) as con:  # as a diverged run, or an edited store, would hold it
        for table in ("metrics", "latest_metrics"):
            con.execute(
                f"UPDATE {table} SET value = 0, is_nan = 1 WHERE run_uuid = ? AND key = 'heldout_rmse'",
                (run.info.run_id,),
            )
    assert math.isnan(client.get_run(run.info.run_id).data.metrics["heldout_rmse"])
    corpus = [o for o in base if o.startswith(("corpus", "paths.", "cache.", "tracking."))]
    assert write_digest(compose("evaluate", *corpus, f"paths.reports_dir={tmp_path}", "sweep_id=theirs")) == INCOMPLETE

    def refuse(constant: str) -> None:
        raise AssertionError(f"digest.json holds {constant}, which is not JSON")

    document = json.loads((tmp_path / "theirs" / "digest.json").read_text(), parse_constant=refuse)
    assert document["completeness"]["finished"] == 1 and document["completeness"]["failed"] == 1
    (bars,) = document["archs"]["mlp_small"]["folds"]
    assert bars["fold"] == "Bars" and document["archs"]["mlp_small"]["rmse_mean"] == bars["rmse"]
    assert (
        "failed: mlp_small fold Mandel: FINISHED held-out metrics missing or not finite (heldout_rmse=nan)"
        in (tmp_path / "theirs" / "digest.md").read_text()
    )


def test_one_fold_shows_its_figures_without_a_spread_of_zero():
    """A one-fold sweep's digest row: the fold's figures, said to have no spread, never "± 0.0000"."""
    from tinyvmaf.digest import aggregate_cells

    one = {"plcc_mean": 0.99, "srocc_mean": 0.98, "rmse_mean": 1.5, "plcc_std": 0.0, "srocc_std": 0.0, "rmse_std": 0.0}
    assert aggregate_cells({**one, "folds": [{}]}) == [
        "0.9900 (1 fold: no spread)",
        "0.9800 (1 fold: no spread)",
        "1.500 (1 fold: no spread)",
    ]
    two = {**one, "plcc_std": 0.01, "srocc_std": 0.02, "rmse_std": 0.25, "folds": [{}, {}]}
    assert aggregate_cells(two) == ["0.9900 ± 0.0100", "0.9800 ± 0.0200", "1.500 ± 0.250"]
