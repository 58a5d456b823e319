"""Huge pages a case needs, reserved for it and given back (also when the runner dies).

As root, :func:`reserved` raises ``nr_hugepages`` by what the case needs for as long as
it runs, under a host-wide lock (xdist workers reserve at the same time), and registers
the reservation with the janitor (:mod:`harness.core.cleanup`), which gives it back if
the runner is killed. Without root, or when the kernel cannot find the memory, the case
is a skip that says so.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Callable, Iterator

from harness.core.errors import Unsupported

LOCK_PATH = "/tmp/cprh-hugepages.lock"


def _dir(size_kb: int) -> str:
    return f"/sys/kernel/mm/hugepages/hugepages-{size_kb}kB"


def free(size_kb: int = 2048) -> int:
    try:
        with open(f"{_dir(size_kb)}/free_hugepages") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


@contextmanager
def _locked() -> Iterator[None]:
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def adjust(size_kb: int, delta: int) -> int:
    """Add ``delta`` (may be negative) to ``nr_hugepages``; return the new total."""
    path = f"{_dir(size_kb)}/nr_hugepages"
    with _locked():
        with open(path) as f:
            total = int(f.read())
        with open(path, "w") as f:
            f.write(str(max(total + delta, 0)))
        with open(path) as f:
            return int(f.read())


def _nothing(size_kb: int, pages: int) -> None:
    pass


@contextmanager
def reserved(pages: int, size_kb: int = 2048,
             on_reserved: Callable[[int, int], None] = _nothing,
             on_released: Callable[[int, int], None] = _nothing) -> Iterator[None]:
    """``pages`` more huge pages of ``size_kb`` while the block runs. ``on_reserved`` and
    ``on_released`` are told (size, pages) when the kernel's count goes up and back down
    (the janitor's watch: :func:`harness.core.cleanup.reserved_hugepages`).

    :raise Unsupported: not root, no such page size, or the kernel could not make them.
    """
    if free(size_kb) >= pages:
        yield  # the host has them already
        return
    how = f"echo N > {_dir(size_kb)}/nr_hugepages"
    if os.geteuid() != 0:
        raise Unsupported(f"needs {pages} free {size_kb // 1024} MiB huge pages, the host has "
                          f"{free(size_kb)}, and only root can reserve them ({how})")
    if not os.path.isdir(_dir(size_kb)):
        raise Unsupported(f"the kernel has no {size_kb} kB huge pages")
    adjust(size_kb, pages)
    on_reserved(size_kb, pages)
    try:
        if free(size_kb) < pages:
            raise Unsupported(f"asked the kernel for {pages} more {size_kb // 1024} MiB huge "
                              f"pages; it has {free(size_kb)} free (not enough contiguous "
                              f"memory)")
        yield
    finally:
        adjust(size_kb, -pages)
        on_released(size_kb, pages)
