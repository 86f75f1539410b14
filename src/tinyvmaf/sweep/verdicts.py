"""A job's verdict where its sweep finds it, wherever the job ran: a ``FAILED`` file in the job's
own output folder (the job writes its own; a launcher writes it for a job that never ran its
code), and an ``INTERRUPTED`` file in the sweep folder when the launching process was stopped.
The standard library only: every entry point imports this before MLflow's telemetry switch is set.
"""

from __future__ import annotations

from pathlib import Path

from tinyvmaf.errors import without_passwords

FAILED_MARKER = "FAILED"  # in a job's folder: one line, its overrides and why it failed
INTERRUPTED_MARKER = "INTERRUPTED"  # in the sweep folder: the launching process was stopped


def mark_failed_job(folder: Path, overrides: list[str], message: str) -> None:
    """A job's verdict in its folder, one line: its overrides and why (no password in it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FAILED_MARKER).write_text(without_passwords(f"{' '.join(overrides)}: {' '.join(message.split())}") + "\n")


def failure_of(folder: Path) -> str | None:
    """Why the job of ``folder`` failed, as its verdict says (without its overrides), or None."""
    marker = folder / FAILED_MARKER
    return marker.read_text().strip().split(": ", 1)[-1] if marker.is_file() else None


def clear_verdicts(sweep_dir: Path) -> None:
    """A rerun into the same sweep folder: the earlier verdicts are not this run's."""
    for marker in [sweep_dir / INTERRUPTED_MARKER, *sweep_dir.glob(f"*/{FAILED_MARKER}")]:
        marker.unlink(missing_ok=True)


def job_folders(sweep_dir: Path) -> list[Path]:
    """The folders of the jobs that ran (Hydra's ``.hydra``) or were given a verdict."""
    if not sweep_dir.is_dir():
        return []
    return [d for d in sweep_dir.iterdir() if (d / ".hydra").is_dir() or (d / FAILED_MARKER).is_file()]


def failed_jobs(jobs: list[Path]) -> list[str]:
    """The verdict lines of the failed ones among ``jobs``, sorted."""
    return sorted((d / FAILED_MARKER).read_text().strip() for d in jobs if (d / FAILED_MARKER).is_file())


def interruption(sweep_dir: Path) -> str | None:
    marker = sweep_dir / INTERRUPTED_MARKER
    return marker.read_text().strip() if marker.is_file() else None


def mark_interrupted(sweep_dir: Path, what: str) -> None:
    (sweep_dir / INTERRUPTED_MARKER).write_text(f"{what}\n")
