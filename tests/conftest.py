"""Shared test set-up: tiny real clips made by real ffmpeg, Hydra composition, entry points run as
real processes, caches on real libvmaf, and a real libvmaf ``vmaf`` tool built from ../shared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig
from servers import team_server

from tinyvmaf import ffmpeg
from tinyvmaf.cache import FrameTable, TeacherCache
from tinyvmaf.cli import no_telemetry
from tinyvmaf.errors import TinyVmafError
from tinyvmaf.export import export_models
from tinyvmaf.teacher import FEATURE_NAMES, NATIVE
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.training import train

no_telemetry()  # before any test module imports MLflow or ONNX Runtime, as the entry points do


ROOT = Path(__file__).resolve().parents[1]


CONFIGS = ROOT / "configs"


SIZE = "64x48"


FRAMES = 8


MODELS = ["vmaf_v0.6.1", "vmaf_v0.6.1neg"]


def _make_clip(
    path: Path,
    lavfi: str,
    frames: int = FRAMES,
    vf: str = "null",
    codec: list[str] | None = None,
    size: str = SIZE,
    rate: str = "25",
) -> Path:
    """Encode ``frames`` frames of an ffmpeg lavfi source; format by extension (.y4m, .yuv, .mp4)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".y4m": ["-f", "yuv4mpegpipe"], ".yuv": ["-f", "rawvideo"], ".mp4": ["-f", "mp4"]}[path.suffix]
    pix = "yuv420p10le" if "10" in path.stem.split("_")[-1:] else "yuv420p"
    codec = codec or (["-c:v", "libx264", "-threads", "1"] if path.suffix == ".mp4" else [])
    ffmpeg.run(
        ["-f", "lavfi", "-i", f"{lavfi}=size={size}:rate={rate}", "-vf", f"{vf},format={pix}",
         "-frames:v", str(frames), *codec, *fmt, ffmpeg.file_arg(path)],
        what=str(path),
    )  # fmt: skip
    return path


@pytest.fixture(scope="session")
def repo() -> Path:
    """The checkout: entry points, configs/ and the shipped models/."""
    return ROOT


@pytest.fixture(scope="session")
def make_clip() -> Callable[..., Path]:
    return _make_clip


