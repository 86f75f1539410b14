"""The MLflow UI as a user meets it, in a real browser: headless Chromium (Debian's ``chromium``)
driven by Playwright, against the README's ``mlflow ui`` command on a store tinyvmaf wrote.
What it checks, and what MLflow itself decides, is in docs/mlflow-ui.md."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient
from servers import mlflow_ui

from tinyvmaf.digest import write_digest
from tinyvmaf.export import export_models
from tinyvmaf.tracking import runs_table_url
from tinyvmaf.training import train

CHROMIUM = shutil.which("chromium")
# As the machine's probe starts it: no sandbox as root, no network beyond 127.0.0.1.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
GENAI_SIDEBAR = "Evaluation runs"  # an entry of MLflow's GenAI side bar, absent from its machine-learning one

pytestmark = pytest.mark.slow


def lacking(reason: str) -> None:
    if os.environ.get("TINYVMAF_REQUIRE_BROWSER"):  # CI: the browser checks must run
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        lacking("no playwright (the dev extra)")
    if CHROMIUM is None:
        lacking("no chromium on PATH (Debian's chromium package)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def store(tiny_corpus_master, tmp_path_factory, training_overrides, compose) -> Iterator[tuple[str, MlflowClient]]:
    """A sweep of 2 folds with its digest, and export.py's models (one validated by that sweep,
    one by the LOSO export.py ran), served by the README's ``mlflow ui``."""
    tmp = tmp_path_factory.mktemp("ui")
    base = training_overrides(tiny_corpus_master, tmp)
    for fold in ("Bars", "Mandel"):
        train(compose("train", *base, f"fold.heldout={fold}", "sweep_id=s-ui"))
    corpus = [o for o in base if o.startswith(("corpus", "paths.", "cache.", "tracking."))]
    assert write_digest(compose("evaluate", *corpus, f"paths.reports_dir={tmp}/reports", "sweep_id=s-ui")) == 0
    exported = compose(
        "export", "~experiment", *[o for o in base if not o.startswith("fold.")], "teacher_exports=[]", "check_corpus=null",
        "fresh_seeds=[]", f"exports.vmaf_tiny_v1.output={tmp}/a.onnx", f"exports.vmaf_tiny_v1_medium.output={tmp}/b.onnx",
    )  # fmt: skip
    assert export_models(exported) == 0
    with mlflow_ui(tmp / "mlruns") as ui:
        yield ui, MlflowClient(ui)


def opened(browser, url: str, wait_for: str):
    """A fresh profile (as a first visit), ``url`` loaded until ``wait_for`` shows."""
    page = browser.new_context(viewport={"width": 1600, "height": 1000}).new_page()
    page.goto(url)
    page.get_by_text(wait_for).first.wait_for(timeout=60_000)
    return page


def side_bar(page) -> str:
    return "GenAI" if page.get_by_text(GENAI_SIDEBAR).count() else "machine learning"


def test_the_printed_link_opens_the_runs_table_in_machine_learning_views(browser, store):
    ui, client = store
    experiment = client.get_experiment_by_name("tinyvmaf-loso")
    page = opened(browser, runs_table_url(ui, experiment.experiment_id), "s-ui")
    assert "/runs?" in page.url and side_bar(page) == "machine learning"
    page.get_by_text("heldout_rmse").first.wait_for()  # the shared view's columns
    for name in ("s-ui", "mlp_medium-all", "export-vmaf_tiny_v1"):
        assert page.get_by_text(name, exact=True).count() >= 1, name


def test_a_versions_evidence_link_opens_its_loso_in_machine_learning_views(browser, store):
    ui, client = store
    version = client.get_model_version("vmaf_tiny_v1_medium", "1")
    page = opened(browser, f"{ui}/#/models/vmaf_tiny_v1_medium/versions/1", "Validated by a LOSO")
    with page.context.expect_page() as tab:  # MLflow opens a description's links in a new tab
        page.get_by_role("link", name=re.compile(r"^run [0-9a-f]{8}$")).click()
    page = tab.value
    page.get_by_text("folds_done").first.wait_for(timeout=60_000)
    assert f"/runs/{version.tags['loso_run_id']}?workflowType=machine_learning" in page.url
    assert side_bar(page) == "machine learning" and page.get_by_text("Evaluations", exact=True).count() == 0
    models = opened(browser, f"{ui}/#/models", "vmaf_tiny_v1_medium")
    assert models.get_by_text("vmaf_tiny_v1", exact=True).count() == 1


def test_without_a_tinyvmaf_link_the_ui_needs_its_switch_flipped_once(browser, store):
    """MLflow 3.17's own choice, documented in docs/mlflow-ui.md and the README: a first visit
    from the home page lands on the GenAI overview and a run's page drops the link's view; once
    the user picks "Model training", the browser keeps it, and every page stays there."""
    ui, _ = store
    page = opened(browser, f"{ui}/", "tinyvmaf-loso")
    page.get_by_text("tinyvmaf-loso").first.click()
    page.wait_for_url(re.compile(r"workflowType=genai"), timeout=60_000)
    assert "/overview" in page.url
    from playwright.sync_api import TimeoutError as NoPopOver

    try:  # the GenAI overview greets a first visit with a pop-over that takes every click
        page.get_by_role("button", name="Got it").click(timeout=10_000)
    except NoPopOver:
        pass
    page.get_by_text("Model training").first.click()
    page.wait_for_url(re.compile(r"/runs\?workflowType=machine_learning"), timeout=60_000)
    page.goto(f"{ui}/")
    page.get_by_text("tinyvmaf-loso").first.click()
    page.wait_for_url(re.compile(r"/runs\?workflowType=machine_learning"), timeout=60_000)
    page.get_by_role("link", name="s-ui").first.click()  # the sweep's run page: no view in its link
    page.get_by_text("folds_finished").first.wait_for(timeout=60_000)
    assert side_bar(page) == "machine learning"
