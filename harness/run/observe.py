"""The observation window: after the switch-over the target must go on running the guest.

For a bounded window after the harness first saw the target in its final run state,
:class:`Window` watches the target: the process is alive, ``query-status`` says
``running`` (``paused`` for a paused case) every time it is asked, and no ``RESET``,
``STOP``, ``SHUTDOWN``, ``GUEST_PANICKED`` or further ``MIGRATION`` event (nor, for a
paused guest, ``RESUME``) reaches its monitor after its ``RESUME``. The pause sampler
samples through the window (the collector judges its stalls); at the end the guest's
progress is read again (boot count unchanged, counter past its value at the start) and
the driver verifies the RAM pattern, so a page changed any time inside the window is
caught. The evidence work of a completed transfer runs inside the window.

A broken target used by the self-tests may hold the window open until it has done its
damage: while ``<its QMP socket>.hold`` exists (at most :data:`HOLD_MAX_S`), the window
does not close, and once the file is gone it runs a whole window more, so the damage's
effects (an event, a reboot, a death) are seen however loaded the host is. A real QEMU
never creates that file; it can only make a window longer.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from harness.core.errors import QMPConnectionLost, VMLaunchFailure, WaitTimeout
from harness.core.logs import tail
from harness.core.wait import wait_until
from harness.qemu.process import QemuProcess, describe_exit

if TYPE_CHECKING:
    from harness.run.driver import PairDriver

#: Events that must not reach a target after its RESUME.
FORBIDDEN = ("RESET", "STOP", "SHUTDOWN", "GUEST_PANICKED", "MIGRATION")
HOLD_SUFFIX = ".hold"
#: The longest a hold file may keep a window open.
HOLD_MAX_S = 30.0
POLL_S = 0.05


def _event_time(ev: Dict[str, Any]) -> float:
    ts = ev.get("timestamp") or {}
    return float(ts.get("seconds", 0)) + float(ts.get("microseconds", 0)) / 1e6


class Window:
    """One attempt's window on its target; :attr:`record` is what it saw (plain data)."""

    def __init__(self, d: "PairDriver", vm: QemuProcess, seconds: float, paused: bool):
        self.d, self.vm, self.seconds, self.paused = d, vm, seconds, paused
        self.want = "paused" if paused else "running"
        self.start = time.monotonic()
        self.hold = vm.qmp_path + HOLD_SUFFIX
        self.record: Dict[str, Any] = {"seconds": seconds, "want": self.want,
                                       "statuses": {}, "wrong_status": None, "events": [],
                                       "resume_seen": False, "death": None, "held_s": 0.0}

    # -- watching ---------------------------------------------------------------------

    def watch(self) -> None:
        """Poll the target until the window's time is up (and no hold is left)."""
        try:
            wait_until(self._poll, what="the observation window to end",
                       timeout=2 * self.seconds + HOLD_MAX_S + 5.0, goal=self._over,
                       terminal=lambda state: state == "dead", side=self.vm.side,
                       interval=POLL_S)
        except WaitTimeout:
            pass  # a hold that never went away: the window closes; `held_s` says so
        if self.record["death"] is None:
            self._poll()  # once more: whatever a held window waited for has happened now
        self.record["observed_s"] = round(time.monotonic() - self.start, 3)
        self._events()

    def _over(self, _state: str) -> bool:
        elapsed = time.monotonic() - self.start
        if os.path.exists(self.hold):
            self.record["held_s"] = round(elapsed, 3)
            if elapsed < self.seconds + HOLD_MAX_S:
                return False
            self.record["hold_expired"] = self.hold
            return True
        # Released: the wrapper's damage is done; its effects (an event, a reboot, a
        # death) get a whole window more to show, however loaded the host is.
        return elapsed >= self.seconds + (self.record["held_s"] or 0.0)

    def _poll(self) -> str:
        vm = self.vm
        if vm.poll() is not None:
            self._died()
            return "dead"
        try:
            status = vm.qmp.cmd("query-status")["status"]  # type: ignore[union-attr]
        except (QMPConnectionLost, WaitTimeout):
            if vm.poll() is not None or not vm.is_running():
                self._died()
                return "dead"
            status = "no answer"
        seen = self.record["statuses"]
        seen[status] = seen.get(status, 0) + 1
        if status != self.want and self.record["wrong_status"] is None:
            self.record["wrong_status"] = {"status": status, "at_s": self.since_start()}
        return status

    def _died(self) -> None:
        if self.record["death"] is not None:
            return
        vm = self.vm
        try:
            code: Optional[int] = vm.wait_exit(2.0)
        except WaitTimeout:
            code = vm.poll()
        crash = self.d.diagnose(vm)
        self.record["death"] = {
            "side": vm.side, "exitcode": code,
            "how": describe_exit(code) + (f" ({crash.describe()})" if crash else ""),
            "since_resume_s": self.since_start(), "log": vm.log_path,
            "log_tail": tail(vm.log_path, 5)}

    def since_start(self) -> float:
        return round(time.monotonic() - self.start, 3)

    def _events(self) -> None:
        """The forbidden events after the target's RESUME (all of them if it was missed:
        its monitor may connect after the guest resumed)."""
        qmp = self.vm.qmp
        if qmp is None:
            return
        try:
            if qmp.connected:
                qmp.events()  # collect what is queued
        except (QMPConnectionLost, WaitTimeout):
            pass
        events = list(qmp.all_events)
        resumes = [e for e in events if e.get("event") == "RESUME"]
        self.record["resume_seen"] = bool(resumes)
        if self.paused:
            # A guest paused before the transfer must not run on the target at all.
            after, forbidden = float("-inf"), FORBIDDEN + ("RESUME",)
        else:
            after, forbidden = (_event_time(resumes[0]) if resumes else float("-inf")), FORBIDDEN
        bad: List[Dict[str, Any]] = []
        for e in events:
            t = _event_time(e)
            if e.get("event") in forbidden and t > after:
                bad.append({"event": e["event"], "data": e.get("data"),
                            "after_resume_s": round(t - after, 3) if resumes and
                            not self.paused else None})
        self.record["events"] = bad

    # -- at the end ---------------------------------------------------------------------

    def progress(self, counter_start: Optional[int]) -> None:
        """The guest's progress at the window's end: counter past its value at the start
        (unchanged for a paused guest), boot count."""
        if self.record["death"] is not None or self.vm.qmp is None:
            return
        g = self.d.g
        self.record["counter_start"] = counter_start
        try:
            try:
                if self.paused or counter_start is None or self.record["wrong_status"]:
                    wa = g.read(self.vm)
                else:
                    wa = g.wait_moving(self.vm, self.d.t.settle, above=counter_start)
            except WaitTimeout:
                wa = g.read(self.vm)
        except (QMPConnectionLost, VMLaunchFailure):  # it died since the window's end
            self._died()
            return
        self.record["counter_end"] = wa.counter
        self.record["boots_end"] = wa.boots
