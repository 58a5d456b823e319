"""The sampler's child process (``python -m harness.evidence.sampler_child``): maps one
u64 of the RAM file read-only and reads it at a steady pace (a real-time priority where
the host allows it), recording stalls, its own gaps and the parent's marks, and, when
asked, tails the guest's consoles; writes one JSON result when told to stop. The
protocol and the meaning of the figures: :mod:`harness.evidence.sampler`."""
from __future__ import annotations

import argparse
import gc
import json
import mmap
import os
import select
import sys
import time
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from harness.evidence.sampler import DEFAULT_THRESHOLD_US, END, FAST_S, SLOW_S, START

_MAX_RECORDED = 200_000         # stalls, sampler gaps, interval probes: bounded memory
_TAIL_EVERY_NS = 1_000_000      # the consoles' tail: read both files every millisecond
_TOP = 5
_TOP_WINDOW = 4
_DURATIONS = 2000
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


def _commands(stdin_fd: int, inbuf: bytes) -> Tuple[List[Tuple[str, Optional[str],
                                                                  Optional[int]]], bytes, bool]:
    """The whole command lines waiting on stdin (and what is left of a partial one);
    True when stdin reached EOF (the parent is gone)."""
    data = os.read(stdin_fd, 1 << 16)
    inbuf += data
    cmds = []
    while b"\n" in inbuf:
        line, inbuf = inbuf.split(b"\n", 1)
        cmds.append(_parse_command(line))
    return cmds, inbuf, not data


def _sample(word: memoryview, max_ns: int, thr_ns: int, stdin_fd: int,
            idle: Optional[Callable[[float], bool]] = None) -> Dict[str, Any]:
    """The paced loop: one read of the counter, its timestamp, then a wait of the pace
    for a command (SLOW_S; FAST_S from ``fast`` until the counter moves again after
    ``relax``). Returns the raw record; everything per read stays in locals.

    ``idle(seconds)`` waits that long at most and says whether a command is waiting
    (default: ``select`` on stdin; the self-tests play the host with their own)."""
    mono = time.monotonic_ns
    if idle is None:
        def idle(seconds: float, _sel=select.select, _fd=stdin_fd) -> bool:
            return bool(_sel([_fd], [], [], seconds)[0])
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
    probes: Dict[str, List[int]] = {"slow": [], "fast": []}
    steps: List[Tuple[int, int, int, str]] = []
    pending: Optional[Tuple[int, int, int]] = None   # a backward step not yet classified
    marks: List[Tuple[str, int]] = []
    trace: List[Tuple[int, int]] = []
    trace_t = tail_t = t0
    tail: Any = None       # the consoles' tail (console_tail._TailState), once asked
    dropped = changes = 0
    n = 1
    inbuf = b""
    stopped_by = ""
    pace, wait = "slow", SLOW_S
    gap_ns = thr_ns + 4 * int(wait * 1e9)   # the sampler's own gaps recorded: longer
    relax_asked = False
    relaxed_at = 0
    while True:
        v = word[0]
        t = mono()
        dt = t - prev_t
        if len(probes[pace]) < _MAX_RECORDED:
            probes[pace].append(dt)
        if dt > gap_ns and len(gaps) < _MAX_RECORDED:
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
            if relax_asked and pace == "fast":
                # Relax only once the counter moves: a stall in progress (the
                # switch-over's pause) is timed to its end at the fast pace.
                relaxed_at, pace, wait = t, "slow", SLOW_S
                gap_ns = thr_ns + 4 * int(wait * 1e9)
        n += 1
        if tail is not None and t - tail_t >= _TAIL_EVERY_NS:
            tail.poll()
            tail_t = t
        if t - trace_t >= _TRACE_EVERY_NS and len(trace) < _MAX_RECORDED:
            trace.append((t, v))
            trace_t = t
        if t >= deadline:
            stopped_by = "max_seconds"
        elif idle(wait):
            cmds, inbuf, eof = _commands(stdin_fd, inbuf)
            stopped_by = "eof" if eof else ""
            for cmd, label, t_ns in cmds:
                if cmd == "mark" and label:
                    marks.append((label, int(t_ns) if t_ns else mono()))
                elif cmd == "stop":
                    stopped_by = stopped_by or "stop"
                elif cmd == "fast":
                    pace, wait, relax_asked = "fast", FAST_S, False
                    gap_ns = thr_ns + 4 * int(wait * 1e9)
                elif cmd == "relax":
                    relax_asked = True
                elif cmd == "console" and label:
                    tail = _tail_of(label)
                elif cmd:
                    sys.stderr.write(f"sampler: ignoring unknown command {cmd!r}\n")
        if stopped_by:
            break
        pprev_t = prev_t
        prev_t = t
    if pending is not None:
        steps.append((pending[0], pending[1], pending[2], "reset"))
    if prev_t - run_t >= thr_ns:   # still stalled when told to stop
        stalls.append((run_t, prev_t, None, run_before_t, last_v))
    console = None
    if tail is not None:
        tail.poll()
        console = asdict(tail.result(t0, "asked", _TAIL_EVERY_NS / 1e9, 0.0))
        tail.close()
    return {"stopped_by": stopped_by, "samples": n, "t0_ns": t0, "t_end_ns": t,
            "first_value": first_value, "last_value": last_v, "changes": changes,
            "stalls": stalls, "gaps": gaps, "probes": probes, "steps": steps,
            "marks": marks, "dropped": dropped, "trace": trace,
            "relaxed_at_ns": relaxed_at or None, "console": console}


