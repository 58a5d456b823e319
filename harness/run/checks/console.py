"""The guest on the target's console (the Linux guest): it answers, its clock and its
buffer carried on, no new kernel error, no reboot."""
from __future__ import annotations

from typing import Iterable, List

from harness.core.errors import Check
from harness.run.checks.base import Family, define, text
from harness.run.records import AttemptRecord
from harness.run.result import PairResult

ANSWERS = define("console.answers", "guest answers on the target's console", "device")
UPTIME = define("console.uptime", "guest uptime continues", "guest-reset")
BUFFER = define("console.buffer", "guest buffer checksum", "ram-content")
KERNEL_ERRORS = define("console.kernel-errors", "no new kernel errors", "device")
NO_REBOOT = define("console.no-reboot", "no reboot on the target", "guest-reset")


class Console(Family):
    name = "console"

    def judge(self, r: PairResult, a: AttemptRecord) -> Iterable[Check]:
        g, at = a.evidence.console, a.label
        if g is None:
            return []
        out: List[Check] = [ANSWERS(not g.console_error, "pong and sum answers",
                                    g.console_error or "both answered", attempt=at)]
        if g.pong_uptime is not None and g.uptime_before is not None:
            out.append(UPTIME(g.pong_uptime > g.uptime_before, f"> {g.uptime_before:g} s",
                              f"{g.pong_uptime:g} s",
                              "the guest's clock must move forward, without a reboot", at))
        if g.sum_check is not None:
            out.append(BUFFER(g.sum_check == g.sum_boot, text(g.sum_boot, "not printed"),
                              g.sum_check, attempt=at))
        out.append(KERNEL_ERRORS(g.err_after == 0, "0", text(g.err_after, "no status line"),
                                 attempt=at))
        out.append(NO_REBOOT(g.boot_markers == 0, "0", text(g.boot_markers), attempt=at))
        return out
