"""The harness's heavy work yields to the guests it measures.

While a case measures its guest's pause (the sampler's baseline, the switch-over, the
observation window) another case may be filling or verifying 256 MiB of RAM, drawing a
timeline or building a report on the same cores: at the same priority, that work takes
the CPU from the guest's vCPU thread and shows up as the guest's stalls. So the heavy
work runs at a low priority (nice 10, per thread on Linux): it gets what the guests
leave. The pause sampler itself runs at a real-time priority instead
(:mod:`harness.evidence.sampler_child`) and never spins.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, List, TypeVar

#: The niceness of the harness's heavy work (0 is QEMU's and the guests').
BACKGROUND_NICE = 10

T = TypeVar("T")


def background() -> None:
    """The calling thread from now on yields to the guests (nice BACKGROUND_NICE)."""
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < BACKGROUND_NICE:
            os.setpriority(os.PRIO_PROCESS, tid, BACKGROUND_NICE)
    except OSError:
        pass  # not permitted: it runs as it is


def in_background(fn: Callable[..., T], *args: Any, **kw: Any) -> T:
    """``fn(*args, **kw)`` in a thread of its own that yields to the guests; its result,
    or its exception, as if called here."""
    out: List[Any] = []

    def run() -> None:
        background()
        try:
            out.append((True, fn(*args, **kw)))
        except BaseException as exc:  # handed back to the caller
            out.append((False, exc))

    t = threading.Thread(target=run, name="cprh-background", daemon=True)
    t.start()
    t.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value