def _tail_of(spec: str) -> Any:
    """The consoles' tail a ``console`` command asks for (its label: JSON with ``src``,
    ``dst``, ``regex``, ``boot``, ``period_ms``)."""
    from harness.evidence.console import ConsoleFormat
    from harness.evidence.console_tail import _TailState

    d = json.loads(spec)
    fmt = ConsoleFormat(d["regex"], d["boot"], int(d["period_ms"]))
    return _TailState(fmt, {"source": d["src"], "target": d["dst"]})


def _window(a: str, ta: int, b: str, tb: int, by_length: List[Any], gaps: List[Any],
            stall_dict: Callable[[Any], Dict[str, Any]]) -> Dict[str, Any]:
    """One window between two marks: its stalls (``by_length``: longest first)."""
    inside = [s for s in by_length if s[0] <= tb and (s[1] if s[2] is None else s[2]) >= ta]
    own_gaps = [g1 - g0 for g0, g1 in gaps if g0 <= tb and g1 >= ta]
    clipped = [min(s[1], tb) - max(s[0], ta) for s in inside]
    return {"start": a, "end": b, "start_ns": ta, "end_ns": tb,
            "longest": stall_dict(inside[0]) if inside else None,
            "stalls": len(inside), "max_sampler_gap_ns": max(own_gaps, default=0),
            "stalled_ns": sum(max(0, d) for d in clipped),
            "top": [stall_dict(s) for s in inside[:_TOP_WINDOW]],
            # Each stall of at least a millisecond, clipped to the window, for the
            # stutter's sum.
            "durations_ns": [d for d in clipped if d >= 1_000_000][:_DURATIONS]}


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
    windows = [_window(a, ta, b, tb, by_length, raw["gaps"], stall_dict)
               for (a, ta), (b, tb) in zip(bounds, bounds[1:])]
    slow, fast = sorted(raw["probes"]["slow"]), sorted(raw["probes"]["fast"])
    every = slow + fast
    gap_max = max((g1 - g0 for g0, g1 in raw["gaps"]), default=0)
    relaxed_at = raw.get("relaxed_at_ns")
    duration = max(t_end - t0, 1)
    return {
        "stopped_by": raw["stopped_by"], "samples": raw["samples"], "t0_ns": t0,
        "t_end_ns": t_end, "rate_hz": raw["samples"] * 1e9 / duration,
        "relaxed_at_ns": relaxed_at,
        "median_interval_ns": slow[len(slow) // 2] if slow else 0,
        "fast_median_interval_ns": fast[len(fast) // 2] if fast else 0,
        "max_interval_ns": max([gap_max] + every[-1:]),
        "scheduling": raw.get("scheduling", ""),
        "cpu_s": round(raw.get("cpu_s", 0.0), 3),
        "console": raw.get("console"),
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


def _realtime() -> str:
    """Run at the lowest real-time priority where the host allows it: a read then
    happens when it is due, not when the busy host gets round to it (the pace's wait
    ends; the loop never spins, so it takes a few per cent of a core, never more)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return "SCHED_FIFO 1"
    except (OSError, AttributeError) as exc:
        return f"normal (SCHED_FIFO refused: {exc})"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.evidence.sampler_child",
        description="Read a u64 counter in a shared file at a steady pace; report stalls.")
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
    scheduling = _realtime()
    gc.disable()   # a collection in the loop would look like a sampler gap
    cpu0 = time.process_time()
    raw = _sample(word, int(args.max_seconds * 1e9), thr_ns, sys.stdin.fileno())
    raw["scheduling"], raw["cpu_s"] = scheduling, time.process_time() - cpu0
    if raw["stopped_by"] == "eof":
        sys.stderr.write("sampler: stdin closed (parent gone); exiting without a result\n")
        return 3
    _emit({"event": "result", "result": _summarize(raw, thr_ns)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

