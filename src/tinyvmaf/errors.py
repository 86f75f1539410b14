"""User-facing errors: one line naming the file or option at fault, never a traceback."""

import math
import re
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf.errors import MissingMandatoryValue


class TinyVmafError(Exception):
    """A user-facing failure: bad input, a bad option, a tool that is not what it claims to be.

    Entry points print ``error: <message>`` for it and exit non-zero, never a traceback.
    """


class Interrupted(BaseException):
    """SIGTERM (a scheduler's stop, a preemption, ``kill``) or Ctrl-C, raised by the entry points'
    signal handler: what is running stops and cleans up on the way out (its MLflow runs end
    KILLED), and the command exits 130. A ``BaseException``, so that no ``except Exception`` takes
    it for an error."""


_PASSWORD = re.compile(r"(?<=://)([^\s/@:]*):[^\s/]*@")


def without_passwords(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it replaced by ``***``."""
    return _PASSWORD.sub(r"\1:***@", text)


def user_error(exc: BaseException) -> str | None:
    """The one-line message of a user's mistake behind ``exc``, also when Hydra wrapped it while
    instantiating a config node, with no password in it; None for anything else (a bug, which
    keeps its traceback)."""
    exc = _unwrapped(exc)
    if isinstance(exc, TinyVmafError):
        return without_passwords(" ".join(str(exc).split()))
    if isinstance(exc, MissingMandatoryValue):
        return f"{exc.full_key}: missing value; give it on the command line ({exc.full_key}=...)"
    return None


def finite_number(value: object) -> bool:
    """A real, finite number as an option or field may hold it: not a bool, not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


SEEDS = 2**32  # numpy's and Lightning's seeds: 0 <= seed < 2**32


def boolean_option(value: object, option: str) -> bool:
    """``value`` if it is true or false: a string such as ``no`` is true to Python, and would do
    the opposite of what was asked."""
    if not isinstance(value, bool):
        raise TinyVmafError(f"{option}={value!r:.40}: must be true or false")
    return value


def seed_option(value: object, option: str) -> int:
    """``value`` if it is a seed every library here takes (an integer from 0 to 2**32 - 1)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < SEEDS:
        raise TinyVmafError(f"{option}={value!r:.40}: must be an integer from 0 to 2**32 - 1")
    return value


def instantiate_checked(node: Any, **kwargs: Any) -> Any:
    """Hydra's ``instantiate``, with a user error raised inside it surfacing as itself, not wrapped."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = _unwrapped(exc)
        if isinstance(cause, TinyVmafError):
            raise cause from None
        raise


def _unwrapped(exc: BaseException) -> BaseException:
    """What Hydra wrapped, perhaps several times over (a node inside a node), while instantiating."""
    while isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc
