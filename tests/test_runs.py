"""The run record (tinyvmaf.runs): every key a run carries is spelled there and nowhere else in
tinyvmaf or its benchmarks, and its helpers compute the LOSO figures and recipe hashes every stage
relies on."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from tinyvmaf import runs
from tinyvmaf.runs import LOSO_MEAN, LOSO_STD, LOSO_WORST, Kind, Metric, Param, Tag, latest_per_fold, loso_figures

SOURCE = Path(runs.__file__).parent
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RUN_DATA = {"params", "tags", "metrics"}  # Run.data's mappings
WRITERS = {"log_params", "log_tags", "log_metrics", "set_tag", "set_terminated"}
STEP_KEYS = {"step", "epoch"}  # TrackedRun.log_metrics's step column, not a metric
QUERY = re.compile(r"\b(tags|params|metrics)\.[A-Za-z_]")  # a key inside an MLflow search string
PREFIXED = re.compile(r"^(heldout|loso)_")  # keys built from the metric names


def _literal_keys(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, key) of every run key written as a literal: read from ``run.data.params/tags/metrics``
    (subscript, ``.get``, ``in``), written through a run's or client's writers, or inside a query."""
    found = []

    def data_mapping(node: ast.AST) -> bool:
        """``<run>.data.params`` (or tags, metrics), or a variable ``params`` or ``tags`` holding one."""
        if isinstance(node, ast.Name):
            return node.id in ("params", "tags")
        return (
            isinstance(node, ast.Attribute)
            and node.attr in RUN_DATA
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "data"
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and data_mapping(node.value) and isinstance(node.slice, ast.Constant):
            found.append((node.lineno, node.slice.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "get" and data_mapping(node.func.value) and node.args:
                if isinstance(node.args[0], ast.Constant):
                    found.append((node.lineno, node.args[0].value))
            if node.func.attr in WRITERS:
                for arg in ast.walk(node):
                    if isinstance(arg, ast.Dict):
                        found += [(k.lineno, k.value) for k in arg.keys if isinstance(k, ast.Constant)]
                if node.func.attr == "set_tag" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                    found.append((node.lineno, node.args[1].value))
        elif isinstance(node, ast.Compare) and any(data_mapping(c) for c in node.comparators):
            if isinstance(node.left, ast.Constant):
                found.append((node.lineno, node.left.value))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if QUERY.search(node.value) or PREFIXED.match(node.value):
                found.append((node.lineno, node.value))
    return [(line, key) for line, key in found if key not in STEP_KEYS]


def test_no_run_key_is_spelled_outside_the_run_record():
    offenders = [
        f"{path}:{line}: {key!r}"
        for path in sorted([*SOURCE.rglob("*.py"), *BENCHMARKS.glob("*.py")])
        if path != Path(runs.__file__)
        for line, key in _literal_keys(ast.parse(path.read_text()))
    ]
    assert not offenders, "run keys spelled outside tinyvmaf.runs:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "code",
    [
        'run.data.params.get("arch")',
        'run.data.tags["sweep_id"]',
        '"heldout_rmse" in run.data.metrics',
        'client.set_tag(run_id, "error", "x")',
        'run.log_metrics([{"step": 0, "n_params": 3}], step_key="step")',
        "query = f\"tags.sweep_id = '{sweep}'\"",
        'key = f"loso_{m}_mean"',
    ],
)
def test_the_key_check_sees_each_way_a_key_is_spelled(code):
    assert _literal_keys(ast.parse(code))


def test_the_key_namespaces_hold_distinct_plain_strings():
    values = [
        v
        for space in (Kind, Tag, Param, Metric)
        for k, v in vars(space).items()
        if not k.startswith("_") and isinstance(v, str)
    ]
    assert all(type(v) is str for v in values)  # MLflow and the database drivers get str, never an enum
    keys = [v for space in (Tag, Param, Metric) for k, v in vars(space).items() if not k.startswith("_")]
    assert len(keys) == len(set(keys))


def test_loso_figures_are_mean_sample_std_and_worst_over_folds():
    folds = [{"plcc": 0.99, "srocc": 0.98, "rmse": 1.0}, {"plcc": 0.95, "srocc": 0.97, "rmse": 3.0}]
    figures = loso_figures(folds)
    assert figures[LOSO_MEAN["rmse"]] == 2.0 and figures[LOSO_STD["rmse"]] == pytest.approx(np.sqrt(2))
    assert figures[LOSO_WORST["rmse"]] == 3.0 and figures[LOSO_WORST["plcc"]] == 0.95
    assert loso_figures(folds[:1])[LOSO_STD["plcc"]] == 0.0


class _Run:
    def __init__(self, fold: str, run_id: str) -> None:
        self.data = type("Data", (), {"params": {Param.FOLD: fold}})()
        self.run_id = run_id


def test_latest_per_fold_keeps_the_first_of_each_fold():
    found = latest_per_fold([_Run("A", "new"), _Run("B", "b"), _Run("A", "old")])
    assert {f: r.run_id for f, r in found.items()} == {"A": "new", "B": "b"}


def test_a_recipe_hash_changes_with_the_recipe_and_not_with_where_it_ran(compose):
    base = compose("train", "arch=mlp_small", "fold=Bikes")
    assert runs.recipe_hash(base) == runs.recipe_hash(compose("train", "arch=mlp_small", "fold=Bikes", "n_jobs=7"))
    assert runs.recipe_hash(base) != runs.recipe_hash(compose("train", "arch=mlp_small", "fold=Bikes", "seed=1"))
    assert runs.recipe_hash(base) != runs.recipe_hash(compose("train", "arch=mlp_small", "fold=Life"))
