"""Servers the tests and benchmarks start for themselves, on 127.0.0.1 only, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with status {proc.returncode}")
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer within {seconds} s")


@contextlib.contextmanager
def team_server(host: str = "127.0.0.1") -> Iterator[tuple[str, Path, str]]:
    """A team's set-up on this machine: PostgreSQL 15 on a fresh private cluster (127.0.0.1) and a
    real ``mlflow server`` on it serving artifacts (on ``host``: a SLURM test cluster's nodes reach
    the host on its bridge's address), both stopped by PID on exit.
    Yields (tracking URI, the server's artifact folder, an empty PostgreSQL database for Optuna)."""
    bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
    base = Path(tempfile.mkdtemp(prefix="tinyvmaf-pg-"))  # /tmp, where the postgres user can reach it
    as_postgres = {"user": "postgres"} if os.geteuid() == 0 else {}
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
    data, pg_port, port = base / "data", _free_port(), _free_port()
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=base, **as_postgres)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "postgres.log"), "-w", "start",
        "-o", f"-c listen_addresses=127.0.0.1 -p {pg_port} -k {base}")  # fmt: skip
    server = None
    try:
        for database in ("mlflow", "optuna"):  # the tracking store, and a search's study beside it
            run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "postgres", database)
        artifacts = base / "artifacts"
        server = _start_mlflow(
            "server", port, base, host,
            "--backend-store-uri", f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/mlflow",
            "--serve-artifacts", "--artifacts-destination", str(artifacts),
        )  # fmt: skip
        yield f"http://{host}:{port}", artifacts, f"postgresql+psycopg://postgres@127.0.0.1:{pg_port}/optuna"
    finally:
        if server is not None:
            _stop(server)
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _start_mlflow(command: str, port: int, folder: Path, host: str, *options: str) -> subprocess.Popen:
    """``mlflow server`` or ``mlflow ui`` on host:port, its log in ``folder``, answering /health."""
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", command, "--host", host, "--port", str(port), "--workers", "1", *options],
        stdout=open(folder / f"mlflow-{port}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True, cwd=folder,
    )  # fmt: skip
    try:
        _wait_for(f"http://{host}:{port}/health", 120, server)
    except BaseException:
        _stop(server)
        raise
    return server


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: its own process group
    server.wait(timeout=30)


@contextlib.contextmanager
def mlflow_ui(store: Path) -> Iterator[str]:
    """The README's UI command on a local store folder (``mlflow.db`` and ``artifacts/``), on 127.0.0.1,
    stopped by PID on exit. Yields its URL."""
    port = _free_port()
    server = _start_mlflow(
        "ui",
        port,
        store,
        "127.0.0.1",
        "--backend-store-uri",
        f"sqlite:///{store}/mlflow.db",
        "--artifacts-destination",
        str(store / "artifacts"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(server)
