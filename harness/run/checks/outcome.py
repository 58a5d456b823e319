"""What the scenario asked of the transfer as a whole: the outcome, QEMU's message for
a refusal, the source carrying on after one, and a valid retry from it.

These are the case's skeleton (:func:`judge` in :mod:`harness.run.verdict` calls them
first); each completed attempt they point at is then judged by the registered
families."""
from __future__ import annotations

from typing import List, Optional

from harness.core.errors import Check
from harness.cpr import dialect as dialects
from harness.qemu.states import RunState
from harness.run.checks.base import define, text
from harness.run.records import AttemptRecord
from harness.run.result import PairResult
from harness.scenario.model import Expect, Observed

OUTCOME = define("outcome", "outcome", "refused-valid")
MESSAGE = define("refusal.message", "error message", "message")
SURVIVES = define("survival.state", "source survives refusal", "run-state")
SURVIVES_PROGRESS = define("survival.progress", "source guest progress after refusal",
                           "guest-stalled")
SURVIVES_RAM = define("survival.ram", "source RAM intact after refusal", "ram-content")
RETRY = define("retry.completes", "retry of a valid transfer", "retry")

#: Outcomes after which the source must carry on (it was not killed, crashed or hung).
SURVIVABLE = (Observed.SRC_REFUSED, Observed.DST_REFUSED, Observed.FAILED, Observed.HUNG)


def source_lives_on(r: PairResult) -> bool:
    """After this first attempt the source must still run its guest."""
    a = r.first
    return a is not None and a.observed in SURVIVABLE and not (a.hang and a.hang.side == "src")


def judge_outcome(r: PairResult) -> Check:
    exp = r.scenario.expect
    a = r.first
    observed = a.observed if a is not None else None
    message = (a.message if a is not None else "")[-400:]
    if a is not None and a.hang is not None:
        message = a.hang.describe()  # what it was doing comes first
    return OUTCOME(exp.kind.accepts(observed), exp.kind.value,
                   observed.value if observed is not None else "no outcome", message)


def judge_refusal(r: PairResult) -> List[Check]:
    """A refusal as the scenario requires: QEMU's words, the source carrying on, and a
    valid transfer from it (the retry's own checks follow from its attempt record)."""
    exp, out = r.scenario.expect, []
    a = r.first
    if exp.message and dialects.get(r.dialect or dialects.RELEASED).messages_known:
        msg = a.message if a is not None else ""
        out.append(MESSAGE(exp.message in msg, exp.message, msg[-400:] or "no message"))
    out += judge_survival(r)
    if r.scenario.retry:
        out.append(judge_retry(r.retry))
    return out


def judge_survival(r: PairResult) -> List[Check]:
    """After a refused or failed transfer: the source runs its guest, RAM intact."""
    sc, s = r.scenario, r.survival
    want = RunState.PAUSED if sc.paused else RunState.RUNNING
    state = s.src_state if s is not None else RunState.UNKNOWN
    seen = (state or "not read") + (f"; {s.hang.describe()}" if s and s.hang else "")
    out = [SURVIVES(state == want, want, seen,
                    "after a refused transfer the source must carry on")]
    if not sc.paused:
        counter = s.counter_after if s is not None else None
        out.append(SURVIVES_PROGRESS(counter is not None, f"> {text(r.counter_before)}",
                                     text(counter, "not seen moving")))
    if r.ram.pattern_applicable and s is not None and s.pattern is not None:
        out.append(SURVIVES_RAM(s.pattern.ok, "pattern intact", s.pattern.describe()))
    return out


def judge_retry(rt: Optional[AttemptRecord]) -> Check:
    if rt is not None and rt.not_applicable:
        # Nothing could take this source's guest over (Binaries.no_valid_retry): said,
        # not judged.
        return RETRY(True, Expect.COMPLETES.value + " where one can",
                     "not applicable: " + rt.not_applicable)
    observed = rt.observed if rt is not None else None
    done = observed is Observed.COMPLETED
    return RETRY(done, Expect.COMPLETES.value,
                 observed.value if observed is not None else "not attempted",
                 (rt.message if rt is not None else "")[-300:] or
                 "after a refusal, a valid transfer from the same source must complete")