@pytest.fixture(scope="session")
def compose() -> Callable[..., DictConfig]:
    """``compose("train", "arch=linear", ...)``: a primary config as the entry point would see it."""

    def composed(name: str, *overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            return hydra_compose(name, overrides=list(overrides))

    return composed


@pytest.fixture
def run_entry(tmp_path) -> Callable[..., subprocess.CompletedProcess]:
    """``run_entry("train.py", *overrides)``: the entry point as a real process, its Hydra folders in tmp_path."""

    def run(
        script: str, *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess:
        hydra_dirs = [f"hydra.run.dir={tmp_path}/hydra/run", f"hydra.sweep.dir={tmp_path}/hydra/multirun"]
        return subprocess.run(
            [sys.executable, str(ROOT / script), *args, *hydra_dirs],
            capture_output=True, text=True, cwd=cwd or tmp_path, env={**os.environ, **(env or {})}, timeout=timeout,
        )  # fmt: skip

    return run


class CountingLibvmaf(FfmpegLibvmaf):
    """The real ffmpeg backend, counting the clips it scores."""

    def __init__(self) -> None:
        super().__init__()
        self.scored: list[str] = []

    def score(self, pair, models, measurement=NATIVE):
        self.scored.append(pair.asset)
        return super().score(pair, models, measurement)


@pytest.fixture(scope="session")
def cache_for() -> Callable[..., TeacherCache]:
    """``cache_for(folder)``: a teacher cache under ``folder/cache`` on the real ffmpeg backend, counting its libvmaf runs."""

    def cache(folder: Path, models: list[str] = MODELS, **measurement) -> TeacherCache:
        return TeacherCache(folder / "cache", CountingLibvmaf(), models, n_jobs=2, **measurement)

    return cache


@pytest.fixture(scope="session")
def tiny_corpus_master(tmp_path_factory) -> Path:
    """ref/ + dis/ folder: two sources, three distortions each (one at half size)."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    for source, lavfi in (("Bars", "testsrc2"), ("Mandel", "mandelbrot")):
        _make_clip(root / "ref" / f"{source}.y4m", lavfi)
        _make_clip(
            root / "dis" / f"{source}__crf20.mp4", lavfi, codec=["-c:v", "libx264", "-crf", "20", "-threads", "1"]
        )
        _make_clip(
            root / "dis" / f"{source}__crf45.mp4", lavfi, codec=["-c:v", "libx264", "-crf", "45", "-threads", "1"]
        )
        _make_clip(root / "dis" / f"{source}__half.mp4", lavfi, vf="scale=32:24")
    return root


@pytest.fixture
def tiny_corpus(tiny_corpus_master, tmp_path) -> Path:
    """A private copy, so a test may break or change its files."""
    return Path(shutil.copytree(tiny_corpus_master, tmp_path / "corpus"))


def tiny_training(corpus: Path, folder: Path) -> list[str]:
    """Overrides that train on the tiny corpus, cache and MLflow store under ``folder``, 3 epochs."""
    return [
        "corpus=directory", f"corpus.root={corpus}", "corpus.name=tiny", "fold.corpus=tiny",
        f"paths.data_dir={folder}/data", f"tracking.uri=sqlite:///{folder}/mlruns/mlflow.db",
        "trainer.max_epochs=3", "data.batch_size=8",
        "cache.models=[vmaf_v0.6.1,vmaf_v0.6.1neg]",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def training_overrides() -> Callable[[Path, Path], list[str]]:
    return tiny_training


@pytest.fixture
def tiny_overrides(tiny_corpus, tmp_path) -> list[str]:
    return tiny_training(tiny_corpus, tmp_path)


@pytest.fixture(scope="session")
def vmaf_cli(tmp_path_factory) -> Path:
    """libvmaf's own ``vmaf`` tool, built once per session from ../shared (about 15 s)."""
    script = ROOT.parent / "shared" / "tools" / "build-libvmaf.sh"
    if not script.is_file():
        reason = f"no libvmaf source to build the vmaf tool from: {script} is absent"
        if os.environ.get("TINYVMAF_REQUIRE_VMAF_TOOL"):  # CI: the CLI backend's tests must run
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("libvmaf")
    proc = subprocess.run(["bash", str(script), str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"building libvmaf's vmaf tool failed:\n{proc.stdout}\n{proc.stderr}"
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def default_table(compose) -> FrameTable:
    """The default corpus's cache, in the checkout's data/ as the README's main job builds it:
    generated and run through libvmaf on a fresh machine (~75 s), else only read."""
    cfg = compose("build_cache")
    corpus, cache = instantiate(cfg.corpus), instantiate(cfg.cache)
    cache.build(corpus)
    return cache.load(corpus)


# The session's one-of-a-kind resources: the tests that use one run on one xdist worker (the SLURM
# cluster's network namespaces and the checkout's data/ folder are global; a PostgreSQL server, the
# built vmaf tool and the trained store cost seconds each to make).
SHARED = {
    "slurm": "slurm", "mlflow_server": "server", "vmaf_cli": "vmaf_cli", "default_table": "default_corpus",
    "swept": "swept",  # the trained store (and the models exported from it) that digest, export and score read
}  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups into the tests' ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = next((g for fixture, g in SHARED.items() if fixture in getattr(item, "fixturenames", ())), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def slurm():
    """A real SLURM 22.05 cluster of two namespace nodes (tests/cluster.py), for the session;
    stopped by PID and removed at its end. CI requires it (TINYVMAF_REQUIRE_SLURM=1)."""
    from cluster import available, slurm_cluster

    lacking = available()
    if lacking:
        if os.environ.get("TINYVMAF_REQUIRE_SLURM"):
            pytest.fail(lacking)
        pytest.skip(lacking)
    with slurm_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def mlflow_server():
    """A team's set-up, private to the test session: PostgreSQL 15 on a fresh cluster and a real
    ``mlflow server`` on it serving artifacts, both on 127.0.0.1, both stopped by PID afterwards.
    Yields (tracking URI, the server's artifact folder, an empty PostgreSQL database for Optuna)."""
    with team_server() as server:
        yield server


@pytest.fixture(scope="session")
def swept(tiny_corpus_master, tmp_path_factory, training_overrides, compose):
    """A 2-arch x 2-fold sweep of the tiny corpus, plus one failed run, in a real MLflow store."""
    tmp = tmp_path_factory.mktemp("swept")
    base = training_overrides(tiny_corpus_master, tmp)
    for arch in ("mlp_small", "linear"):
        for fold in ("Bars", "Mandel"):
            train(compose("train", *base, f"arch={arch}", f"fold.heldout={fold}", "sweep_id=s1"))
    with pytest.raises(TinyVmafError):
        train(compose("train", *base, "fold.heldout=Ghost", "sweep_id=s1"))
    for fold in ("Bars", "Mandel"):  # the same without augmentation, to compare with
        train(compose("train", *base, f"fold.heldout={fold}", "sweep_id=plain", "data.augment.enabled=false"))
    return tmp, base


@pytest.fixture(scope="session")
def exported(swept, compose):
    """export.py on the swept store: mlp_small's recipe is sweep s1's exactly, so s1 is its LOSO;
    nobody ran mlp_medium's, so export.py runs it first."""
    tmp, base = swept
    overrides = [o for o in base if not o.startswith("fold.")]
    cfg = compose(
        "export",
        "~experiment",  # the swept recipe (3 epochs, default augmentation): the metadata must name it
        *overrides,
        f"exports.vmaf_tiny_v1.output={tmp}/models/a.onnx",
        f"exports.vmaf_tiny_v1_medium.output={tmp}/models/b.onnx",
        f"teacher_output_dir={tmp}/models",
        "check_corpus.frames=8",  # the check corpus, cut short: every source and codec, 8 frames each
        "fresh_seeds=[]",  # test_export's own export runs them
    )
    assert export_models(cfg) == 0
    return tmp, cfg


@pytest.fixture(scope="session")
def a_log(tmp_path_factory) -> Path:
    """A libvmaf-format JSON log of 20 frames (the features any libvmaf 2 run logs)."""
    rng = np.random.default_rng(0)
    frames = [
        {
            "frameNum": i,
            "metrics": {**{n: float(v) for n, v in zip(FEATURE_NAMES, rng.uniform(0.3, 1, 6))}, "vmaf": 50.0},
        }
        for i in range(20)
    ]
    path = tmp_path_factory.mktemp("log") / "log.json"
    path.write_text(json.dumps({"version": "3.0.0", "frames": frames}))
    return path


@pytest.fixture(scope="session")
def received_store(tiny_corpus_master, tmp_path_factory, training_overrides, compose):
    """A store made by a real tiny training run (two folds of mlp_small), to be edited as an attacker would."""
    folder = tmp_path_factory.mktemp("store")
    base = training_overrides(tiny_corpus_master, folder)
    for fold in ("Bars", "Mandel"):
        train(compose("train", *base, f"fold.heldout={fold}", "sweep_id=theirs", "tracking.log_models=false"))
    return folder, base


@pytest.fixture
def their_store(received_store, tmp_path):
    """A private copy of the received store; (folder, training overrides pointing at it, a fold run id)."""
    original, base = received_store
    folder = Path(shutil.copytree(original / "mlruns", tmp_path / "received" / "mlruns")).parent
    base = [o.replace(str(original / "mlruns"), str(folder / "mlruns")) for o in base]
    client = MlflowClient(f"sqlite:///{folder}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("tinyvmaf-loso").experiment_id
    run = client.search_runs([experiment], "tags.kind = 'fold'")[0]
    return folder, base, run
