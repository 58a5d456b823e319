"""The pause the guest lived through, measured from the host (evidence 5).

The guest increments a u64 progress counter continuously. A separate process
(:mod:`harness.evidence.sampler_child`) maps that word of guest RAM read-only, through
the RAM backend file, and reads it at a steady pace with a CLOCK_MONOTONIC timestamp per
read: every ``SLOW_S`` (0.5 ms), and every ``FAST_S`` (0.1 ms) from :meth:`Sampler.fast`
(the harness calls it just before the switch-over) until the counter moves again after
:meth:`Sampler.relax`. Between reads it sleeps: it never spins, so it takes a few per
cent of one core instead of all of it, and runs at the lowest real-time priority
(SCHED_FIFO 1) where the host allows it, so a read happens when it is due however busy
the host is (under load 12 on two cores: a 0.1 ms wait ends within 0.2 ms in 99 % of
reads, against 3 ms at normal priority). A *stall* is a run of reads that all saw the
same value: the guest did not run for at least that long.

Two bounds per stall, both reported:

* ``duration_ns``: from the first to the last read that saw the value. The counter
  surely stood still that long; a hiccup of the sampler itself cannot inflate it.
* ``max_ns``: from the read before the first to the read after the last. The guest
  cannot have stood still longer. The two differ by about two reads' spacing (0.2 ms at
  the fast pace, 1 ms at the slow one); a sampler descheduled in the middle of a stall
  widens the gap between them, and the sampler's own gaps are reported per window.

A read is timed by the clock read just after it, and the sampler may lose the core in
between. So each bound reaches one read further out: ``duration_ns`` ends at the
timestamp taken before the last read of the value, and ``max_ns`` starts at the
timestamp taken before the read before the first one. Losing the core at the worst
moment then widens the bounds and never narrows them.

A separate process, not a thread: the harness's own Python work (QMP, JSON, pattern
checks) would otherwise hold the GIL and show up as guest stalls. Its timestamps and
the parent's marks share CLOCK_MONOTONIC (``time.monotonic_ns``), so a mark carries the
parent's own time and lands exactly, however late the child reads it. The same child
can tail the guest's consoles (:meth:`Sampler.console`): each heartbeat line is stamped
on the same clock (:mod:`harness.evidence.console_tail`), so the console's silence
across the switch-over is read beside the pause, without a second process waking up.

Protocol: one JSON object a line. Child -> parent: ``{"event": "ready", ...}`` after the
first read, and ``{"event": "result", ...}`` when it stops. Parent -> child:
``{"cmd": "mark", "label": L, "t_ns": T}``, ``{"cmd": "fast"}``, ``{"cmd": "relax"}``,
``{"cmd": "console", "label": SPEC}`` and ``{"cmd": "stop"}`` (plain ``mark L``,
``fast``, ``relax`` and ``stop`` lines are accepted too, for hand use). The child also
stops by itself after ``--max-seconds`` (then writes its result unasked), and exits
without a result when its stdin reaches EOF (its parent died).

Windows run between consecutive marks ("<start>" .. first mark .. "<end>"), so marking
"baseline" and "transfer" gives a baseline window and a transfer window from one run.
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import IO, Any, Dict, List, Optional, Tuple

from harness.core.errors import HarnessError, UsageError, WaitTimeout
from harness.core.wait import budget

START = "<start>"
END = "<end>"
DEFAULT_THRESHOLD_US = 50.0     # stalls shorter than this are not recorded
#: The pace: one read, then a wait on stdin this long (s), at most. Slow through a
#: baseline and a window (stalls timed to ~1 ms, judged in tens of ms); fast across the
#: switch-over (its pause timed to ~0.2 ms).
SLOW_S = 0.0005
FAST_S = 0.0001


class SamplerError(HarnessError):
    """The sampler child could not do its job."""


class SamplerDied(SamplerError):
    """The sampler child exited when it should have been running or answering."""

    def __init__(self, pid: int, exitcode: Optional[int], when: str, stderr_tail: str,
                 log_path: Optional[str] = None):
        self.pid = pid
        self.exitcode = exitcode
        self.when = when
        self.stderr_tail = stderr_tail
        self.log_path = log_path
        msg = f"sampler (pid {pid}) exited with code {exitcode} {when}"
        if log_path:
            msg += f"; log: {log_path}"
        if stderr_tail:
            msg += f"\n--- its stderr ---\n{stderr_tail}"
        super().__init__(msg)


# --------------------------------------------------------------------------- results

@dataclass(frozen=True)
class Mark:
    label: str
    t_ns: int


@dataclass(frozen=True)
class Stall:
    """A run of reads that all saw one counter value."""
    start_ns: int               # first read that saw the value
    end_ns: Optional[int]       # first read that saw another; None: still stalled at the end
    duration_ns: int            # first to last read of the value: surely stalled this long
    max_ns: int                 # read before the first to read after the last: upper bound
    value: int
    mark: str                   # the last mark at or before start_ns ("<start>" if none)
    since_mark_ns: int          # start_ns minus that mark's time

    @property
    def duration_ms(self) -> float:
        return self.duration_ns / 1e6

    @property
    def max_ms(self) -> float:
        return self.max_ns / 1e6

    def describe(self) -> str:
        tail = "still stalled at the end" if self.end_ns is None else \
            f"at most {self.max_ms:.3f} ms"
        return (f"{self.duration_ms:.3f} ms ({tail}), started "
                f"{self.since_mark_ns / 1e6:.3f} ms after {self.mark!r}, counter {self.value}")


@dataclass(frozen=True)
class Window:
    """Between two consecutive marks."""
    start: str
    end: str
    start_ns: int
    end_ns: int
    longest: Optional[Stall]     # longest stall overlapping the window
    stalls: int                  # stalls >= threshold overlapping the window
    max_sampler_gap_ns: int      # the sampler's own longest gap between reads (>= threshold)
    #: The time the counter surely stood still inside the window (each stall's
    #: ``duration_ns``, clipped to the window), and the longest few, longest first.
    stalled_ns: int = 0
    top: Tuple[Stall, ...] = ()
    #: Each stall of at least 1 ms inside the window, clipped to it, longest first.
    durations_ns: Tuple[int, ...] = ()


@dataclass(frozen=True)
class BackwardStep:
    t_ns: int
    from_value: int
    to_value: int
    kind: str   # "reset": the counter stayed low; "glitch": back above the old value at once


@dataclass(frozen=True)
class SamplerResult:
    stopped_by: str              # "stop" or "max_seconds"
    samples: int
    t0_ns: int
    t_end_ns: int
    rate_hz: float
    median_interval_ns: int      # between reads, from a probe every 4096 reads
    max_interval_ns: int         # the sampler's longest gap (exact when >= threshold)
    threshold_ns: int
    first_value: int
    last_value: int
    changes: int
    reset: bool                  # the counter went backwards and stayed there
    backward_steps: Tuple[BackwardStep, ...]
    longest: Optional[Stall]
    top: Tuple[Stall, ...]
    marks: Tuple[Mark, ...]
    windows: Tuple[Window, ...]
    stalls_recorded: int
    stalls_dropped: int
    #: The timeline: [ns since the first read, counter value] about every ms, thinned;
    #: and the stalls of at least 1 ms as [start ns, end ns, value] (end of sampling
    #: when still stalled). Kept out of :meth:`to_dict` (see :meth:`timeline`).
    trace: Tuple[Tuple[int, int], ...] = ()
    spans: Tuple[Tuple[int, int, int], ...] = ()
    #: When the child went back to the slow pace after :meth:`Sampler.relax` (None:
    #: never). ``median_interval_ns`` is the slow pace's real spacing,
    #: ``fast_median_interval_ns`` the fast one's (0: never fast).
    relaxed_at_ns: Optional[int] = None
    fast_median_interval_ns: int = 0
    #: How it was scheduled (``SCHED_FIFO 1``, or why not) and the CPU it used.
    scheduling: str = ""
    cpu_s: float = 0.0
    #: The consoles' tail (:meth:`Sampler.console`): ConsoleArrivals as a dict, or None.
    console: Optional[Dict[str, Any]] = None

    @property
    def duration_s(self) -> float:
        return (self.t_end_ns - self.t0_ns) / 1e9

    def windows_between(self, start: str, end: str) -> Tuple[Window, ...]:
        """The windows from mark ``start`` to the next ``end`` (see
        :meth:`longest_between`)."""
        labels = [w.start for w in self.windows] + [self.windows[-1].end]
        try:
            i = labels.index(start)
            j = labels.index(end, i + 1)
        except ValueError:
            raise SamplerError(f"sampler: no span {start!r}..{end!r} in this run (stopped by "
                               f"{self.stopped_by}); marks: {labels}") from None
        return self.windows[i:j]

    def longest_between(self, start: str, end: str) -> Optional[Stall]:
        """Longest stall overlapping the span from mark ``start`` to the next ``end``.

        "<start>" and "<end>" name the beginning and end of sampling. None: no stall of
        at least the threshold. A mark that never arrived (e.g. the sampler stopped at
        max_seconds first) raises :class:`SamplerError`.
        """
        labels = [w.start for w in self.windows] + [self.windows[-1].end]
        try:
            i = labels.index(start)
            j = labels.index(end, i + 1)
        except ValueError:
            raise SamplerError(f"sampler: no span {start!r}..{end!r} in this run (stopped by "
                               f"{self.stopped_by}); marks: {labels}") from None
        found = [w.longest for w in self.windows[i:j] if w.longest is not None]
        return max(found, key=lambda s: s.duration_ns, default=None)

    def describe(self) -> str:
        fast = (f", {self.fast_median_interval_ns / 1e3:.0f} us across the switch-over"
                if self.fast_median_interval_ns else "")
        parts = [f"{self.samples} reads in {self.duration_s:.2f} s (one every "
                 f"{self.median_interval_ns / 1e3:.0f} us{fast}, longest gap "
                 f"{self.max_interval_ns / 1e6:.3f} ms, {self.scheduling or 'scheduling unknown'})"]
        parts.append("longest stall " + (self.longest.describe() if self.longest else
                                         f"< {self.threshold_ns / 1e3:.0f} us"))
        if self.reset:
            parts.append("counter RESET (went backwards)")
        return "; ".join(parts)

    def to_dict(self) -> Dict[str, Any]:
        """The figures, without the timeline's series."""
        d = asdict(self)
        del d["trace"], d["spans"]
        return d

    def timeline(self) -> Dict[str, Any]:
        """The series a timeline plot is drawn from (times in ns since the first read)."""
        return {"t0_ns": self.t0_ns, "trace": [list(p) for p in self.trace],
                "spans": [list(s) for s in self.spans],
                "marks": [{"label": m.label, "t_ns": m.t_ns - self.t0_ns} for m in self.marks],
                "threshold_ns": self.threshold_ns}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SamplerResult":
        def stall(s: Optional[Dict[str, Any]]) -> Optional[Stall]:
            return None if s is None else Stall(**s)
        return cls(
            stopped_by=d["stopped_by"], samples=d["samples"], t0_ns=d["t0_ns"],
            t_end_ns=d["t_end_ns"], rate_hz=d["rate_hz"],
            median_interval_ns=d["median_interval_ns"], max_interval_ns=d["max_interval_ns"],
            threshold_ns=d["threshold_ns"], first_value=d["first_value"],
            last_value=d["last_value"], changes=d["changes"], reset=d["reset"],
            backward_steps=tuple(BackwardStep(**b) for b in d["backward_steps"]),
            longest=stall(d["longest"]), top=tuple(Stall(**s) for s in d["top"]),
            marks=tuple(Mark(**m) for m in d["marks"]),
            windows=tuple(Window(**{**w, "longest": stall(w["longest"]),
                                     "top": tuple(Stall(**x) for x in w.get("top", ())),
                                     "durations_ns": tuple(w.get("durations_ns", ()))})
                          for w in d["windows"]),
            stalls_recorded=d["stalls_recorded"], stalls_dropped=d["stalls_dropped"],
            trace=tuple(tuple(p) for p in d.get("trace", ())),
            spans=tuple(tuple(s) for s in d.get("spans", ())),
            relaxed_at_ns=d.get("relaxed_at_ns"),
            fast_median_interval_ns=d.get("fast_median_interval_ns", 0),
            scheduling=d.get("scheduling", ""), cpu_s=d.get("cpu_s", 0.0),
            console=d.get("console"))


