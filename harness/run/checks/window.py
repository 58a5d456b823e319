"""What the observation window saw on each QEMU it watched (:mod:`harness.run.observe`),
against what that QEMU had to do: the target alive and running the guest, the source
(the old QEMU) stopped for good. The watching itself is the window's; these are the
checks of its records."""
from __future__ import annotations

from typing import Iterable, List, Optional

from harness.core.errors import Check
from harness.qemu.states import RunState
from harness.run.checks.base import Family, define, text
from harness.run.records import AttemptRecord, WatchRecord, WindowRecord
from harness.run.result import PairResult

ALIVE = define("window.alive", "target alive through the observation window", "death")
HOLD = define("window.hold", "hold file released", "harness")
RUN_STATE = define("window.run-state", "target run state through the observation window",
                   "run-state")
EVENTS = define("window.events", "no reset, stop, shutdown or panic event on the target",
                "run-state")
PROGRESS = define("window.progress", "guest progress through the observation window",
                  "guest-stalled")
BOOTS = define("window.boots", "guest not reset during the observation window", "guest-reset")


def _span(w: WindowRecord) -> str:
    return f"{w.seconds:g} s after the switch-over"


def judge_hold(t: WatchRecord, at: str) -> List[Check]:
    if not t.held_s:  # only a self-test's tampering wrapper makes a hold file
        return []
    return [HOLD(not t.hold_expired, "removed by the wrapper that made it",
                 f"held {t.held_s:g} s" + (f", still there: {t.hold_expired}"
                                           if t.hold_expired else ""),
                 "a tampering wrapper's hold kept the window open to its limit: it never "
                 "acted, so this verdict says nothing about its defect", at)]


def judge_target(w: WindowRecord, t: WatchRecord, boots_before: Optional[int],
                 at: str = "") -> List[Check]:
    """The target's checks: alive, running (or paused, as asked), no forbidden event,
    the guest's counter moving, its boot count unchanged."""
    out = [ALIVE(t.death is None, f"alive for {_span(w)}",
                 f"alive, {t.observed_s:g} s watched" if t.death is None
                 else t.death.describe(), "the target died after it took the guest over", at)]
    if t.death is not None:
        return out
    out += judge_hold(t, at)
    wrong = t.first_wrong
    seen = f"query-status: {t.polls_text()}"
    if wrong is not None:
        seen = f"{wrong.state} {wrong.at_s:.2f} s into the window ({t.polls_text()})"
        if t.hang is not None:
            seen += f"; {t.hang.describe()}"
    out.append(RUN_STATE(wrong is None, f"{t.want} for {_span(w)}", seen,
                         "the target stopped running the guest" if t.want is RunState.RUNNING
                         else "a paused guest must stay paused", at))
    out.append(EVENTS(not t.events, "none after RESUME",
                      ", ".join(e.describe() for e in t.events) or
                      ("none" + ("" if t.anchor_seen else " (no RESUME event seen either)")),
                      "QMP events on the target's monitor after it resumed the guest", at))
    g = t.guest
    if g is not None and g.counter_start is not None and g.counter_end is not None:
        paused = t.want is RunState.PAUSED
        moved = g.counter_end == g.counter_start if paused else g.counter_end > g.counter_start
        out.append(PROGRESS(moved, f"{'==' if paused else '>'} {g.counter_start}",
                            str(g.counter_end),
                            "the guest's counter must go on increasing on the target"
                            if not paused else "a paused guest ran", at))
    if g is not None and g.boots_end is not None:
        out.append(BOOTS(g.boots_end == boots_before,
                         f"boot count {text(boots_before, 'not read')}",
                         f"boot count {g.boots_end}",
                         "the guest's boot count changed after the switch-over: it was "
                         "restarted", at))
    return out


def judge_window(w: Optional[WindowRecord], boots_before: Optional[int],
                 at: str = "") -> List[Check]:
    """Every check of one window: each watched QEMU against its role."""
    if w is None:
        return []
    out: List[Check] = []
    for watch in w.watches:
        if watch.role == "target":
            out += judge_target(w, watch, boots_before, at)
        else:
            out += JUDGES[watch.role](w, watch, at)
    return out


#: Judges of the other roles a window can watch (role -> judge(window, watch, attempt)).
JUDGES: dict = {}


class Window(Family):
    name = "window"

    def judge(self, r: PairResult, a: AttemptRecord) -> Iterable[Check]:
        return judge_window(a.window, r.boots_before, a.label)
