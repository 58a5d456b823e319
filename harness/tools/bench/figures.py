"""The bench's figures: one round's (:class:`RoundResult`), their statistics, and the
pause across two memory files (precopy).

Pure functions over sampler results and round figures: :func:`stats`,
:func:`summarize` (one summary per method and size), :func:`disagreement` (does
QEMU's ``downtime`` disagree with the measured pause beyond the noise?),
:func:`precopy_pause` (the guest's pause when the target has its own memory) with
:func:`final_stall` and :func:`split_marks`.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from harness.evidence.sampler import SamplerResult, Stall

#: Past marks dropped into the precopy target's sampler to isolate its stall at the
#: source's final counter value (see :func:`precopy_pause`): fine ones around the moment
#: the harness saw the target running (that stall ends near it and can be as short as
#: 0.2 ms), coarse ones from the source's stop on.
SPLIT_FINE_NS = 20_000
SPLIT_FINE_BEFORE_NS = 25_000_000
SPLIT_FINE_AFTER_NS = 15_000_000
SPLIT_COARSE_MIN_NS = 200_000
SPLIT_COARSE_MAX = 1000
#: Downtime is whole milliseconds: differences below this are never reported.
_DOWNTIME_RESOLUTION_MS = 1.0
#: ... nor differences within this fraction of the downtime.
_DOWNTIME_RELATIVE = 0.1


# --------------------------------------------------------------------------- statistics

def stats(values: Iterable[Optional[float]]) -> Optional[Dict[str, float]]:
    """min/median/max/n of the values that are not None; None if there are none."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return None
    return {"min": vals[0], "median": statistics.median(vals), "max": vals[-1], "n": len(vals)}


#: The per-round figures summarized per (method, size): key -> (label, unit).
METRICS: Dict[str, Tuple[str, str]] = {
    "guest_pause_ms": ("guest pause", "ms"),
    "guest_pause_max_ms": ("guest pause, upper bound", "ms"),
    "console_gap_ms": ("console silent across the switch-over", "ms"),
    "noise_floor_ms": ("noise floor (idle pair)", "ms"),
    "qemu_downtime_ms": ("QEMU downtime", "ms"),
    "qemu_total_time_ms": ("QEMU total-time", "ms"),
    "main_bytes": ("bytes on the main channel", "B"),
    "dst_start_ms": ("target start", "ms"),
    "src_start_ms": ("source start (launch to QMP)", "ms"),
    "switch_ms": ("migrate issued to target running (harness view)", "ms"),
    "fill_s": ("RAM fill through the memory file", "s"),
    "wall_s": ("round wall time", "s"),
}


@dataclass
class RoundResult:
    method: str
    ram_mb: int
    round: int
    status: str = "ok"                 # ok / error / skip
    reason: str = ""
    guest_pause_ms: Optional[float] = None
    guest_pause_max_ms: Optional[float] = None
    #: The guest's console silent across the switch-over, seen from the host (its
    #: heartbeat's arrivals; the network's gap is the devices suite's net.stream).
    console_gap_ms: Optional[float] = None
    noise_floor_ms: Optional[float] = None
    #: The sampler's own longest gap between reads during the transfer window.
    sampler_gap_ms: Optional[float] = None
    qemu_downtime_ms: Optional[float] = None
    qemu_total_time_ms: Optional[float] = None
    qemu_setup_time_ms: Optional[float] = None
    main_bytes: Optional[int] = None
    main_bytes_from: str = ""
    dst_start_ms: Optional[float] = None
    dst_start_until: str = ""
    src_start_ms: Optional[float] = None
    src_quit_ms: Optional[float] = None
    switch_ms: Optional[float] = None
    fill_s: Optional[float] = None
    wall_s: Optional[float] = None
    counter_before: Optional[int] = None
    counter_after: Optional[int] = None
    boots_before: Optional[int] = None
    boots_after: Optional[int] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    logs: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)




def summarize(rounds: Sequence[RoundResult]) -> List[Dict[str, Any]]:
    """One summary per (method, RAM size), in first-seen order."""
    groups: Dict[Tuple[str, int], List[RoundResult]] = {}
    for r in rounds:
        groups.setdefault((r.method, r.ram_mb), []).append(r)
    out = []
    for (method, mb), rs in groups.items():
        ok = [r for r in rs if r.status == "ok"]
        s: Dict[str, Any] = {
            "method": method, "ram_mb": mb, "rounds": len(rs), "ok": len(ok),
            "errors": [f"round {r.round}: {r.reason}" for r in rs if r.status == "error"],
            "skipped": sorted({r.reason for r in rs if r.status == "skip"}),
            "metrics": {k: stats(getattr(r, k) for r in ok) for k in METRICS},
        }
        s["disagreement"] = disagreement(method, s["metrics"])
        out.append(s)
    return out