# --------------------------------------------------------------------------- the parent side

def _package_root() -> str:
    """The directory that holds the ``harness`` package."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Sampler:
    """Runs the sampler child; a context manager that always kills it on exit.

    ``path``: the RAM backend file (e.g. ``RamFd.path``); ``offset``: byte offset of
    the u64 counter in that file (8-byte aligned); ``max_seconds``: the child stops by
    itself after this long, whatever happens to the parent.
    """

    def __init__(self, path: str, offset: int, max_seconds: float, *,
                 threshold_us: float = DEFAULT_THRESHOLD_US, log_path: Optional[str] = None):
        if offset < 0 or offset % 8:
            raise UsageError(f"sampler: counter offset {offset:#x} must be 8-byte aligned "
                             f"(an unaligned read could tear)")
        if not max_seconds > 0:
            raise UsageError(f"sampler: max_seconds {max_seconds!r} must be > 0")
        self.path = path
        self.offset = offset
        self.max_seconds = float(max_seconds)
        self.threshold_us = float(threshold_us)
        self.log_path = log_path
        self.ready: Optional[Dict[str, Any]] = None
        self.result: Optional[SamplerResult] = None
        self._proc: Optional[subprocess.Popen] = None
        self._stderr: Optional[IO[bytes]] = None
        self._buf = b""

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self) -> "Sampler":
        """Start the child before its target is known (its interpreter starts while the
        caller does other work); :meth:`aim` then names the file and waits for the first
        read. Idempotent."""
        if self._proc is None:
            self._launch(["--path", "-"])
        return self

    def aim(self, path: str, offset: int, timeout: float = 10.0) -> "Sampler":
        """Point a spawned child at ``path``/``offset`` and wait for its first read."""
        if offset < 0 or offset % 8:
            raise UsageError(f"sampler: counter offset {offset:#x} must be 8-byte aligned "
                             f"(an unaligned read could tear)")
        self.spawn()
        self.path, self.offset = path, offset
        self._send({"cmd": "map", "path": path, "offset": offset}, when="before its first read")
        return self.wait_ready(timeout)

    def start(self, timeout: float = 10.0, wait: bool = True) -> "Sampler":
        """Launch the child on the file given at construction and (``wait``) wait until it
        has read the counter once; without ``wait``, call :meth:`wait_ready` before the
        first mark."""
        if self._proc is not None:
            raise SamplerError("sampler already started")
        self._launch(["--path", self.path, "--offset", str(self.offset)])
        return self.wait_ready(timeout) if wait else self

    def _launch(self, target: List[str]) -> None:
        self._stderr = (open(self.log_path, "wb") if self.log_path
                        else tempfile.TemporaryFile(prefix="sampler-"))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "harness.evidence.sampler_child", *target,
               "--max-seconds", repr(self.max_seconds),
               "--threshold-us", repr(self.threshold_us)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, close_fds=True, env=env)

    def wait_ready(self, timeout: float = 10.0) -> "Sampler":
        """Wait until the child has read the counter once (idempotent).

        :raise SamplerDied: it exited first; :raise WaitTimeout: it did not read in time.
        """
        if self.ready is not None:
            return self
        if self._proc is None:
            raise SamplerError("sampler not started")
        try:
            msg = self._read_message(timeout, "the sampler's first read of the counter",
                                     when="before its first read")
            if msg.get("event") != "ready":
                raise SamplerError(f"sampler: expected a ready message, got {msg!r}")
        except BaseException:
            self.close()
            raise
        self.ready = msg
        return self

    def mark(self, label: str) -> int:
        """Record ``label`` at this instant (parent's clock); returns its time in ns."""
        t_ns = time.monotonic_ns()
        self.mark_at(label, t_ns)
        return t_ns

    def mark_at(self, label: str, t_ns: int) -> None:
        """Record ``label`` at the instant ``t_ns`` (CLOCK_MONOTONIC ns), which may be past:
        a mark placed once a later event tells where it belongs."""
        if not label or "\n" in label or label in (START, END):
            raise UsageError(f"sampler: bad mark label {label!r}")
        self._send({"cmd": "mark", "label": label, "t_ns": int(t_ns)},
                   when=f"at mark {label!r}")

    def fast(self) -> None:
        """Read at the fast pace (every FAST_S) from now: the switch-over is coming."""
        self._send({"cmd": "fast"}, when="at fast")

    def relax(self) -> None:
        """Back to the slow pace from the next moment the counter moves on (a stall in
        progress, the switch-over's pause, is timed to its end at the fast pace)."""
        self._send({"cmd": "relax"}, when="at relax")

    def console(self, fmt: Any, src: str, dst: str) -> None:
        """Tail the guest's consoles (``src`` and ``dst`` serial files) from now on,
        stamping each heartbeat line (``fmt``: a :class:`ConsoleFormat`) on the
        sampler's clock; the result's ``console`` holds what it saw."""
        spec = {"src": src, "dst": dst, "regex": fmt.heartbeat_regex,
                "boot": fmt.boot_marker, "period_ms": fmt.period_ms}
        self._send({"cmd": "console", "label": json.dumps(spec)}, when="at console")

    def stop(self, timeout: float = 10.0) -> SamplerResult:
        """Ask for the results (or collect those written at max_seconds) and reap.

        A second call returns the same result.
        """
        if self.result is not None:
            return self.result
        if self._proc is None:
            raise SamplerError("sampler not started")
        if self._proc.poll() is None:
            try:
                self._send({"cmd": "stop"}, when="at stop")
            except SamplerDied:
                pass  # it may have stopped by itself meanwhile: its result is in the pipe
        msg = self._read_message(timeout, "the sampler's result", when="before its result")
        if msg.get("event") != "result":
            raise SamplerError(f"sampler: expected a result, got {msg!r}")
        try:
            self._proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            pass  # close() kills it
        self.close()
        self.result = SamplerResult.from_dict(msg["result"])
        return self.result

    def close(self) -> None:
        """Kill the child if it still runs; idempotent."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass  # stdin to a dead child: EPIPE on flush
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- plumbing

    def _stderr_tail(self, limit: int = 4000) -> str:
        f = self._stderr
        if f is None or f.closed:
            return ""
        try:
            f.flush()
            if self.log_path:
                with open(self.log_path, "rb") as r:
                    data = r.read()
            else:
                f.seek(0)
                data = f.read()
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace").rstrip()

    def _died(self, when: str) -> SamplerDied:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            code = None
        return SamplerDied(self._proc.pid, code, when, self._stderr_tail(), self.log_path)

    def _send(self, obj: Dict[str, Any], when: str) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise SamplerError("sampler not started")
        try:
            self._proc.stdin.write(json.dumps(obj).encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            raise self._died(when) from None

    def _read_message(self, timeout: float, what: str, when: str) -> Dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        if self._proc.stdout.closed:
            raise SamplerError("sampler already closed: nothing more to read from it")
        fd = self._proc.stdout.fileno()
        start = time.monotonic()
        timeout = budget(timeout)
        deadline = start + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(what, timeout, time.monotonic() - start,
                                  last_state={"running": self.running(),
                                              "partial_output": self._buf[-200:].decode(
                                                  errors="replace")},
                                  log_path=self.log_path)
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.2))
            if ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    raise self._died(when)
                self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise SamplerError(f"sampler: unreadable output line {line[:200]!r}") from None
