"""No QEMU may die on its own before the harness ends it: not the target after it took
the guest over, and not the source either (until the new QEMU is known good, the old
one is the only way back: ``cont`` on it). The ends the case caused or expected (a
fault's victim, a refusing target) are not deaths: the check names them, so that "none
died" is never read against a case that killed one."""
from __future__ import annotations

from typing import List, Sequence

from harness.core.errors import Check
from harness.run.checks.base import define
from harness.run.records import Death

DEATHS = define("deaths", "no QEMU died on its own before teardown", "death")


def judge_deaths(deaths: List[Death], ended: Sequence[str] = ()) -> Check:
    seen = "; ".join(d.describe() for d in deaths) or "none died on its own"
    if ended:
        seen += "; ended by the case: " + "; ".join(ended)
    return DEATHS(not deaths, "every QEMU alive until the harness ended it or the case "
                              "expected it to end",
                  seen, "a QEMU died on its own after the hand-over, not ended by the harness")
