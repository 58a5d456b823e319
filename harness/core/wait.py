"""The one bounded wait, and the case's deadline every wait stays inside.

:func:`wait_until` polls a probe until its value reaches a goal, fails fast when the
value is terminal (qtest's ``wait_for_migration_status(goal, ungoals)``), and raises
:class:`~harness.core.errors.WaitTimeout` naming what it waited for, the side, the last
value seen and the time when neither happens in time. It never returns ``None`` on a
timeout (avocado's ``wait_for``) and a hang never surfaces as a wrong value.

A case runs inside :func:`case_deadline`: every wait (and every QMP reply, process
exit, listener...) asks :func:`budget` for its timeout, which clamps it to what is left
of the case. So the harness's own typed error always fires before pytest-timeout's.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, Optional, Tuple, TypeVar

from harness.core.errors import WaitTimeout

T = TypeVar("T")

#: (monotonic end time, what the deadline is for) of the case running in this context.
_DEADLINE: ContextVar[Optional[Tuple[float, str]]] = ContextVar("cprh_deadline", default=None)


@contextmanager
def case_deadline(seconds: float, what: str = "the case") -> Iterator[None]:
    """Every wait inside the block ends by ``seconds`` from now (nested: the earlier)."""
    end = time.monotonic() + seconds
    outer = _DEADLINE.get()
    if outer is not None and outer[0] < end:
        end, what = outer
    token = _DEADLINE.set((end, what))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def remaining() -> Optional[float]:
    """Seconds left of the current case's deadline (None: no deadline set)."""
    d = _DEADLINE.get()
    return None if d is None else d[0] - time.monotonic()


def budget(timeout: float) -> float:
    """``timeout`` clamped to the case's deadline, never below a millisecond."""
    left = remaining()
    t = float(timeout) if left is None else min(float(timeout), left)
    return max(t, 0.001)


def deadline_what() -> str:
    d = _DEADLINE.get()
    return d[1] if d else ""


@dataclass(frozen=True)
class Waited(Generic[T]):
    """How a wait ended: its goal (``reached``) or a terminal value (``not reached``)."""
    what: str
    value: T
    elapsed: float
    polls: int
    reached: bool


def wait_until(probe: Callable[[], T], *, what: str, timeout: float,
               goal: Callable[[T], bool] = bool,
               terminal: Callable[[T], bool] = lambda _v: False,
               side: Optional[str] = None, interval: float = 0.02,
               log_path: Optional[str] = None,
               show: Callable[[Any], Any] = lambda v: v) -> Waited[T]:
    """Poll ``probe()`` until ``goal(value)`` or ``terminal(value)``; raise on timeout.

    ``probe`` may raise (e.g. :class:`~harness.core.errors.VMLaunchFailure` from a
    liveness check): that ends the wait with its own error. ``show`` turns the last
    value into what the timeout message quotes.

    :raise WaitTimeout: neither happened within ``timeout`` (or the case's deadline,
        whichever comes first; ``WaitTimeout.deadline`` says which).
    """
    start = time.monotonic()
    limit = budget(timeout)
    clamped = limit < float(timeout)
    polls = 0
    while True:
        value = probe()
        polls += 1
        if goal(value):
            return Waited(what, value, time.monotonic() - start, polls, True)
        if terminal(value):
            return Waited(what, value, time.monotonic() - start, polls, False)
        left = start + limit - time.monotonic()
        if left <= 0:
            raise WaitTimeout(what, limit, time.monotonic() - start, show(value), side,
                              log_path, deadline=deadline_what() if clamped else "")
        time.sleep(min(interval, left))


def sleep(seconds: float) -> None:
    """Sleep, but never past the case's deadline."""
    time.sleep(budget(seconds) if seconds > 0 else 0)
