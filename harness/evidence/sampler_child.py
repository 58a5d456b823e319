"""The sampler's child process (``python -m harness.evidence.sampler_child``): maps one
u64 of the RAM file read-only and reads it in a tight loop, recording stalls, its own
gaps and the parent's marks; writes one JSON result when told to stop. The protocol and
the meaning of the figures: :mod:`harness.evidence.sampler`."""
from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import select
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from harness.evidence.sampler import DEFAULT_THRESHOLD_US, END, RELAX_WAIT_S, START

_CHECK_EVERY = 4096             # reads between looks at stdin and the clock (~0.5 ms)
_MAX_RECORDED = 200_000         # stalls, sampler gaps, interval probes: bounded memory
_TOP = 5
_TRACE_EVERY_NS = 1_000_000     # the timeline: one (time, value) point a millisecond...
_TRACE_POINTS = 1500            # ...thinned to this many in the result
_SPAN_MIN_NS = 1_000_000        # stalls drawn on the timeline: at least 1 ms...
_SPANS = 200                    # ...the longest this many


def _emit(obj: Dict[str, Any]) -> None:
    data = (json.dumps(obj) + "\n").encode()
    while data:
        n = os.write(1, data)
        data = data[n:]


def _parse_command(line: bytes) -> Tuple[str, Optional[str], Optional[int]]:
    text = line.decode(errors="replace").strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
            return str(obj.get("cmd", "")), obj.get("label"), obj.get("t_ns")
        except (ValueError, AttributeError):
            return "?", None, None     # reported as unknown, the sampling goes on
    cmd, _, rest = text.partition(" ")
    return cmd, (rest.strip() or None), None


def _map_word(path: str, offset: int) -> Tuple[mmap.mmap, memoryview]:
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        if offset + 8 > st.st_size:
            raise OSError(f"offset {offset:#x} + 8 is beyond the file's {st.st_size} bytes")
        # One page around the word; on hugetlbfs that page is a huge page (st_blksize).
        page = max(mmap.PAGESIZE, st.st_blksize)
        base = offset - offset % page
        mm = mmap.mmap(fd, min(page, st.st_size - base), mmap.MAP_SHARED, mmap.PROT_READ,
                       offset=base)
    finally:
        os.close(fd)
    rel = offset - base
    # A native-format memoryview item is read with one 8-byte load: no torn values.
    return mm, memoryview(mm)[rel:rel + 8].cast("Q")


