"""The pause the guest lived through, measured from the host (evidence 5): measured at
all, the counter never going back, the switch-over's pause within its budget, and after
it the guest living as it lived before the transfer: no stall longer than its baseline
allows, no more time stalled (a stuttering target) than its baseline plus a margin.
The figures and budgets: :mod:`harness.evidence.pause`, docs/pause-budget.md."""
from __future__ import annotations

from typing import Iterable, List

from harness.core.errors import Check
from harness.evidence.pause import PauseFigures
from harness.run.checks.base import Family, define
from harness.run.records import AttemptRecord
from harness.run.result import PairResult

MEASURED = define("pause.measured", "pause measured", "pause-unmeasured")
MONOTONIC = define("pause.monotonic", "guest counter never went back", "guest-reset")
SWITCH = define("pause.switch-over", "guest pause at the switch-over within budget", "pause")
STALLS = define("pause.stalls", "no stall after the switch-over beyond the guest's baseline",
                "pause")
STUTTER = define("pause.stutter", "time stalled after the switch-over within the guest's "
                                  "baseline", "pause")


def downtime_words(p: PauseFigures) -> str:
    """QEMU's own figure beside the measured interval, and why they may disagree
    (docs/downtime.md: the measured interval never has to contain QEMU's downtime)."""
    d, e = p.qemu_downtime_ms, p.qemu_span_ms
    if d is None:
        return "QEMU reports no downtime"
    lo, hi = p.switch_ms or 0.0, p.switch_max_ms if p.switch_max_ms is not None else 0.0
    resumed = f", which resumed it {e:g} ms after the source's STOP" if e is not None else ""
    if d > hi + 1.0:  # QEMU's figure is in whole ms
        return (f"QEMU's downtime ({d:g} ms) is the source's own clock, from just before it "
                f"stops the vCPUs until its migration thread has sent the last device state "
                f"and taken the BQL back: it also counts the source finishing after the "
                f"guest already ran on the target{resumed}")
    if d < lo - 1.0:
        span = f" (RESUME {e:g} ms after the source's STOP)" if e is not None else ""
        return (f"QEMU's downtime ({d:g} ms) ends when the source has sent the device "
                f"state; the target loading it and resuming the guest{span} and the host "
                f"scheduling the vCPU are not in it")
    return f"QEMU's downtime {d:g} ms agrees"


def judge_switch(p: PauseFigures) -> Check:
    b = p.budgets
    assert b is not None
    lo = p.switch_ms or 0.0
    parts = [p.interval(), downtime_words(p)]
    gap = p.console_gap or {}
    if gap.get("gap_ms") is not None:
        parts.append(f"console silent {gap['gap_ms']:.1f} ms across it")
    return SWITCH(lo <= b.max_pause_ms, f"<= {b.max_pause_ms:g} ms", "; ".join(parts),
                  f"the guest stood still at least {lo:g} ms at the switch-over, budget "
                  f"{b.max_pause_ms:g} ms")


def judge_after(p: PauseFigures) -> List[Check]:
    """The window's stalls against the baseline's: the longest, and the time stalled."""
    b, w = p.budgets, p.window
    if b is None or w is None:
        return []
    base = p.baseline
    allowed = b.allowed_stall_ms(base.longest_ms if base else None)
    how = (f"floor {b.stall_floor_ms:g} ms, {b.stall_factor:g}x the baseline's longest "
           f"{base.longest_ms:g} ms, at most {b.max_pause_ms:g} ms" if base else
           f"floor {b.stall_floor_ms:g} ms: no baseline measured")
    out = [STALLS(w.longest_ms <= allowed, f"<= {allowed:g} ms ({how})",
                  f"longest {w.longest_ms:g} ms; {w.describe()}",
                  f"the guest stalled {w.longest_ms:g} ms after the switch-over, where its "
                  f"baseline allows {allowed:g} ms")]
    share = p.allowed_share
    assert share is not None
    before = f"{base.share:.0%} in its baseline" if base else "no baseline"
    out.append(STUTTER(w.share <= share,
                       f"<= {share:.0%} of the window ({before} + {b.max_stutter:.0%})",
                       f"{w.share:.0%}: {w.describe()}",
                       f"the guest stood still {w.share:.0%} of the window after the "
                       f"switch-over in stalls beyond its longest, {before}: a stuttering "
                       "target"))
    return out


class Pause(Family):
    name = "pause"

    def judge(self, r: PairResult, a: AttemptRecord) -> Iterable[Check]:
        ev = a.evidence
        if r.scenario.paused or not ev.pattern_applicable or ev.pause is None:
            return []
        p = ev.pause
        covers = p.covers_qemu_span
        out = [MEASURED(p.measured and covers, "a stall measured by the host-side sampler, "
                                               "reaching from QEMU's STOP to its RESUME",
                        p.error or "no stall figure" if not p.measured else
                        f"{p.interval()} at the switch-over ({p.samples} reads, one every "
                        f"{p.read_every_us:g} us, {p.fast_read_every_us or p.read_every_us:g}"
                        f" us across the switch-over; {p.scheduling})"
                        + ("" if covers else f"; QEMU stopped the guest from the source's "
                                             f"STOP to the target's RESUME for "
                                             f"{p.qemu_span_ms:g} ms: the sampler missed "
                                             f"part of the pause"))]
        if not p.measured:
            return out
        out.append(MONOTONIC(p.counter_went_back is False, "never",
                             "went back" if p.counter_went_back else "never",
                             "the sampler saw the guest's counter go backwards: a reset"))
        if p.budgets is not None:
            out.append(judge_switch(p))
        return out + judge_after(p)
