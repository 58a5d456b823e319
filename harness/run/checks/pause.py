"""The pause the guest lived through, measured from the host (evidence 5): measured at
all, the counter never going back, the longest stall within the case's budget."""
from __future__ import annotations

from typing import Iterable, List

from harness.core.errors import Check
from harness.evidence.pause import PauseFigures
from harness.run.checks.base import Family, define
from harness.run.records import AttemptRecord
from harness.run.result import PairResult

MEASURED = define("pause.measured", "pause measured", "pause-unmeasured")
MONOTONIC = define("pause.monotonic", "guest counter never went back", "guest-reset")
BUDGET = define("pause.budget", "guest stall within budget", "pause")


def judge_budget(p: PauseFigures) -> List[Check]:
    """The longest stall at the switch-over or in the window after it, against the
    case's budget (one check: where a stall falls depends on when the harness saw the
    target running)."""
    budget = p.budget_ms
    if budget is None:
        return []
    stalls = [(v, where) for v, where in ((p.guest_pause_ms, "at the switch-over"),
                                          (p.window_stall_ms,
                                           "in the observation window after it"))
              if v is not None]
    if not stalls:
        return []
    worst, where = max(stalls)
    noise = p.noise_floor_ms
    # The noise floor comes from the observation window; one as long as the budget says
    # the window itself stalled, and is no floor to compare with.
    parts = [f"switch-over {p.guest_pause_ms:g} ms" if p.guest_pause_ms is not None else "",
             f"window {p.window_stall_ms:g} ms" if p.window_stall_ms is not None else "",
             f"QEMU's downtime {p.qemu_downtime_ms:g} ms"
             if p.qemu_downtime_ms is not None else "",
             f"noise floor {noise:g} ms" if noise is not None and noise <= budget else ""]
    return [BUDGET(worst <= budget, f"<= {budget:g} ms",
                   f"{worst:g} ms {where} (" + ", ".join(x for x in parts if x) + ")",
                   f"the guest stalled {worst:.0f} ms {where}, budget {budget:g} ms")]


class Pause(Family):
    name = "pause"

    def judge(self, r: PairResult, a: AttemptRecord) -> Iterable[Check]:
        ev = a.evidence
        if r.scenario.paused or not ev.pattern_applicable or ev.pause is None:
            return []
        p = ev.pause
        out = [MEASURED(p.measured, "a stall measured by the host-side sampler",
                        p.error or "no stall figure" if not p.measured else
                        f"{p.guest_pause_ms:g} ms at the switch-over ({p.samples} samples at "
                        f"{p.sample_rate_hz:g} Hz)")]
        out.append(MONOTONIC(p.counter_went_back is False, "never",
                             "went back" if p.counter_went_back else
                             "never" if p.counter_went_back is False else "not sampled",
                             "the sampler saw the guest's counter go backwards: a reset"))
        return out + judge_budget(p)
