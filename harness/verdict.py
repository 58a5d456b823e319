"""Judge what a pair did against what the scenario requires.

``judge`` returns the list of failed checks (empty: the case conforms). It never runs
anything; it reads a :class:`harness.pair.PairResult`.
"""
from __future__ import annotations

from typing import List

from harness.errors import Mismatch
from harness.pair import PairResult
from harness.scenario import COMPLETES


def judge(r: PairResult) -> List[Mismatch]:
    sc = r.scenario
    exp = sc.expect
    out: List[Mismatch] = []

    def check(name: str, ok: bool, expected: object, actual: object, detail: str = "") -> None:
        if not ok:
            out.append(Mismatch(name, expected, actual, detail))

    check("outcome", r.observed == exp.kind, exp.kind, r.observed, r.observed_message[-400:])
    if r.observed != exp.kind:
        # Later checks would only restate the same failure.
        return out

    if exp.kind == COMPLETES:
        qm = r.query_migrate
        check("query-migrate status", qm.get("status") == "completed", "completed",
              qm.get("status"))
        check("source run state", r.src_status_after == "postmigrate", "postmigrate",
              r.src_status_after)
        want = "paused" if sc.paused else "running"
        check("target run state", r.dst_status_after == want, want, r.dst_status_after,
              "the guest must resume on the target" if want == "running" else
              "a guest paused before the transfer must stay paused")
        check("guest reset", r.boots_after == r.boots_before, r.boots_before, r.boots_after,
              "the guest's boot count changed: it was restarted, not transferred")
        if r.counter_before is not None and r.counter_after is not None:
            if sc.paused:
                check("guest counter (paused)", r.counter_after == r.counter_before,
                      r.counter_before, r.counter_after, "a paused guest ran")
            else:
                check("guest progress", r.counter_after > r.counter_before,
                      f"> {r.counter_before}", r.counter_after,
                      "the guest's counter must continue past its pre-transfer value")
        else:
            check("guest progress", False, "counter read before and after", None)
    else:
        if exp.message:
            check("error message", exp.message in r.observed_message, exp.message,
                  r.observed_message[-400:])
        want = "paused" if sc.paused else "running"
        check("source survives refusal", r.src_status_after == want, want,
              r.src_status_after, "after a refused transfer the source must carry on")
        if not sc.paused:
            check("source guest progress after refusal",
                  r.src_counter_after_refusal is not None, f"> {r.counter_before}",
                  r.src_counter_after_refusal)
        if sc.retry:
            rt = r.retry or {}
            check("retry of a valid transfer", rt.get("observed") == COMPLETES, COMPLETES,
                  rt.get("observed") or "not attempted",
                  (rt.get("message") or "")[-300:] or
                  "after a refusal, a valid transfer from the same source must complete")
            if rt.get("observed") == COMPLETES:
                want = "paused" if sc.paused else "running"
                check("retry: target run state", rt.get("dst_status_after") == want, want,
                      rt.get("dst_status_after"))
                check("retry: source run state", rt.get("src_status_after") == "postmigrate",
                      "postmigrate", rt.get("src_status_after"))
                check("retry: guest reset", rt.get("boots_after") == r.boots_before,
                      r.boots_before, rt.get("boots_after"))
                if not sc.paused:
                    check("retry: guest progress",
                          (rt.get("counter_after") or 0) > (r.src_counter_after_refusal or 0),
                          f"> {r.src_counter_after_refusal}", rt.get("counter_after"))
    return out
