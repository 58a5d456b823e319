"""No QEMU may die on its own before the harness ends it: not the target after it took
the guest over, and not the source either (until the new QEMU is known good, the old
one is the only way back: ``cont`` on it)."""
from __future__ import annotations

from typing import List

from harness.core.errors import Check
from harness.run.checks.base import define
from harness.run.records import Death

DEATHS = define("deaths", "no QEMU died before teardown", "death")


def judge_deaths(deaths: List[Death]) -> Check:
    return DEATHS(not deaths, "every QEMU alive until the harness ended it",
                  "; ".join(d.describe() for d in deaths) or "none died",
                  "a QEMU died on its own after the hand-over, not ended by the harness")
