"""The observation window: after the switch-over both QEMUs must do what they should.

For a bounded window after the harness first saw the target in its final run state,
:class:`Window` watches a list of QEMUs, each against its own :class:`Expectation`:

* the **target** must stay alive, answer ``query-status`` with ``running`` (``paused``
  for a paused case) every time it is asked, and send no ``RESET``, ``STOP``,
  ``SHUTDOWN``, ``GUEST_PANICKED`` or further ``MIGRATION`` event (nor, for a paused
  guest, ``RESUME``) after its ``RESUME``; at the end the guest's progress is read (boot
  count unchanged, counter past its value at the start);
* the **source** (the old QEMU, which still maps the guest's RAM) must stay in
  ``postmigrate``, send no ``RESUME`` (nor another run-state event) after its migration
  completed, print nothing more on the guest's console, and its vCPU threads must not
  run: a source that runs the guest again is a split brain, two QEMUs on one RAM.

A QEMU that stops answering its monitor is diagnosed once (:mod:`harness.qemu.hang`);
one that dies is recorded with how and when. Each registered check family's
:class:`~harness.run.checks.base.Watcher` is polled with the window and ended into its
record. The pause sampler samples through the window (the collector judges its
stalls); the driver verifies the RAM pattern at its end.

A broken QEMU used by the self-tests may hold the window open until it has done its
damage: while ``<its QMP socket>.hold`` exists (at most :data:`HOLD_MAX_S`), the window
does not close, and once the file is gone it runs a whole window more, so the damage's
effects (an event, a reboot, a death) are seen however loaded the host is. A real QEMU
never creates that file; it can only make a window longer.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from harness.core.errors import QMPConnectionLost, VMLaunchFailure, WaitTimeout
from harness.core.sides import Side
from harness.core.wait import wait_until
from harness.evidence.console import write_position
from harness.guest.driver import GuestDriver, WorkArea
from harness.qemu.hang import Hang, diagnose_hang
from harness.qemu.process import QemuProcess
from harness.qemu.states import RunState
from harness.run.checks.base import Watcher
from harness.run.records import (Death, EventSeen, GuestSeen, StateSeen, WatchRecord,
                                 WindowRecord)

#: Events that must not reach a target after its RESUME.
FORBIDDEN = ("RESET", "STOP", "SHUTDOWN", "GUEST_PANICKED", "MIGRATION")
#: Events that must not reach a source after its migration completed: any of them
#: means it runs (or restarts) the guest again.
SOURCE_FORBIDDEN = ("RESUME", "RESET", "STOP", "SHUTDOWN", "GUEST_PANICKED", "MIGRATION")
HOLD_SUFFIX = ".hold"
#: The longest a hold file may keep a window open.
HOLD_MAX_S = 30.0
POLL_S = 0.05
#: A monitor that does not answer ``query-status`` this long is not answering.
ANSWER_S = 3.0
#: vCPU threads of a stopped QEMU use no CPU; this share of the window is the most a
#: source's may use (scheduler accounting is in ticks of 10 ms).
VCPU_IDLE_SHARE = 0.05
_VCPU_THREAD = re.compile(r"^CPU \d+/|^ALL CPUs/")


def event_time(ev: Mapping[str, Any]) -> float:
    ts = ev.get("timestamp") or {}
    return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6


def vcpu_ticks(pid: int) -> Optional[int]:
    """CPU time (clock ticks) the vCPU threads of QEMU ``pid`` have used; None: unknown."""
    total, found = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if not _VCPU_THREAD.match(f.read()):
                    continue
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        found = True
    return total if found else None


def file_size(path: Optional[str]) -> Optional[int]:
    try:
        return os.path.getsize(path) if path else None
    except OSError:
        return None


@dataclass(frozen=True)
class Expectation:
    """What one watched QEMU must do through the window.

    ``anchor``: the event after which ``forbidden`` events count: a target's first
    ``RESUME``; a source's last ``STOP`` before the window (the one that stopped it for
    the switch-over; QEMU sends no ``MIGRATION`` event unless asked); "" all of them;
    ``guest_moves``: read the guest's progress at the end (it runs there);
    ``vcpus_idle``: its vCPU threads must not run; ``silent_console``: the guest's
    console file that must not grow."""
    role: str
    want: RunState
    forbidden: Tuple[str, ...]
    anchor: str = ""
    guest_moves: bool = False
    vcpus_idle: bool = False
    silent_console: Optional[str] = None


def target_expectation(paused: bool) -> Expectation:
    if paused:  # a guest paused before the transfer must not run on the target at all
        return Expectation("target", RunState.PAUSED, FORBIDDEN + ("RESUME",), "",
                           guest_moves=True)
    return Expectation("target", RunState.RUNNING, FORBIDDEN, "RESUME", guest_moves=True)


def source_expectation(console: Optional[str]) -> Expectation:
    return Expectation("source", RunState.POSTMIGRATE, SOURCE_FORBIDDEN, "STOP",
                       vcpus_idle=True, silent_console=console)


class ProcessWatch:
    """One QEMU watched through a window, against its :class:`Expectation`."""

    def __init__(self, vm: QemuProcess, exp: Expectation, start: float,
                 died: Callable[[QemuProcess], Death], hang_dir: str):
        self.vm, self.exp, self.start = vm, exp, start
        #: The window's start on QEMU's clock (its event timestamps are wall-clock).
        self.start_wall = time.time() - (time.monotonic() - start)
        self._died, self.hang_dir = died, hang_dir
        self.hold = vm.qmp_path + HOLD_SUFFIX
        self.polls: Dict[str, int] = {}
        self.first_wrong: Optional[StateSeen] = None
        self.death: Optional[Death] = None
        self.hang: Optional[Hang] = None
        self.held_s, self.hold_expired = 0.0, ""
        self.vcpu0 = vcpu_ticks(vm.pid) if exp.vcpus_idle and vm.is_running() else None
        self.console0 = self.console_written()
        #: What the window's end showed (:meth:`collect`).
        self.events: Tuple[EventSeen, ...] = ()
        self.anchor_seen = False
        self.vcpu_ms: Optional[float] = None
        self.console_grew: Optional[int] = None
        self.observed_s = 0.0

    def console_written(self) -> Optional[int]:
        """How far this QEMU has written its console: its own fd's position in the file
        (another QEMU may write the same file: a shared console), else the file's size."""
        path = self.exp.silent_console
        if not path:
            return None
        pos = write_position(self.vm.pid, path) if self.vm.is_running() else None
        return pos if pos is not None else file_size(path)

    def since_start(self) -> float:
        return round(time.monotonic() - self.start, 3)

    def poll(self) -> RunState:
        vm = self.vm
        if self.death is not None:
            return RunState.DEAD
        if vm.poll() is not None:
            self.death = self._died(vm)
            return RunState.DEAD
        state = RunState.NO_ANSWER
        if self.hang is None:  # a monitor that did not answer once is not asked again
            try:
                state = RunState(vm.qmp.cmd("query-status", timeout=ANSWER_S)["status"])  # type: ignore[union-attr]
            except (QMPConnectionLost, WaitTimeout) as exc:
                if vm.poll() is not None or not vm.is_running():
                    self.death = self._died(vm)
                    return RunState.DEAD
                if isinstance(exc, WaitTimeout):
                    self.hang = diagnose_hang(Side(vm.side), vm.name, vm.pid, vm.exe,
                                              "answer to query-status", exc.elapsed,
                                              os.path.join(self.hang_dir,
                                                           f"{vm.name}.hang.txt"),
                                              vm.log_path)
        self.polls[state] = self.polls.get(state, 0) + 1
        if state != self.exp.want and self.first_wrong is None:
            self.first_wrong = StateSeen(state, self.since_start())
        return state

    def held(self, elapsed: float, seconds: float) -> bool:
        """Whether this QEMU's hold file keeps the window open."""
        if not os.path.exists(self.hold):
            return False
        self.held_s = round(elapsed, 3)
        if elapsed < seconds + HOLD_MAX_S:
            return True
        self.hold_expired = self.hold
        return False

    def _events(self) -> Tuple[Tuple[EventSeen, ...], bool]:
        """The forbidden events after the anchor (all of them if the anchor was missed:
        a monitor may connect after it), and whether the anchor was seen."""
        qmp = self.vm.qmp
        if qmp is None:
            return (), False
        try:
            if qmp.connected and self.hang is None and self.death is None:
                qmp.events()  # collect what is queued
        except (QMPConnectionLost, WaitTimeout):
            pass
        events = list(qmp.all_events)
        anchors = [e for e in events if e.get("event") == self.exp.anchor]
        if self.exp.anchor == "STOP":  # the source's: the last one before the window
            anchors = [e for e in anchors if event_time(e) <= self.start_wall][-1:]
        anchor = anchors[0] if anchors else None
        after = event_time(anchor) if anchor is not None else float("-inf")
        bad = tuple(EventSeen(e["event"],
                              round(event_time(e) - after, 3) if anchor is not None else None,
                              dict(e.get("data") or {}))
                    for e in events
                    if e.get("event") in self.exp.forbidden and event_time(e) > after
                    and e is not anchor)
        return bad, anchor is not None

    def collect(self) -> None:
        """At the window's end: its events, its vCPU time, its console's growth."""
        self.observed_s = self.since_start()
        self.events, self.anchor_seen = self._events()
        if self.vcpu0 is not None and self.death is None:
            now = vcpu_ticks(self.vm.pid)
            if now is not None:
                self.vcpu_ms = round((now - self.vcpu0) * 1000.0 / os.sysconf("SC_CLK_TCK"),
                                     1)
        console = self.console_written()
        if console is not None and self.console0 is not None:
            self.console_grew = console - self.console0

    def finish(self, guest: Optional[GuestSeen]) -> WatchRecord:
        return WatchRecord(self.exp.role, self.vm.name, Side(self.vm.side), self.exp.want,
                           tuple(self.polls.items()), self.first_wrong, self.events,
                           self.anchor_seen, self.death, self.hang, self.observed_s,
                           self.held_s, self.hold_expired, guest, self.vcpu_ms,
                           self.console_grew)


