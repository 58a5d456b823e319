"""Judge what a pair did against what the scenario requires.

:func:`judge` returns every check it made, each with what was expected, what was seen
and whether that conforms; the failed ones (:func:`failed`) are the case's verdict
(none: it conforms). It never runs anything; it reads a
:class:`~harness.run.result.PairResult`.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Optional

from harness.core.errors import Check
from harness.cpr import dialect as dialects
from harness.run.result import PairResult
from harness.scenario.model import Expect, Observed

CheckFn = Callable[..., None]
#: cpr-exec's state file may be this big and still hold no RAM (device state: ~80 KB).
STATE_FILE_MAX = 4 << 20
#: Outcomes after which the source must carry on (it was not killed or crashed).
SURVIVABLE = (Observed.SRC_REFUSED, Observed.DST_REFUSED, Observed.FAILED, Observed.HUNG)


def failed(checks: List[Check]) -> List[Check]:
    return [c for c in checks if not c.ok]


def judge(r: PairResult) -> List[Check]:
    sc = r.scenario
    exp = sc.expect
    out: List[Check] = []

    def check(name: str, ok: bool, expected: object, actual: object, detail: str = "") -> None:
        out.append(Check(name, expected, actual, "" if ok else detail, bool(ok)))

    observed = r.observed.value if r.observed is not None else None
    check("outcome", exp.kind.accepts(r.observed), exp.kind.value, observed,
          r.observed_message[-400:])
    if not exp.kind.accepts(r.observed):
        # Later checks of this kind would only restate the same failure; but whatever
        # refused or failed, the source must still run its guest with its RAM intact.
        if r.observed in SURVIVABLE:
            _check_survival(r, check)
        return out
    if exp.kind is Expect.COMPLETES:
        _check_completed(r, check)
    elif exp.kind is not Expect.SRC_LOST:  # src-lost: the outcome itself says it
        _check_refusal(r, check)
    check("no QEMU died before teardown", not r.deaths, "every QEMU alive until the harness "
          "ended it", "; ".join(describe_death(d) for d in r.deaths) or "none died",
          "a QEMU died on its own after the hand-over, not ended by the harness")
    return out


def describe_death(d: Dict[str, Any], noticed: str = "noticed at teardown") -> str:
    when = f", {d['since_resume_s']:.2f} s after the switch-over" \
        if d.get("since_resume_s") is not None else ""
    tail = " | ".join(ln for ln in str(d.get("log_tail") or "").splitlines()[-3:]
                      if ln.strip())
    return (f"{d['side']} QEMU {d['how']}{when} ({noticed}); log {d.get('log')  or d.get('log_path')}"
            + (f": {tail}" if tail else ""))


def window_checks(w: Optional[Dict[str, Any]], boots_before: Optional[int]) -> List[Check]:
    """The checks of one observation window (the soak judges each hop's with these)."""
    out: List[Check] = []

    def check(name: str, ok: bool, expected: object, actual: object, detail: str = "") -> None:
        out.append(Check(name, expected, actual, "" if ok else detail, bool(ok)))

    _check_window(w, "", boots_before, check)
    return out


def _check_window(w: Optional[Dict[str, Any]], pre: str, boots_before: Optional[int],
                  check: CheckFn) -> None:
    """What the observation window saw on a target (harness.run.observe)."""
    if not w:
        return
    want = w["want"]
    span = f"{w['seconds']:g} s after the switch-over"
    seen = f"{w.get('observed_s', w['seconds']):g} s watched"
    death = w.get("death")
    check(pre + "target alive through the observation window", death is None,
          f"alive for {span}", f"alive, {seen}" if death is None else
          describe_death(death, "seen in the observation window"),
          "the target died after it took the guest over")
    if death is not None:
        return
    if w.get("held_s"):  # only a self-test's tampering wrapper makes a hold file
        check(pre + "hold file released", not w.get("hold_expired"),
              "removed by the wrapper that made it", f"held {w['held_s']:g} s"
              + (f", still there: {w['hold_expired']}" if w.get("hold_expired") else ""),
              "a tampering wrapper's hold kept the window open to its limit: it never acted, "
              "so this verdict says nothing about its defect")
    wrong = w.get("wrong_status")
    statuses = w.get("statuses") or {}
    polls = ", ".join(f"{k} x{v}" for k, v in statuses.items())
    check(pre + "target run state through the observation window", wrong is None,
          f"{want} for {span}", f"query-status: {polls or 'never answered'}" if wrong is None
          else f"{wrong['status']} {wrong['at_s']:.2f} s into the window ({polls})",
          "the target stopped running the guest" if want == "running"
          else "a paused guest must stay paused")
    events = w.get("events") or []
    check(pre + "no reset, stop, shutdown or panic event on the target", not events,
          "none after RESUME", [f"{e['event']}" + (f" +{e['after_resume_s']:.2f} s"
                                                   if e.get("after_resume_s") is not None
                                                   else "") for e in events]
          or "none" + ("" if w.get("resume_seen") else " (no RESUME event seen either)"),
          "QMP events on the target's monitor after it resumed the guest")
    start, end = w.get("counter_start"), w.get("counter_end")
    if start is not None and end is not None:
        moved = end == start if want == "paused" else end > start
        check(pre + "guest progress through the observation window", moved,
              f"{'==' if want == 'paused' else '>'} {start}", end,
              "the guest's counter must go on increasing on the target" if want == "running"
              else "a paused guest ran")
    if w.get("boots_end") is not None:
        check(pre + "guest not reset during the observation window",
              w["boots_end"] == boots_before, boots_before, w["boots_end"],
              "the guest's boot count changed after the switch-over: it was restarted")


def _check_pause_budget(pause: Dict[str, Any], check: CheckFn) -> None:
    """The longest stall the guest lived through, at the switch-over or in the
    observation window, against the case's budget (one check: where a stall falls
    depends on when the harness saw the target running)."""
    budget = pause.get("budget_ms")
    if budget is None:
        return
    p, ws = pause.get("guest_pause_ms"), pause.get("window_stall_ms")
    stalls = [(v, where) for v, where in ((p, "at the switch-over"),
                                          (ws, "in the observation window after it"))
              if v is not None]
    if not stalls:
        return
    worst, where = max(stalls)
    down = pause.get("qemu_downtime_ms")
    noise = pause.get("noise_floor_ms")
    # The noise floor comes from the observation window; one as long as the budget says
    # the window itself stalled, and is no floor to compare with.
    parts = [f"switch-over {p:g} ms" if p is not None else "",
             f"window {ws:g} ms" if ws is not None else "",
             f"QEMU's downtime {down} ms" if down is not None else "",
             f"noise floor {noise:g} ms" if noise is not None and noise <= budget else ""]
    check("guest stall within budget", worst <= budget, f"<= {budget:g} ms",
          f"{worst:g} ms {where} (" + ", ".join(x for x in parts if x) + ")",
          f"the guest stalled {worst:.0f} ms {where}, budget {budget:g} ms")


def _check_completed(r: PairResult, check: CheckFn) -> None:
    sc = r.scenario
    qm = r.query_migrate
    check("query-migrate status", qm.get("status") == "completed", "completed",
          qm.get("status"))
    src_after = "exec'd" if sc.mode == "cpr-exec" else "postmigrate"
    check("source run state", r.src_status_after == src_after, src_after, r.src_status_after,
          "the source must end in postmigrate" if src_after == "postmigrate" else
          "the source must have exec'd the new QEMU")
    want = "paused" if sc.paused else "running"
    check("target run state", r.dst_status_after == want, want, r.dst_status_after,
          "the guest must resume on the target" if want == "running" else
          "a guest paused before the transfer must stay paused")
    check("guest reset", r.boots_after == r.boots_before, r.boots_before, r.boots_after,
          "the guest's boot count changed: it was restarted, not transferred")
    if r.counter_before is not None and r.counter_after is not None:
        if sc.paused:
            check("guest counter (paused)", r.counter_after == r.counter_before
                  and r.counter_moved_on_dst is False, r.counter_before,
                  r.counter_after, "a paused guest ran")
        else:
            check("guest progress", r.counter_after > r.counter_before
                  and r.counter_moved_on_dst is True,
                  f"> {r.counter_before} and moving on the target", r.counter_after,
                  "the guest's counter must keep increasing on the target, past its "
                  "pre-transfer value")
    else:
        check("guest progress", False, "counter read before and after", None)
    _check_window(r.window, "", r.boots_before, check)
    _check_ram_evidence(r, check, retry=False)


def _check_refusal(r: PairResult, check: CheckFn) -> None:
    sc = r.scenario
    exp = sc.expect
    if exp.message and dialects.get(r.dialect or dialects.RELEASED).messages_known:
        check("error message", exp.message in r.observed_message, exp.message,
              r.observed_message[-400:])
    _check_survival(r, check)
    if sc.retry:
        _check_retry(r, check)


def _check_survival(r: PairResult, check: CheckFn) -> None:
    """After a refused or failed transfer: the source runs its guest, RAM intact."""
    sc = r.scenario
    want = "paused" if sc.paused else "running"
    check("source survives refusal", r.src_status_after == want, want,
          r.src_status_after, "after a refused transfer the source must carry on")
    if not sc.paused:
        check("source guest progress after refusal",
              r.src_counter_after_refusal is not None, f"> {r.counter_before}",
              r.src_counter_after_refusal)
    ev = r.evidence
    if ev.get("applicable") and "pattern_src_after_refusal" in ev:
        p = ev["pattern_src_after_refusal"]
        check("source RAM intact after refusal", p.get("ok") is True, "pattern intact",
              p.get("description"))


def _check_retry(r: PairResult, check: CheckFn) -> None:
    sc = r.scenario
    rt = r.retry or {}
    if rt.get("not_applicable"):
        # Nothing could take this source's guest over (harness.run.setup.no_valid_retry):
        # said, not judged.
        check("retry of a valid transfer", True, Expect.COMPLETES.value + " where one can",
              "not applicable: " + rt["not_applicable"])
        return
    done = rt.get("observed") == Observed.COMPLETED.value
    check("retry of a valid transfer", done, Expect.COMPLETES.value,
          rt.get("observed") or "not attempted",
          (rt.get("message") or "")[-300:] or
          "after a refusal, a valid transfer from the same source must complete")
    if not done:
        return
    want = "paused" if sc.paused else "running"
    check("retry: target run state", rt.get("dst_status_after") == want, want,
          rt.get("dst_status_after"))
    check("retry: source run state", rt.get("src_status_after") == "postmigrate",
          "postmigrate", rt.get("src_status_after"))
    check("retry: guest reset", rt.get("boots_after") == r.boots_before,
          r.boots_before, rt.get("boots_after"))
    _check_window(rt.get("window"), "retry: ", r.boots_before, check)
    if not sc.paused:
        check("retry: guest progress",
              (rt.get("counter_after") or 0) > (r.src_counter_after_refusal or 0)
              and rt.get("counter_moved_on_dst") is True,
              f"> {r.src_counter_after_refusal} and moving on the target",
              rt.get("counter_after"))
    _check_ram_evidence(r, check, retry=True)


def _check_ram_evidence(r: PairResult, check: CheckFn, retry: bool) -> None:
    """The in-place RAM evidence of a completed transfer (docs/ram-evidence.md)."""
    ev = r.evidence
    if not ev.get("applicable"):
        return
    pre = "retry: " if retry else ""
    same = ev.get("same_memory")
    check(pre + "same memory mapped by the target", bool(same and same.get("same")),
          "the source's RAM file (same inode)",
          None if not same else f"src inode {same.get('src_inode')}, dst inode "
                                f"{same.get('dst_inode')}" + ("" if same.get("same") else
                                                              " (different)"))
    stream = ev.get("stream") or {}
    if stream.get("state_file_bytes") is not None:
        # cpr-exec: the source's counters went with it; its state file is the stream.
        size, ram = stream["state_file_bytes"], stream.get("ram_bytes") or 0
        check(pre + "no RAM pages in the main stream", size < max(STATE_FILE_MAX, ram // 256),
              f"a state file far smaller than the RAM (< {max(STATE_FILE_MAX, ram // 256)} "
              f"bytes)", size, "guest RAM went into the state file")
    else:
        check(pre + "no RAM pages in the main stream",
              stream.get("normal") == 0 and stream.get("normal-bytes") == 0,
              "ram.normal == 0", {k: stream.get(k) for k in ("normal", "normal-bytes")})
    if ev.get("pattern_applicable"):
        pat = ev.get("pattern") or {}
        check(pre + "RAM pattern intact", pat.get("ok") is True, "every page unchanged",
              pat.get("description", "not verified"))
    g = ev.get("guest_retry" if retry else "guest")
    if g:
        _check_console_guest(g, pre, check)
    if not retry and not r.scenario.paused and ev.get("pattern_applicable"):
        pause = ev.get("pause") or {}
        measured = pause.get("guest_pause_ms")
        check("pause measured", measured is not None,
              "a stall measured by the host-side sampler", pause.get("error") if measured
              is None else f"{measured:g} ms at the switch-over ({pause.get('samples')} "
              f"samples at {pause.get('sample_rate_hz')} Hz)")
        check("guest counter never went back", pause.get("counter_went_back") is False,
              False, pause.get("counter_went_back"),
              "the sampler saw the guest's counter go backwards: a reset")
        _check_pause_budget(pause, check)


def _check_console_guest(g: Dict[str, Any], pre: str, check: CheckFn) -> None:
    """A guest checked on its console (the Linux guest)."""
    check(pre + "guest answers on the target's console", "console_error" not in g,
          "pong and sum answers", g.get("console_error"))
    if "pong_uptime" in g and g.get("uptime_before") is not None:
        check(pre + "guest uptime continues", g["pong_uptime"] > g["uptime_before"],
              f"> {g['uptime_before']}", g["pong_uptime"],
              "the guest's clock must move forward, without a reboot")
    if "sum_check" in g:
        check(pre + "guest buffer checksum", g["sum_check"] == g.get("sum_boot"),
              g.get("sum_boot"), g["sum_check"])
    check(pre + "no new kernel errors", g.get("err_after") == 0, 0, g.get("err_after"))
    check(pre + "no reboot on the target", g.get("dst_boot_markers") == 0, 0,
          g.get("dst_boot_markers"))


def record(r: PairResult, checks: List[Check], base: Optional[str] = None,
           run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The case's result record (result.json), the same for every adapter: every check
    (``checks``, passes included) and the failed ones (``mismatches``). ``base``: the
    case's directory; artifact paths below it are made relative to it (the record
    moves with its directory). ``run``: the run's identity (harness.run.identity)."""
    rec = r.to_dict()
    rec["id"] = r.scenario.id
    rec["checks"] = [c.to_dict() for c in checks]
    rec["mismatches"] = [c.to_dict() for c in failed(checks)]
    return relative_paths(rec, base, run)


def relative_paths(rec: Dict[str, Any], base: Optional[str],
                   run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``rec`` with its artifact and backtrace paths relative to ``base`` where they lie
    below it, and the run's identity."""
    if run is not None:
        rec["run"] = dict(run)
    if base is None:
        return rec

    def rel(path: Any) -> Any:
        if not isinstance(path, str) or not os.path.isabs(path):
            return path
        r = os.path.relpath(path, base)
        return path if r.startswith("..") else r

    rec["artifacts"] = {k: rel(v) for k, v in (rec.get("artifacts") or {}).items()}
    # And every other file the case left there (the sampler's log, chain.json...).
    known = set(rec["artifacts"].values())
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = []
    for name in names:
        if name not in known and name != "result.json" and os.path.isfile(os.path.join(base, name)):
            rec["artifacts"][name] = name
    for c in rec.get("crashes") or []:
        c["backtrace"] = rel(c.get("backtrace"))
    return rec


#: Anonymous RSS the live QEMU may gain over a whole chain before it counts as a leak.
RSS_SLACK_KIB = 2048


def judge_chain(c: Any) -> List[Check]:
    """The checks of a soak chain (:class:`harness.run.result.ChainResult`): every hop a
    good live update, the same RAM file all the way, the pattern intact at the end, the
    counter increasing hop by hop, no growth of the live QEMU's fds or memory."""
    out: List[Check] = []

    def check(name: str, ok: bool, expected: object, actual: object, detail: str = "") -> None:
        out.append(Check(name, expected, actual, "" if ok else detail, bool(ok)))

    check("every hop a good live update", c.failed_hop is None, "none failed",
          "none failed" if c.failed_hop is None else f"hop {c.failed_hop}: {c.failure}")
    check("hops done", len(c.hops) == c.hops_wanted, c.hops_wanted, len(c.hops))
    check("no QEMU died before teardown", not c.deaths, "every QEMU alive until the harness "
          "ended it", "; ".join(describe_death(d) for d in c.deaths) or "none died")
    if c.failed_hop is not None or not c.hops:
        return out
    check("RAM pattern intact at the end", c.pattern.get("ok") is True, "every page unchanged",
          c.pattern.get("description", "not verified"))
    inodes = sorted({h.get("ram_inode") for h in c.hops})
    check("the same RAM file all the way", inodes == [c.ram_inode], c.ram_inode, inodes,
          "the RAM file changed along the chain")
    counters = [h["counter_after"] for h in c.hops]
    check("guest counter increasing hop by hop",
          counters == sorted(counters) and len(set(counters)) == len(counters),
          "strictly increasing", counters)
    fds = [h["open_fds"] for h in c.hops]
    check("no open fd growth", fds[-1] <= fds[0], f"<= {fds[0]}", fds[-1],
          f"open fds of the live QEMU hop by hop: {fds}")
    rss = [h["rss_anon_kib"] for h in c.hops]
    # Hop 1 is a warm-up (under TCG its QEMU is ~4 MiB smaller: the translation cache
    # fills on its first run); from hop 2 on, a leak shows as growth.
    base = rss[1] if len(rss) > 2 else rss[0]
    slack = max(RSS_SLACK_KIB, base // 20)
    check("no anonymous RSS growth", rss[-1] - base < slack, f"< {base + slack} KiB",
          f"{rss[-1]} KiB", f"anonymous RSS of the live QEMU hop by hop (KiB): {rss}")
    return out


def chain_record(c: Any, checks: List[Check], base: Optional[str] = None,
                 run: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """A soak chain's result record, in the shape of a case's (result.json), with one
    entry per hop in ``hops``."""
    rec = c.to_dict()
    rec["id"] = c.scenario.id if c.scenario is not None else ""
    rec["observed"] = "completed" if c.failed_hop is None else "failed"
    rec["observed_message"] = c.failure
    rec["evidence"] = {"hops": c.hops, "pattern": c.pattern, "ram_inode": c.ram_inode}
    rec["checks"] = [x.to_dict() for x in checks]
    rec["mismatches"] = [x.to_dict() for x in failed(checks)]
    return relative_paths(rec, base, run)
