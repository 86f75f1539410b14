"""Measurements behind docs/scaling.md: libvmaf per core at 1080p and 2160p, a worker's start-up,
and MLflow's cost per fold run against SQLite and against a server on PostgreSQL.

    python benchmarks/scaling.py

Generated content only (ffmpeg's testsrc2, x264 CRF 30); the server is a private PostgreSQL
cluster and ``mlflow server`` on 127.0.0.1 (tests/servers.py), stopped at the end.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

from tinyvmaf import ffmpeg
from tinyvmaf.cli import quiet_libraries
from tinyvmaf.corpus import ClipPair, Video
from tinyvmaf.runs import HELDOUT, Metric, Param, Tag
from tinyvmaf.teacher.ffmpeg_filter import FfmpegLibvmaf
from tinyvmaf.tracking import Tracking, tracked_run

sys.path.insert(0, str(ROOT / "tests"))
from servers import team_server  # noqa: E402

FRAMES = 24
MODELS = ["vmaf_v0.6.1", "vmaf_v0.6.1neg", "vmaf_4k_v0.6.1"]  # what the cache scores by default


def libvmaf_frames_per_second(size: str, folder: Path) -> float:
    """One thread, one clip pair of ``FRAMES`` frames at ``size``: frames/s per core."""
    ref, dis = folder / f"ref_{size}.y4m", folder / f"dis_{size}.mp4"
    source = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-frames:v", str(FRAMES), "-pix_fmt", "yuv420p"]
    ffmpeg.run([*source, "-f", "yuv4mpegpipe", ffmpeg.file_arg(ref)], "ref")
    ffmpeg.run(
        [
            "-i",
            ffmpeg.file_arg(ref),
            "-c:v",
            "libx264",
            "-crf",
            "30",
            "-threads",
            "1",
            "-f",
            "mp4",
            ffmpeg.file_arg(dis),
        ],
        "dis",
    )
    pair = ClipPair("S", "S__x", Video(ref), Video(dis))
    start = time.perf_counter()
    FfmpegLibvmaf(n_threads=1).score(pair, MODELS)
    return FRAMES / (time.perf_counter() - start)


def worker_start_up() -> float:
    """A fresh process importing what a training job imports (median of 3)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tinyvmaf.training, tinyvmaf.cli"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mlflow_seconds_per_run(uri: str, artifacts: Path, n: int = 10) -> float:
    """What one fold run writes (params, 30 epochs x 4 metrics, 3 artifacts), timed over ``n`` runs."""
    client, experiment_id = Tracking(uri, "bench", str(artifacts)).experiment()
    files = {"config.yaml": 3000, "model.pt": 12000, "heldout.npz": 12000}
    with tempfile.TemporaryDirectory() as tmp:
        for name, size in files.items():
            (Path(tmp) / name).write_bytes(os.urandom(size))
        start = time.perf_counter()
        for i in range(n):
            with tracked_run(
                client,
                experiment_id,
                f"bench-{i}",
                {Tag.SWEEP_ID: "bench", Param.ARCH: "mlp_small", Param.FOLD: str(i)},
            ) as run:
                run.log_params({f"param_{k}": k for k in range(24)})
                run.log_metrics(
                    [{"epoch": e, **dict.fromkeys(HELDOUT.values(), 0.9), Metric.TRAIN_LOSS: 0.1} for e in range(30)]
                )
                for name in files:
                    run.log_artifact(Path(tmp) / name)
        return (time.perf_counter() - start) / n


def main() -> None:
    quiet_libraries()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="tinyvmaf-scaling-") as tmp:
        for size in ("1920x1080", "3840x2160"):
            print(
                f"libvmaf, 1 thread, {size}, models {', '.join(MODELS)}: {libvmaf_frames_per_second(size, Path(tmp)):.1f} frames/s"
            )
        print(f"worker start-up (fresh process, tinyvmaf.training imported): {worker_start_up():.2f} s")
        print(
            f"MLflow per fold run, SQLite: {mlflow_seconds_per_run(f'sqlite:///{tmp}/mlflow.db', Path(tmp) / 'artifacts'):.3f} s"
        )
        with team_server() as (uri, _, _):
            print(
                f"MLflow per fold run, server on PostgreSQL (127.0.0.1): {mlflow_seconds_per_run(uri, Path(tmp) / 'unused'):.3f} s"
            )


if __name__ == "__main__":
    main()
