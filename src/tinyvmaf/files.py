"""File helpers every stage shares: safe file names for user-given names, atomic writes, digests."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tinyvmaf.errors import TinyVmafError

# Kept as they are in a file name; every other character is percent-encoded (UTF-8 bytes).
_KEPT = frozenset(string.ascii_letters + string.digits + "-_.")
# File systems cap a name at 255 bytes; leave room for an extension and a temporary suffix.
_MAX_NAME = 120


def safe_name(name: str, what: str = "name") -> str:
    """The form of a user-given name (a corpus, clip, source or sweep) used as one file name.

    Readable names (letters, digits, ``-_.``) are kept as they are; any other character,
    and a leading dot, is percent-encoded, so the result is never ``.``/``..``, hidden, or
    holds a separator. Distinct names give distinct results: ``%`` itself is encoded, and a
    name too long for a file system is cut and ends in ``~`` and a hash, a character no
    uncut result holds. ``what`` names the option or field in the error for an empty name.
    """
    if not isinstance(name, str) or not name:
        raise TinyVmafError(f"{what}: an empty name cannot be used")
    encoded = "".join(
        c
        if c in _KEPT and not (i == 0 and c == ".")
        else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for i, c in enumerate(name)
    )
    if len(encoded) <= _MAX_NAME:
        return encoded
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:24]
    return f"{encoded[: _MAX_NAME - 25]}~{digest}"


def config_key(name: str, what: str = "name") -> str:
    """The form of a user-given name used as a Hydra config group or key: ``[A-Za-z0-9_-]`` only.

    A name that is already such a key is kept; any other has its other characters replaced by
    ``_`` and a hash of the whole name added, so two names still never meet.
    """
    if not isinstance(name, str) or not name:
        raise TinyVmafError(f"{what}: an empty name cannot be used")
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_-]+', '_', name)[:60]}-{digest}"


def config_literal(value: str) -> str:
    """``value`` as a string OmegaConf reads back as itself: a user's name is data, never an
    interpolation (``${oc.env:HOME}`` stays that text). OmegaConf reads ``\\${`` as an escaped
    ``${`` and ``\\\\`` before one as an escaped backslash, so every backslash run before a ``${``
    is doubled and one more added."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)


def inside(folder: Path, name: str, suffix: str = "", what: str = "name") -> Path:
    """``folder/<safe_name(name)><suffix>``: a path that cannot leave ``folder``."""
    return folder / f"{safe_name(name, what)}{suffix}"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a hidden temp path beside ``path``; rename it into place only if the block succeeds.

    An interrupted or failed write therefore never leaves a half-written file under the real name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.uname().nodename}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextmanager
def open_regular(path: Path, limit: int, what: str, follow_links: bool = False) -> Iterator[BinaryIO]:
    """``path`` opened for reading, once it is known to be a regular file of at most ``limit``
    bytes (``what`` names it in the error).

    Opened without blocking (and, for files tinyvmaf writes itself, without following a link),
    then checked on the open descriptor: a FIFO, a device or a link to ``/dev/zero`` is refused
    at once instead of hanging or reading until memory runs out. A missing file raises
    ``FileNotFoundError`` for the caller to decide what absence means.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        kind = "a symbolic link" if not follow_links and os.path.islink(path) else exc.strerror
        raise TinyVmafError(f"{path}: cannot be read ({kind})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise TinyVmafError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise TinyVmafError(f"{path}: {info.st_size:,} bytes, more than the {limit:,} {what} may hold")
        yield f


def read_bounded(path: Path, limit: int, what: str, follow_links: bool = False) -> bytes:
    """The bytes of ``open_regular(path, ...)``; a file that grew after the check is still read
    only up to ``limit``."""
    with open_regular(path, limit, what, follow_links) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TinyVmafError(f"{path}: more than the {limit:,} bytes {what} may hold")
    return data


@contextmanager
def folder_lock(folder: Path, shared: bool = False, busy: str | None = None) -> Iterator[None]:
    """A lock on the folder itself (flock on its descriptor, so no lock file is left in a folder
    that is not tinyvmaf's): exclusive holders take turns, shared ones run together. The kernel
    drops it when the holder dies, even by kill -9. ``busy`` is printed once if we must wait."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if busy:
                print(busy, flush=True)
            fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock
