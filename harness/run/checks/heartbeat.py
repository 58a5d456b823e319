"""The guest's console carries on across the live update: the bare-metal guests print a
numbered heartbeat every few ms of their own time (docs/guest.md), and the target's
console must continue the source's sequence with nothing lost, repeated, out of order
or garbled, the source printing nothing more once it is stopped.

The worked example of a device check (docs/architecture.md): it adds nothing to the
command line (the guest's console is there already), its watcher takes the size of the
source's console file when the window opens (the source is stopped by then: what it
prints later is printed after the switch-over) and reads both files when the window
closes, and it judges the record that makes. The console's silence across the
switch-over, timed from the host, is read by the pause sampler and shown with the
pause (checks/pause.py)."""
from __future__ import annotations

import os
from typing import Callable, Iterable, List, Optional

from harness.core.errors import Check, HarnessError
from harness.evidence.console import (ConsoleContinuity, ConsoleFormat, console_continuity,
                                      heartbeat_format, serial_bytes, serial_size,
                                      write_position)
from harness.run.checks.base import Family, WatchContext, define
from harness.run.records import AttemptRecord
from harness.run.result import PairResult

CONTINUES = define("console.continues", "the guest's console continues on the target",
                   "device")


class ConsoleWatch:
    """One window's watch of the consoles (see the module's docstring). Where both
    QEMUs write one file (``Scenario.console``), the source's part of it ends where the
    source's own fd stood when the window opened (its last write)."""

    def __init__(self, fmt: ConsoleFormat, src: str, dst: str, src_pid: int = 0,
                 guest_count: Optional[Callable[[], Optional[int]]] = None):
        self.fmt, self.src, self.dst, self.guest_count = fmt, src, dst, guest_count
        self.shared = os.path.realpath(src) == os.path.realpath(dst)
        pos = write_position(src_pid, src) if self.shared and src_pid else None
        self.offset = pos if pos is not None else serial_size(src)

    def poll(self) -> None:
        pass

    def finish(self) -> ConsoleContinuity:
        # The guest's own count first: every heartbeat it names was printed before the
        # files are read, so the files must show it (a console that stopped reaching
        # the host has no hole in its sequence, only an end too early).
        count = self.guest_count() if self.guest_count is not None else None
        src = serial_bytes(self.src)
        if self.shared:  # one file: the source's bytes, then the target's
            cut = min(self.offset, len(src))
            return console_continuity(self.fmt, src[:cut], src[cut:], cut, count)
        return console_continuity(self.fmt, src, serial_bytes(self.dst),
                                  min(self.offset, len(src)), count)


def _guest_heartbeats(ctx: WatchContext) -> Optional[int]:
    """The guest's heartbeat count through the target, None when it cannot be read (the
    target died: the window's own checks say so)."""
    if ctx.target is None or not ctx.target.is_running():
        return None
    try:
        wa = ctx.guest.read(ctx.target)
    except (HarnessError, OSError):
        return None
    return wa.heartbeats if wa.valid else None


class Heartbeat(Family):
    name = "heartbeat"

    def watcher(self, ctx: WatchContext) -> Optional[ConsoleWatch]:
        fmt = heartbeat_format(ctx.guest.image)
        if fmt is None or ctx.scenario.paused or not ctx.serial.get("src") \
                or not ctx.serial.get("dst") or ctx.scenario.console == "file":
            # A console file both QEMUs open without append=on: the target writes it
            # again from its start, over the source's lines (args/serial-file judges
            # that loss), so the source's part cannot be read back to judge.
            return None
        return ConsoleWatch(fmt, ctx.serial["src"], ctx.serial["dst"], ctx.source.pid,
                            lambda: _guest_heartbeats(ctx))

    def judge(self, r: PairResult, a: AttemptRecord) -> Iterable[Check]:
        c = a.window.devices.get(self.name) if a.window is not None else None
        if not isinstance(c, ConsoleContinuity):
            return []
        out: List[Check] = [CONTINUES(
            c.unbroken, "the source's heartbeats continued on the target up to the guest's "
                        "own count: nothing lost, repeated or out of order, the source "
                        "silent after the switch-over",
            c.describe(), "the guest's console did not carry on across the live update",
            a.label)]
        return out