def _sample(word: memoryview, max_ns: int, thr_ns: int, stdin_fd: int) -> Dict[str, Any]:
    """The hot loop. Returns the raw record; everything per read stays in locals."""
    mono = time.monotonic_ns
    poll = select.select
    v = word[0]
    t = mono()
    # A read comes before its timestamp, so the bounds of a stall take the timestamps one
    # read further out: the value surely stood still from run_t to the timestamp before
    # its last read, and surely not longer than from the timestamp before the read before
    # its first one to the timestamp after the first new read. A sampler descheduled
    # between a read and its timestamp then widens the bounds, never narrows them.
    t0 = prev_t = pprev_t = run_t = run_before_t = t
    first_value = last_v = v
    _emit({"event": "ready", "pid": os.getpid(), "t_ns": t0, "value": v})
    deadline = t0 + max_ns
    stalls: List[Tuple[int, int, Optional[int], int, int]] = []
    gaps: List[Tuple[int, int]] = []
    probes: List[int] = []
    steps: List[Tuple[int, int, int, str]] = []
    pending: Optional[Tuple[int, int, int]] = None   # a backward step not yet classified
    marks: List[Tuple[str, int]] = []
    trace: List[Tuple[int, int]] = []
    trace_t = t0
    dropped = changes = 0
    n = 1
    mask = _CHECK_EVERY - 1
    inbuf = b""
    stopped_by = ""
    gap_ns = thr_ns        # the sampler's own gaps recorded: longer than this
    wait = 0.0             # stdin wait per look: 0 while fast, RELAX_WAIT_S once relaxed
    relax_asked = False
    relaxed_at = fast_samples = 0
    while True:
        v = word[0]
        t = mono()
        if t - prev_t > gap_ns and len(gaps) < _MAX_RECORDED:
            gaps.append((prev_t, t))
        if v != last_v:
            if pending is not None:
                steps.append((pending[0], pending[1], pending[2],
                              "glitch" if v >= pending[1] else "reset"))
                pending = None
            if v < last_v:
                pending = (t, last_v, v)
            if pprev_t - run_t >= thr_ns:
                if len(stalls) < _MAX_RECORDED:
                    stalls.append((run_t, pprev_t, t, run_before_t, last_v))
                else:
                    dropped += 1
            run_before_t = pprev_t
            run_t = t
            last_v = v
            changes += 1
        n += 1
        if not n & mask:
            if not relaxed_at and len(probes) < _MAX_RECORDED:
                probes.append(t - prev_t)
            if relax_asked and not relaxed_at and t - run_t < thr_ns:
                # Relax only while the counter moves: a stall in progress (the
                # switch-over's pause) is timed to its end at full rate.
                relaxed_at, fast_samples = t, n
                mask, wait = 0, RELAX_WAIT_S
                gap_ns = thr_ns + 4 * int(RELAX_WAIT_S * 1e9)
            if t - trace_t >= _TRACE_EVERY_NS and len(trace) < _MAX_RECORDED:
                trace.append((t, v))
                trace_t = t
            if t >= deadline:
                stopped_by = "max_seconds"
            elif poll([stdin_fd], [], [], wait)[0]:
                data = os.read(stdin_fd, 1 << 16)
                if not data:
                    stopped_by = "eof"
                inbuf += data
                while b"\n" in inbuf and not stopped_by:
                    line, inbuf = inbuf.split(b"\n", 1)
                    cmd, label, t_ns = _parse_command(line)
                    if cmd == "mark" and label:
                        marks.append((label, int(t_ns) if t_ns else mono()))
                    elif cmd == "stop":
                        stopped_by = "stop"
                    elif cmd == "relax":
                        relax_asked = True
                    elif cmd:
                        sys.stderr.write(f"sampler: ignoring unknown command {line!r}\n")
            if stopped_by:
                break
        pprev_t = prev_t
        prev_t = t
    if pending is not None:
        steps.append((pending[0], pending[1], pending[2], "reset"))
    if prev_t - run_t >= thr_ns:   # still stalled when told to stop
        stalls.append((run_t, prev_t, None, run_before_t, last_v))
    return {"stopped_by": stopped_by, "samples": n, "t0_ns": t0, "t_end_ns": t,
            "first_value": first_value, "last_value": last_v, "changes": changes,
            "stalls": stalls, "gaps": gaps, "probes": probes, "steps": steps,
            "marks": marks, "dropped": dropped, "trace": trace,
            "relaxed_at_ns": relaxed_at or None, "fast_samples": fast_samples or n}