class Window:
    """One attempt's window: its watched QEMUs (the first is the target, whose death
    ends the window) and the device watchers of the registered check families."""

    def __init__(self, watches: List[Tuple[QemuProcess, Expectation]], seconds: float,
                 died: Callable[[QemuProcess], Death], guest: GuestDriver,
                 settle_s: float, hang_dir: str,
                 devices: Optional[Dict[str, Watcher]] = None):
        self.start = time.monotonic()
        self.seconds, self.guest, self.settle_s = seconds, guest, settle_s
        self.watches = [ProcessWatch(vm, exp, self.start, died, hang_dir)
                        for vm, exp in watches]
        self.devices = dict(devices or {})
        self._held = 0.0

    @property
    def target(self) -> ProcessWatch:
        return self.watches[0]

    def watch(self) -> None:
        """Poll every watched QEMU until the window's time is up (and no hold is left)."""
        try:
            wait_until(self._poll, what="the observation window to end",
                       timeout=2 * self.seconds + HOLD_MAX_S + 5.0, goal=self._over,
                       terminal=lambda state: state is RunState.DEAD,
                       side=self.target.vm.side, interval=POLL_S)
        except WaitTimeout:
            pass  # a hold that never went away: the window closes; `held_s` says so
        if self.target.death is None:
            self._poll()  # once more: whatever a held window waited for has happened now
        for w in self.watches:
            w.collect()

    def _poll(self) -> RunState:
        states = [w.poll() for w in self.watches]
        for d in self.devices.values():
            d.poll()
        return states[0]

    def _over(self, _state: RunState) -> bool:
        elapsed = time.monotonic() - self.start
        holding = [w.held(elapsed, self.seconds) for w in self.watches]
        if any(holding):
            self._held = round(elapsed, 3)
            return False
        # Released: the wrapper's damage is done; its effects (an event, a reboot, a
        # death) get a whole window more to show, however loaded the host is.
        return elapsed >= self.seconds + self._held

    def finish(self, counter_start: Optional[int]) -> WindowRecord:
        """The record: each QEMU's watch (the target's with the guest's progress at the
        end), each device watcher's."""
        records = []
        for w in self.watches:
            guest = self._progress(w, counter_start) if w.exp.guest_moves else None
            records.append(w.finish(guest))
        return WindowRecord(self.seconds, self.target.observed_s, tuple(records),
                            {name: d.finish() for name, d in self.devices.items()})

    def _progress(self, w: ProcessWatch, counter_start: Optional[int]) -> Optional[GuestSeen]:
        """The guest's progress at the window's end: counter past its value at the start
        (unchanged for a paused guest), boot count."""
        if w.death is not None or w.hang is not None or w.vm.qmp is None:
            return None
        try:
            wa = self._read_progress(w, counter_start)
        except (QMPConnectionLost, VMLaunchFailure, WaitTimeout):  # it died meanwhile
            if not w.vm.is_running():
                w.death = w._died(w.vm)
            return None
        return GuestSeen(counter_start, wa.counter, wa.boots)

    def _read_progress(self, w: ProcessWatch, counter_start: Optional[int]) -> WorkArea:
        g = self.guest
        if w.exp.want is RunState.PAUSED or counter_start is None or w.first_wrong:
            return g.read(w.vm)
        try:
            return g.wait_moving(w.vm, self.settle_s, above=counter_start)
        except WaitTimeout:
            return g.read(w.vm)
