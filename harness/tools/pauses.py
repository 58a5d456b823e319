"""The guest's stalls over many cases, from their result records: what the pause
budgets are set from (docs/pause-budget.md).

``python -m harness pauses DIR...`` reads every ``result.json`` below the directories
(conformance runs, ``./run tests``' .test-reports/, self-tests' tmp dirs), keeps the
cases that passed their other checks (a broken QEMU's stalls are not the host's), and
prints, per accelerator, the distribution of: the switch-over's pause (its lower bound),
the width of its interval, the longest stall after it, its share of the window in
stalls of 10 ms or more, the same two in the baseline, and how much each case's window
exceeds its baseline. ``--json`` for the numbers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from harness.evidence.pause import repeated_share

FIGURES = (("switch_ms", "switch-over pause (ms, lower bound)"),
           ("width_ms", "its interval's width (ms)"),
           ("downtime_ms", "QEMU's downtime (ms)"),
           ("window_longest_ms", "longest stall after it (ms)"),
           ("window_share", "window stalled in stalls >= 10 ms beyond the longest (share)"),
           ("baseline_longest_ms", "baseline's longest stall (ms)"),
           ("baseline_share", "baseline stalled in stalls >= 10 ms beyond the longest"),
           ("share_over_baseline", "window's share minus the baseline's"))
PAUSE_IDS = {"pause.switch-over", "pause.stalls", "pause.stutter"}


def _row(rec: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    attempts = rec.get("attempts") or []
    p = ((attempts[0].get("evidence") or {}).get("pause") or {}) if attempts else {}
    if not p or p.get("error") or p.get("switch_ms") is None:
        return None
    other = [c for c in rec.get("checks") or [] if not c.get("ok")
             and c.get("id") not in PAUSE_IDS]
    if other:  # another defect: these stalls are not the host's
        return None
    w, b = p.get("window") or {}, p.get("baseline") or {}

    def share(st: Mapping[str, Any]) -> Optional[float]:
        secs = st.get("seconds") or 0
        return repeated_share(secs, st.get("longest_ms") or 0.0,
                              st.get("stalled_ms") or 0.0) if secs else None

    ws, bs = share(w), share(b)
    return {"id": rec.get("id"), "accel": rec.get("accel") or "?",
            "switch_ms": p.get("switch_ms"),
            "width_ms": (p["switch_max_ms"] - p["switch_ms"])
            if p.get("switch_max_ms") is not None else None,
            "downtime_ms": p.get("qemu_downtime_ms"),
            "window_longest_ms": w.get("longest_ms"), "window_share": ws,
            "baseline_longest_ms": b.get("longest_ms"), "baseline_share": bs,
            "share_over_baseline": ws - bs if ws is not None and bs is not None else None,
            "failed_pause_checks": sorted(c.get("id") for c in rec.get("checks") or []
                                          if not c.get("ok") and c.get("id") in PAUSE_IDS)}


def rows(dirs: Iterable[str]) -> List[Dict[str, Any]]:
    out = []
    for d in dirs:
        for path in sorted(Path(d).rglob("result.json")):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            row = _row(rec)
            if row is not None:
                row["path"] = str(path)
                out.append(row)
    return out


def quantile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q * len(v)) - 1))]


def summary(found: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """accel -> figure -> {n, median, p90, p99, max}."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for accel in sorted({r["accel"] for r in found}):
        mine = [r for r in found if r["accel"] == accel]
        out[accel] = {}
        for key, _ in FIGURES:
            vals = [r[key] for r in mine if r.get(key) is not None]
            if vals:
                out[accel][key] = {"n": len(vals), "median": quantile(vals, 0.5),
                                   "p90": quantile(vals, 0.9), "p99": quantile(vals, 0.99),
                                   "max": max(vals)}
    return out


def table(found: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for accel, figs in summary(found).items():
        failed = sum(1 for r in found if r["accel"] == accel and r["failed_pause_checks"])
        n = sum(1 for r in found if r["accel"] == accel)
        lines.append(f"{accel}: {n} case(s), {failed} failing a pause check")
        lines.append(f"  {'figure':46s} {'n':>4} {'median':>8} {'p90':>8} {'p99':>8} {'max':>8}")
        for key, title in FIGURES:
            s = figs.get(key)
            if s:
                lines.append(f"  {title:46s} {s['n']:>4} " + " ".join(
                    f"{s[k]:>8.3g}" for k in ("median", "p90", "p99", "max")))
    return "\n".join(lines) or "no case with pause figures found"
