"""The old QEMU through the window: after it handed the guest over it must stay stopped.

After ``completed`` the source still maps the guest's RAM. One that runs the guest again
(a ``cont`` from a confused management layer, a bug in the postmigrate state) runs the
same guest on the same memory as the target: two sets of vCPUs writing one RAM, a split
brain. So through the whole window the source must answer ``postmigrate`` at every
poll, send no ``RESUME`` (nor a reset, stop, shutdown, panic or migration event) after
its migration completed, print nothing on the guest's console, and its vCPU threads
must not run (their CPU time from /proc: a stopped QEMU's use none).

A source that dies or hangs after completion is not a split brain, but it is a failure
all the same: until the new QEMU is known good the old one is the only way back
(``cont`` on it, CPR.rst's recovery after a failed update), so it must stay alive and
answering until the management layer quits it (docs/ram-evidence.md).
"""
from __future__ import annotations

from typing import List

from harness.core.errors import Check
from harness.run.checks import window
from harness.run.checks.base import define
from harness.run.records import WatchRecord, WindowRecord

ALIVE = define("source.alive", "source alive and answering through the observation window",
               "death")
STOPPED = define("source.stopped", "source stayed stopped after the switch-over",
                 "split-brain")
#: The share of the window a stopped source's vCPU threads may use (accounting is in
#: 10 ms ticks; a resumed source's spin through most of it).
VCPU_IDLE_SHARE = 0.05


def ran(s: WatchRecord, seconds: float) -> List[str]:
    """Each sign that the source ran the guest after the switch-over, in words."""
    signs = [e.describe() for e in s.events]
    if s.first_wrong is not None and s.hang is None:
        signs.append(f"{s.first_wrong.state} {s.first_wrong.at_s:.2f} s into the window")
    limit = VCPU_IDLE_SHARE * seconds * 1000.0
    if s.vcpu_ms is not None and s.vcpu_ms > limit:
        signs.append(f"vCPU threads ran {s.vcpu_ms:g} ms of {s.observed_s * 1000:.0f}")
    if s.console_bytes_after:
        signs.append(f"printed {s.console_bytes_after} byte(s) on the guest's console")
    return signs


def judge_source(w: WindowRecord, s: WatchRecord, at: str) -> List[Check]:
    gone = s.death.describe() if s.death is not None else \
        s.hang.describe() if s.hang is not None else ""
    out = [ALIVE(not gone, f"alive and answering for {w.seconds:g} s after the switch-over",
                 gone or f"alive, {s.observed_s:g} s watched",
                 "the old QEMU is the only way back until the new one is known good: it "
                 "must stay until the management layer quits it", at)]
    out += window.judge_hold(s, at)
    if s.death is not None:
        return out
    signs = ran(s, w.seconds)
    seen = f"query-status: {s.polls_text()}" + (
        f"; vCPU threads ran {s.vcpu_ms:g} ms" if s.vcpu_ms is not None else
        "; vCPU time not readable") + ("" if s.anchor_seen else
                                       "; its switch-over STOP event was not seen")
    out.append(STOPPED(not signs, f"{s.want}, no RESUME, vCPUs idle, console silent",
                       "; ".join(signs) + f" ({s.polls_text()})" if signs else seen,
                       "the old QEMU ran the guest again after handing it over: a split "
                       "brain, two QEMUs writing one RAM", at))
    return out


window.JUDGES["source"] = judge_source
