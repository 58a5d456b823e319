"""A completed attempt's end states: the migration, both QEMUs' run states, the guest's
boot count and its counter moving on the target."""
from __future__ import annotations

from typing import Iterable, List

from harness.core.errors import Check
from harness.qemu.states import RunState
from harness.run.checks.base import Family, define, text
from harness.run.records import AttemptRecord
from harness.run.result import PairResult

QUERY_MIGRATE = define("states.migration", "query-migrate status", "run-state")
SRC_STATE = define("states.source", "source run state", "run-state")
DST_STATE = define("states.target", "target run state", "run-state")
GUEST_RESET = define("guest.boots", "guest not reset (its boot count unchanged)", "guest-reset")
PROGRESS = define("guest.progress", "guest progress", "guest-stalled")
PAUSED = define("guest.paused", "guest counter (paused)", "guest-stalled")


class States(Family):
    name = "states"

    def judge(self, r: PairResult, a: AttemptRecord) -> Iterable[Check]:
        sc, at = r.scenario, a.label
        out: List[Check] = []
        status = a.query_migrate.get("status")
        out.append(QUERY_MIGRATE(status == "completed", "completed", text(status),
                                 attempt=at))
        src_after = RunState.EXECED if sc.mode == "cpr-exec" else RunState.POSTMIGRATE
        out.append(SRC_STATE(a.src_state == src_after, src_after, a.src_state or "not read",
                             "the source must end in postmigrate"
                             if src_after is RunState.POSTMIGRATE else
                             "the source must have exec'd the new QEMU", at))
        want = RunState.PAUSED if sc.paused else RunState.RUNNING
        out.append(DST_STATE(a.dst_state == want, want, a.dst_state or "not read",
                             "the guest must resume on the target" if not sc.paused else
                             "a guest paused before the transfer must stay paused", at))
        out.append(GUEST_RESET(a.boots_after == r.boots_before,
                               f"boot count {text(r.boots_before, 'not read')}",
                               f"boot count {text(a.boots_after, 'not read')}",
                               "the guest's boot count changed: it was restarted, not "
                               "transferred", at))
        out.append(self._progress(r, a))
        return out

    @staticmethod
    def _progress(r: PairResult, a: AttemptRecord) -> Check:
        ref, after, at = a.counter_reference, a.counter_after, a.label
        if ref is None or after is None:
            return PROGRESS(False, "counter read before and after",
                            f"before {text(ref, 'not read')}, after {text(after, 'not read')}",
                            attempt=at)
        if r.scenario.paused:
            return PAUSED(after == ref and a.counter_moved is False, str(ref), str(after),
                          "a paused guest ran", at)
        moved = "" if a.counter_moved else " (not moving on the target)"
        return PROGRESS(after > ref and a.counter_moved is True,
                        f"> {ref} and moving on the target", f"{after}{moved}",
                        "the guest's counter must keep increasing on the target, past its "
                        "pre-transfer value", at)
