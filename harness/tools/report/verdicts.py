"""A runner's outcome as the matrix's verdict, for every adapter: pytest's phases
(:func:`of_pytest`) and avocado's statuses (:func:`of_avocado`).

``fail`` is a failed conformance check (the ConformanceFailure names them); every
other failure is ``error``: the harness's own fault, or the host's. A QEMU that crashed
or hung fails its case through its checks, so it never lands here as an error.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from harness.scenario.model import Verdict
from harness.tools.report.records import _one_line, describe_checks

#: How pytest says a strict expected failure passed; avocado's adapter says the same.
STRICT_XPASS = "[XPASS(strict)]"
XPASS_PREFIX = "XPASS(strict)"
#: avocado status -> verdict (FAIL is ``xpass`` when its reason starts with XPASS_PREFIX).
AVOCADO_STATUS: Dict[str, Verdict] = {
    "PASS": Verdict.PASS, "FAIL": Verdict.FAIL, "ERROR": Verdict.ERROR,
    "INTERRUPTED": Verdict.ERROR, "WARN": Verdict.XFAIL, "CANCEL": Verdict.SKIP,
    "SKIP": Verdict.SKIP}


@dataclass(frozen=True)
class Phase:
    """One pytest phase of a case (setup/call/teardown), as plain values."""
    when: str                      # "setup", "call" or "teardown"
    outcome: str                   # "passed", "failed" or "skipped"
    message: str = ""              # skip reason, or the failure's one-line summary
    wasxfail: Optional[str] = None  # set when pytest applied an expected failure
    duration: float = 0.0


def of_pytest(phases: Sequence[Phase], mismatches: Sequence[Mapping[str, Any]] = ()
              ) -> Tuple[Verdict, str]:
    """The case's verdict and the reason a reader needs, from its pytest phases."""
    by = {p.when: p for p in phases}
    setup, call, teardown = by.get("setup"), by.get("call"), by.get("teardown")
    if setup is not None and setup.outcome == "failed":
        return Verdict.ERROR, "set-up failed: " + _one_line(setup.message)
    if setup is not None and setup.outcome == "skipped":
        if setup.wasxfail is not None:
            return Verdict.XFAIL, setup.wasxfail
        return Verdict.SKIP, setup.message
    if call is None:
        if teardown is not None and teardown.outcome == "failed":
            return Verdict.ERROR, "teardown failed: " + _one_line(teardown.message)
        return Verdict.ERROR, "the case did not run (interrupted?)"
    if call.outcome == "skipped":
        if call.wasxfail is not None:
            # What was observed is in the record's checks and actual outcome.
            return Verdict.XFAIL, call.wasxfail or "expected failure"
        return Verdict.SKIP, call.message
    if call.outcome == "failed":
        if call.message.startswith(STRICT_XPASS):
            reason = call.message[len(STRICT_XPASS):].strip()
            return Verdict.XPASS, f"passed, but expected to fail: {reason}"
        if mismatches:
            return Verdict.FAIL, describe_checks(mismatches)
        return Verdict.ERROR, _one_line(call.message)
    if teardown is not None and teardown.outcome == "failed":
        return Verdict.ERROR, "teardown failed: " + _one_line(teardown.message)
    if call.wasxfail is not None:
        return Verdict.XPASS, f"passed, but expected to fail: {call.wasxfail}"
    return Verdict.PASS, ""


def of_avocado(test: Mapping[str, Any]) -> Tuple[Verdict, str]:
    """(verdict, reason) of one entry of avocado's results.json."""
    status = str(test.get("status") or "ERROR").upper()
    reason = test.get("fail_reason") or ""
    reason = "" if reason == "<unknown>" else str(reason)
    verdict = AVOCADO_STATUS.get(status, Verdict.ERROR)
    if status == "FAIL" and reason.startswith(XPASS_PREFIX):
        verdict = Verdict.XPASS
    return verdict, reason