def disagreement(method: str, metrics: Dict[str, Optional[Dict[str, float]]]
                 ) -> Optional[Dict[str, Any]]:
    """Does QEMU's ``downtime`` disagree with the measured pause beyond the noise?

    Medians are compared. The tolerance is the largest of: the group's median noise
    floor (per round, the longest stall the sampler saw on the idle pair just before
    the transfer: scheduling noise on a busy host), the 1 ms resolution of
    ``downtime``, and 10% of the downtime (a 300 ms precopy downtime that the guest
    saw as 292 ms agrees). None when a figure is missing.
    """
    pause, down, noise = (metrics.get(k) for k in
                          ("guest_pause_ms", "qemu_downtime_ms", "noise_floor_ms"))
    if pause is None or down is None:
        return None
    tol = max(noise["median"] if noise else 0.0, _DOWNTIME_RESOLUTION_MS,
              _DOWNTIME_RELATIVE * down["median"])
    diff = pause["median"] - down["median"]
    ratio = pause["median"] / down["median"] if down["median"] > 0 else None
    d: Dict[str, Any] = {
        "pause_median_ms": round(pause["median"], 3),
        "downtime_median_ms": down["median"],
        "difference_ms": round(diff, 3),
        "ratio": None if ratio is None else round(ratio, 2),
        "tolerance_ms": round(tol, 3),
        "disagrees": abs(diff) > tol,
    }
    if d["disagrees"]:
        side = "longer" if diff > 0 else "shorter"
        why = WHY_LONGER.get(method, "") if diff > 0 else WHY_SHORTER
        d["text"] = (f"{method}: the guest's pause ({pause['median']:.1f} ms) is "
                     f"{abs(diff):.1f} ms {side} than QEMU's downtime "
                     f"({down['median']:g} ms)"
                     + (f", {ratio:.1f}x" if ratio else "")
                     + f"; tolerance {tol:.1f} ms" + (f". {why}" if why else ""))
    return d


#: Why the guest's pause can be longer than QEMU's downtime, per method.
WHY_LONGER = {
    "cpr-reboot": "QEMU's downtime is the source's stop-and-save only; quitting the "
                  "source, starting the target and loading the file are not in it",
    "precopy": "downtime is the source's view; the target's load and vCPU restart "
               "are not all in it (the pause spans two memory files here)",
    "cpr-transfer": "downtime is the source's view of the switch-over; the target's "
                    "load and vCPU restart are not all in it, and the longest stall "
                    "may also come from CPU contention during the transfer",
    "cpr-transfer-prealloc": "the longest stall can come before the switch-over, while "
                             "the target preallocates (CPU contention on the source's "
                             "vCPU); pause_at_ms in bench.json says where it began",
}
#: Why it can be shorter.
WHY_SHORTER = ("QEMU counts downtime on the source until its side of the migration "
               "completes; the guest already ran on the target before that")


# --------------------------------------------------------------------------- the pause

def _stalls(res: SamplerResult) -> List[Stall]:
    """Every distinct stall the result names (its top list and each window's longest)."""
    seen: Dict[Tuple[int, int], Stall] = {}
    for s in [res.longest, *res.top, *(w.longest for w in res.windows)]:
        if s is not None:
            seen[(s.start_ns, s.value)] = s
    return sorted(seen.values(), key=lambda s: s.start_ns)


def final_stall(res: SamplerResult) -> Optional[Stall]:
    """The stall still going when sampling stopped (a source that stopped for good)."""
    ongoing = [s for s in _stalls(res) if s.end_ns is None]
    return ongoing[-1] if ongoing else None