def _summarize(raw: Dict[str, Any], thr_ns: int) -> Dict[str, Any]:
    """Turn the raw record into a :class:`SamplerResult` dict."""
    t0, t_end = raw["t0_ns"], raw["t_end_ns"]
    marks = sorted(raw["marks"], key=lambda m: m[1])
    bounds = [(START, t0)] + [(lbl, min(max(tn, t0), t_end)) for lbl, tn in marks] \
        + [(END, t_end)]

    def stall_dict(s: Tuple[int, int, Optional[int], int, int]) -> Dict[str, Any]:
        start, last_same, end, before, value = s
        mark, mark_t = START, t0
        for lbl, tn in bounds[:-1]:
            if tn <= start:
                mark, mark_t = lbl, tn
        return {"start_ns": start, "end_ns": end, "duration_ns": last_same - start,
                "max_ns": (last_same if end is None else end) - before, "value": value,
                "mark": mark, "since_mark_ns": start - mark_t}

    stalls = raw["stalls"]
    by_length = sorted(stalls, key=lambda s: s[1] - s[0], reverse=True)
    windows = []
    for (a, ta), (b, tb) in zip(bounds, bounds[1:]):
        inside = [s for s in stalls if s[0] <= tb and (s[1] if s[2] is None else s[2]) >= ta]
        gaps = [g1 - g0 for g0, g1 in raw["gaps"] if g0 <= tb and g1 >= ta]
        longest = max(inside, key=lambda s: s[1] - s[0], default=None)
        windows.append({"start": a, "end": b, "start_ns": ta, "end_ns": tb,
                        "longest": stall_dict(longest) if longest else None,
                        "stalls": len(inside), "max_sampler_gap_ns": max(gaps, default=0)})
    probes = sorted(raw["probes"])
    gap_max = max((g1 - g0 for g0, g1 in raw["gaps"]), default=0)
    relaxed_at = raw.get("relaxed_at_ns")
    # The rate of the fast part: what the stalls before relaxing were timed with.
    duration = max((relaxed_at or t_end) - t0, 1)
    return {
        "stopped_by": raw["stopped_by"], "samples": raw["samples"], "t0_ns": t0,
        "t_end_ns": t_end, "rate_hz": raw.get("fast_samples", raw["samples"]) * 1e9 / duration,
        "relaxed_at_ns": relaxed_at,
        "median_interval_ns": probes[len(probes) // 2] if probes else 0,
        "max_interval_ns": max(gap_max, probes[-1] if probes else 0),
        "threshold_ns": thr_ns, "first_value": raw["first_value"],
        "last_value": raw["last_value"], "changes": raw["changes"],
        "reset": any(kind == "reset" for *_, kind in raw["steps"]),
        "backward_steps": [{"t_ns": tn, "from_value": f, "to_value": to, "kind": kind}
                           for tn, f, to, kind in raw["steps"][:20]],
        "longest": stall_dict(by_length[0]) if by_length else None,
        "top": [stall_dict(s) for s in by_length[:_TOP]],
        "marks": [{"label": lbl, "t_ns": tn} for lbl, tn in marks],
        "windows": windows, "stalls_recorded": len(stalls),
        "stalls_dropped": raw["dropped"],
        "trace": _thin(raw["trace"], t0),
        "spans": sorted([s[0] - t0, (s[1] if s[2] is None else s[2]) - t0, s[4]]
                        for s in by_length[:_SPANS] if s[1] - s[0] >= _SPAN_MIN_NS),
    }


def _thin(trace: List[Tuple[int, int]], t0: int) -> List[List[int]]:
    """At most _TRACE_POINTS of the (time, value) trace, times relative to ``t0``."""
    step = max(1, -(-len(trace) // _TRACE_POINTS))
    return [[t - t0, v] for t, v in trace[::step]]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.evidence.sampler_child",
        description="Read a u64 counter in a shared file in a tight loop; report stalls.")
    ap.add_argument("--path", required=True,
                    help="the RAM backend file (/proc/PID/fd/N); '-': read "
                         '{"cmd": "map", "path": P, "offset": N} from stdin first')
    ap.add_argument("--offset", type=lambda s: int(s, 0), default=None,
                    help="byte offset of the u64 counter in the file")
    ap.add_argument("--max-seconds", required=True, type=float,
                    help="stop by itself after this long")
    ap.add_argument("--threshold-us", type=float, default=DEFAULT_THRESHOLD_US,
                    help="record stalls and sampler gaps at least this long")
    args = ap.parse_args(argv)
    if args.path == "-":
        # Byte by byte: the hot loop reads stdin's fd directly, so nothing may be left
        # in a buffer here.
        line = b""
        while not line.endswith(b"\n"):
            ch = os.read(0, 1)
            if not ch:
                break
            line += ch
        if not line.endswith(b"\n"):
            sys.stderr.write("sampler: stdin closed before a map command; exiting\n")
            return 3
        try:
            cmd = json.loads(line)
            args.path, args.offset = str(cmd["path"]), int(cmd["offset"])
        except (ValueError, KeyError, TypeError):
            sys.stderr.write(f"sampler: bad map command {line[:200]!r}\n")
            return 2
    elif args.offset is None:
        ap.error("--offset is required with a --path")
    try:
        _mm, word = _map_word(args.path, args.offset)   # unmapped at exit
    except OSError as e:
        sys.stderr.write(f"sampler: cannot map {args.path} at {args.offset:#x}: {e}\n")
        return 2
    thr_ns = int(args.threshold_us * 1000)
    gc.disable()   # a collection in the hot loop would look like a sampler gap
    raw = _sample(word, int(args.max_seconds * 1e9), thr_ns, sys.stdin.fileno())
    if raw["stopped_by"] == "eof":
        sys.stderr.write("sampler: stdin closed (parent gone); exiting without a result\n")
        return 3
    _emit({"event": "result", "result": _summarize(raw, thr_ns)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