def split_marks(src_stop_ns: int, dst_seen_running_ns: int) -> List[Tuple[str, int]]:
    """Past marks for the precopy target's sampler (labels ``split00000``...).

    Every ``SPLIT_FINE_NS`` from ``SPLIT_FINE_BEFORE_NS`` before the harness saw the
    target running to ``SPLIT_FINE_AFTER_NS`` after; before that, from 1 ms before the
    source's stop, at most ``SPLIT_COARSE_MAX`` marks at least ``SPLIT_COARSE_MIN_NS``
    apart. Sorted, distinct times.
    """
    fine_from = dst_seen_running_ns - SPLIT_FINE_BEFORE_NS
    coarse_from = src_stop_ns - 1_000_000
    times: List[int] = []
    if coarse_from < fine_from:
        span = fine_from - coarse_from
        n = max(1, min(SPLIT_COARSE_MAX, span // SPLIT_COARSE_MIN_NS))
        times += [int(coarse_from + i * span / n) for i in range(n)]
    start = max(fine_from, coarse_from)
    end = dst_seen_running_ns + SPLIT_FINE_AFTER_NS
    times += list(range(start, end + 1, SPLIT_FINE_NS))
    times = sorted(set(times))
    return [(f"split{i:05d}", t) for i, t in enumerate(times)]


@dataclass(frozen=True)
class PrecopyPause:
    """The guest's pause across two memory files (precopy: separate memfds)."""
    pause_ms: Optional[float]
    pause_max_ms: Optional[float]
    final_value: Optional[int]
    src_stop_ns: Optional[int]
    dst_resume_ns: Optional[int]
    problem: str = ""
    note: str = ""


def precopy_pause(src: SamplerResult, dst: SamplerResult) -> PrecopyPause:
    """Pause = first counter change seen on the target minus last change on the source.

    Precise definition, on the one CLOCK_MONOTONIC both samplers share:

    * on the source, the last change is the first read of the final value ``V`` (the
      stall still going when the source sampler stopped): ``src_stop``;
    * on the target, precopy itself writes the counter's page (with older values, and
      last with ``V``) before the guest runs there, so "first change" means the first
      change away from ``V``: the end of the target's stall at value ``V``.

    ``pause_ms`` uses the inner bounds (last target read of ``V`` minus first source
    read of ``V``), as the single-file sampler's ``duration`` does; ``pause_max_ms``
    the outer ones (first target read of a new value minus the source read before
    ``V``). The target's stall at ``V`` is found by value among the stalls the result
    names; :func:`split_marks` dropped into the target's sampler make it the longest of
    some window, so it is named even when longer migration-time stalls fill the top.

    That stall can be shorter than the sampler's threshold (the final page landed less
    than 50 us before the guest ran: a -nodefaults machine has little device state to
    load), and is then not recorded. Values on the target are at most ``V`` before the
    guest runs there and above it after, so ``V`` arrived at the end of the last stall
    below ``V`` and the guest resumed at most one threshold later: the bounds use that.
    """
    fin = final_stall(src)
    if fin is None:
        return PrecopyPause(None, None, None, None, None,
                            "the source's counter never stopped for good (no final stall)")
    v = fin.value
    src_before = fin.start_ns - (fin.max_ns - fin.duration_ns)
    stalls = _stalls(dst)
    at_v = [s for s in stalls if s.value == v and s.end_ns is not None]
    if at_v:
        s = max(at_v, key=lambda x: x.end_ns or 0)
        assert s.end_ns is not None
        inner = (s.start_ns + s.duration_ns) - fin.start_ns
        return PrecopyPause(round(inner / 1e6, 3), round((s.end_ns - src_before) / 1e6, 3),
                            v, fin.start_ns, s.end_ns)
    below = [s for s in stalls if s.value < v and s.end_ns is not None]
    if dst.last_value > v and below:
        arrived = max(s.end_ns for s in below if s.end_ns is not None)
        return PrecopyPause(round((arrived - fin.start_ns) / 1e6, 3),
                            round((arrived + dst.threshold_ns - src_before) / 1e6, 3),
                            v, fin.start_ns, arrived,
                            note=f"the target ran less than the sampler's threshold "
                                 f"({dst.threshold_ns / 1e3:.0f} us) after the final value "
                                 f"arrived: resume taken as that arrival")
    why = ("the guest never ran on the target past it" if dst.last_value <= v else
           "and no earlier stall to bound its arrival")
    return PrecopyPause(None, None, v, fin.start_ns, None,
                        f"no stall at the source's final value {v} on the target ({why})")


def transfer_window_gap_ms(res: SamplerResult, start: str, end: str) -> Optional[float]:
    """The sampler's longest gap between reads in the windows from ``start`` to ``end``."""
    labels = [w.start for w in res.windows]
    try:
        i = labels.index(start)
    except ValueError:
        return None
    gaps = []
    for w in res.windows[i:]:
        gaps.append(w.max_sampler_gap_ns)
        if w.end == end:
            break
    return round(max(gaps, default=0) / 1e6, 3)


