"""The console's silence across a switch-over, timed from the host.

:class:`ConsoleTail` runs a child process (``python -m harness.evidence.console_tail``)
that reads ``src.serial`` and ``dst.serial`` about every millisecond (one ``read`` a
file a poll; a ``stat`` every 32 polls to notice a file started anew) and stamps each
heartbeat line that became complete with ``time.monotonic_ns`` (the clock of the pause
sampler's marks) read after the poll's reads, bracketed by the clock read before the
previous poll's reads: the line became complete in between, however the child was
scheduled. Once the target has printed a few heartbeats the switch-over is behind it,
and it polls every 10 ms.

A child, not a thread, for the reason the pause sampler is one: a thread of the harness
waits for the GIL whenever the harness works (the RAM pattern, JSON, QMP); in real cases
a thread's stamps spanned 5-21 ms at the switch-over instead of about 1 ms.

Start it just before the hand-over (its 1 ms polling lasts until the target's third
heartbeat), stop it after the window::

    tail = ConsoleTail(fmt, src_serial, dst_serial, max_seconds=300).start()
    try:
        ...                                  # transfer, observation window
    finally:
        arrivals = tail.stop()               # ConsoleArrivals (frozen)
    gap = arrivals.gap()                     # ConsoleGap, or None

The child stops by itself after ``max_seconds`` and when its stdin closes (the harness
died); ``stop()`` wakes it at once; every wait for it is bounded
(:class:`ConsoleTailError`, :class:`~harness.core.errors.WaitTimeout`). The lines are
cut and joined as :func:`harness.evidence.console.console_continuity` does: a line the
source began and the target finished counts as the target's.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

from harness.core.errors import HarnessError, UsageError, WaitTimeout
from harness.core.wait import budget
from harness.evidence.console import (DST, HEARTBEAT, OTHER, SRC, ConsoleFormat,
                                      ConsoleLine, classify, split_lines)

#: Most stamped lines one tail keeps (over an hour of both consoles at 40 lines/s).
MAX_ARRIVALS = 300_000
#: How long ``start()`` waits for the child's first poll, ``stop()`` for its result.
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
#: A ``stat`` of each path every this many polls (a file replaced or truncated).
CHECK_EVERY = 32
#: Target heartbeats after which the tail polls at its relaxed interval.
RELAX_AFTER = 3
_ENDED = {"asked": "stopped when asked", "max_seconds": "stopped by its time limit",
          "failed": "failed"}


class ConsoleTailError(HarnessError):
    """The console tail failed (its child died, or could not read a file); ``arrivals``
    holds what it saw when it could say."""

    def __init__(self, message: str, arrivals: Optional["ConsoleArrivals"] = None):
        super().__init__(message)
        self.arrivals = arrivals


@dataclass(frozen=True)
class Arrival:
    """A heartbeat or boot marker line (``seq`` -1) seen complete by the tail: it
    became complete after ``after_ns`` and before ``t_ns`` (host monotonic ns; ``t_ns``
    is its stamp, read just after the poll that saw it)."""
    side: str
    kind: str
    seq: int
    after_ns: int
    t_ns: int


@dataclass(frozen=True)
class ConsoleGap:
    """The console's silence across the switch-over, at host arrival: the source's last
    heartbeat before the target's first, and that first one. ``min_ms``/``max_ms``
    bound it by the polls around each stamp; ``spacing_ms`` is the source's own median
    spacing as the tail saw it (about one period: a gap is about that plus the pause)."""
    src_seq: int
    dst_seq: int
    gap_ms: float
    min_ms: float
    max_ms: float
    period_ms: int
    spacing_ms: Optional[float]

    @property
    def beyond_spacing_ms(self) -> float:
        """How much longer than one heartbeat spacing the console was silent."""
        return self.gap_ms - (self.spacing_ms if self.spacing_ms else self.period_ms)

    def describe(self) -> str:
        spacing = (f"the source's spacing of {self.spacing_ms:.1f} ms" if self.spacing_ms
                   else f"the period of {self.period_ms} ms")
        beyond = self.beyond_spacing_ms
        how = (f"{beyond:.1f} ms beyond {spacing}" if beyond >= 0
               else f"{-beyond:.1f} ms short of {spacing}")
        return (f"last source heartbeat {self.src_seq} -> first target heartbeat "
                f"{self.dst_seq}: {self.gap_ms:.1f} ms ({self.min_ms:.1f}..{self.max_ms:.1f}), "
                f"{how}")


@dataclass(frozen=True)
class ConsoleArrivals:
    """What a :class:`ConsoleTail` saw: every heartbeat and boot marker line that became
    complete while it ran, stamped; the lines already there when it started
    (``backlog``) are counted, not stamped."""
    period_ms: int
    started_ns: int
    stopped_ns: int
    arrivals: Tuple[Arrival, ...]
    backlog: int
    other_lines: int
    dropped: int
    polls: int
    interval_ms: float
    #: When it began polling at its relaxed interval (0: never).
    relaxed_ns: int
    #: The longest time between two polls before it relaxed (the stamps' worst resolution).
    longest_fast_gap_ms: float
    cpu_s: float
    ended: str

    def heartbeats(self, side: str) -> Tuple[Arrival, ...]:
        return tuple(a for a in self.arrivals if a.side == side and a.kind == HEARTBEAT)

    def gap(self) -> Optional[ConsoleGap]:
        """The silence from the source's last heartbeat (before the target's first) to the
        target's first; ``None`` when either side has no stamped heartbeat."""
        dst = self.heartbeats(DST)
        src = [a for a in self.heartbeats(SRC) if dst and a.t_ns <= dst[0].t_ns]
        if not src or not dst:
            return None
        last, first = src[-1], dst[0]
        ms = 1e-6
        return ConsoleGap(src_seq=last.seq, dst_seq=first.seq,
                          gap_ms=(first.t_ns - last.t_ns) * ms,
                          min_ms=max(0, first.after_ns - last.t_ns) * ms,
                          max_ms=(first.t_ns - last.after_ns) * ms,
                          period_ms=self.period_ms, spacing_ms=_spacing_ms(src))

    def describe(self) -> str:
        seconds = (self.stopped_ns - self.started_ns) / 1e9
        return (f"console tail: {len(self.heartbeats(SRC))} source and "
                f"{len(self.heartbeats(DST))} target heartbeat(s) in {seconds:.1f} s, "
                f"{self.polls} polls (longest gap {self.longest_fast_gap_ms:.1f} ms "
                f"until it relaxed), "
                f"CPU {self.cpu_s * 1000:.0f} ms, {_ENDED.get(self.ended, self.ended)}")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        gap = self.gap()
        d["gap"] = asdict(gap) if gap else None
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ConsoleArrivals":
        fields = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        fields["arrivals"] = tuple(Arrival(**a) for a in d.get("arrivals", ()))
        return cls(**fields)


def _spacing_ms(arrivals: Sequence[Arrival]) -> Optional[float]:
    """Median spacing of consecutive heartbeats (numbers one apart), in ms."""
    steps = sorted((b.t_ns - a.t_ns) / 1e6 for a, b in zip(arrivals, arrivals[1:])
                   if b.seq == a.seq + 1)
    if not steps:
        return None
    mid = len(steps) // 2
    return steps[mid] if len(steps) % 2 else (steps[mid - 1] + steps[mid]) / 2


class _SerialFile:
    """One serial file as the tail reads it: opened once it exists, read from where it
    was, started over when it is replaced or truncated (a QEMU opens its file anew)."""

    def __init__(self, path: str):
        self.path, self.fd, self.ino, self.rest = path, -1, 0, b""

    def read(self, check: bool) -> bytes:
        """What was appended since the last read (``check``: first see whether the path
        now names another file, or a shorter one, and start over on it)."""
        if self.fd >= 0 and check and self._started_over():
            self.close()
            self.rest = b""
        if self.fd < 0:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return b""
            self.ino = os.fstat(self.fd).st_ino
        chunks = []
        for _ in range(64):                     # at most 4 MiB a poll
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _started_over(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return st.st_ino != self.ino or st.st_size < os.lseek(self.fd, 0, os.SEEK_CUR)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _TailState:
    """The tail's bookkeeping, in the child."""

    def __init__(self, fmt: ConsoleFormat, paths: Dict[str, str]):
        self.fmt = fmt
        self.files = {side: _SerialFile(path) for side, path in paths.items()}
        self.arrivals: List[Arrival] = []
        self.backlog = self.other = self.dropped = self.polls = self.dst_lines = 0
        self.seen = {SRC: 0, DST: 0}    # heartbeats stamped, per side
        self.prev_ns = 0                # the clock before the previous poll's reads
        self.last_ns = 0                # the clock after the last poll's reads
        self.longest_gap_ns = 0
        self.relaxed_ns = 0

    def poll(self) -> None:
        before = time.monotonic_ns()
        check = self.polls % CHECK_EVERY == 0
        dst = self.files[DST].read(check)   # the target first: whatever the source wrote
        src = self.files[SRC].read(check)   # before the target's bytes is then read too
        after = time.monotonic_ns()
        for side, data in ((SRC, src), (DST, dst)):
            if data:
                self._lines(side, data, after)
        if self.prev_ns and not self.relaxed_ns:
            self.longest_gap_ns = max(self.longest_gap_ns, before - self.prev_ns)
        self.prev_ns, self.last_ns, self.polls = before, after, self.polls + 1
        if not self.relaxed_ns and self.seen[DST] >= RELAX_AFTER:
            self.relaxed_ns = after

    def _lines(self, side: str, data: bytes, stamp_ns: int) -> None:
        f = self.files[side]
        lines, f.rest = split_lines(f.rest + data)
        for raw in lines:
            line = self._classify(side, raw)
            if line.kind == OTHER:
                self.other += 1
            elif not self.prev_ns:
                self.backlog += 1           # there before the tail: no arrival time
            elif len(self.arrivals) >= MAX_ARRIVALS:
                self.dropped += 1
            else:
                self.arrivals.append(Arrival(side, line.kind, line.seq, self.prev_ns, stamp_ns))
                if line.kind == HEARTBEAT:
                    self.seen[side] += 1

    def _classify(self, side: str, raw: bytes) -> ConsoleLine:
        """The target's first line finishes the source's unfinished one, joined as
        :func:`harness.evidence.console.console_continuity` joins it."""
        src = self.files[SRC]
        if side != DST:
            return classify(raw, self.fmt)
        self.dst_lines += 1
        if self.dst_lines > 1 or not src.rest:
            return classify(raw, self.fmt)
        joined, alone = classify(src.rest + raw, self.fmt), classify(raw, self.fmt)
        src.rest = b""
        if joined.kind == OTHER and alone.kind != OTHER:
            self.other += 1                 # the source's fragment, on its own
            return alone
        return joined

    def close(self) -> None:
        for f in self.files.values():
            f.close()

    def result(self, started_ns: int, ended: str, interval_s: float,
               cpu_s: float) -> ConsoleArrivals:
        return ConsoleArrivals(
            period_ms=self.fmt.period_ms, started_ns=started_ns,
            stopped_ns=self.last_ns or started_ns, arrivals=tuple(self.arrivals),
            backlog=self.backlog, other_lines=self.other, dropped=self.dropped,
            polls=self.polls, interval_ms=interval_s * 1000, relaxed_ns=self.relaxed_ns,
            longest_fast_gap_ms=self.longest_gap_ns / 1e6, cpu_s=cpu_s, ended=ended)


# --------------------------------------------------------------------------- the parent

def _package_root() -> str:
    """The directory that holds the ``harness`` package."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ConsoleTail:
    """Stamps the heartbeat lines of two serial files as they arrive, from a child.

    ``interval_s``: the wait between polls until the target has printed RELAX_AFTER
    heartbeats (1 ms: stamps to about a millisecond), ``relaxed_s`` after that (the CPU
    each costs: docs/guest.md). ``max_seconds``: the child stops by itself then.
    """

    def __init__(self, fmt: ConsoleFormat, src_path: str, dst_path: str,
                 max_seconds: float = 300.0, interval_s: float = 0.001,
                 relaxed_s: float = 0.01):
        if not max_seconds > 0:
            raise UsageError(f"console tail: max_seconds must be positive, got {max_seconds}")
        for name, value in (("interval_s", interval_s), ("relaxed_s", relaxed_s)):
            if not 0 < value <= 1:
                raise UsageError(f"console tail: {name} must be in (0, 1], got {value}")
        self.fmt, self.max_seconds = fmt, max_seconds
        self.interval_s, self.relaxed_s = interval_s, relaxed_s
        self.paths = {SRC: src_path, DST: dst_path}
        self.result: Optional[ConsoleArrivals] = None
        self._proc: Optional[subprocess.Popen] = None
        self._stderr: Optional[IO[bytes]] = None
        self._buf = b""
        #: The child's result once it said it (asked or not): (arrivals, error).
        self._final: Optional[Tuple[ConsoleArrivals, str]] = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "ConsoleTail":
        return self.start()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if self.result is None and self._proc is not None:
                self.stop()
        except HarnessError:
            if exc_type is None:
                raise
        finally:
            self.close()

    def start(self, timeout: float = START_TIMEOUT_S) -> "ConsoleTail":
        """Launch the child and wait for its first poll: from then on every new line is
        stamped (lines already complete then are its backlog)."""
        if self._proc is not None:
            raise UsageError("a console tail is started once")
        self._stderr = tempfile.TemporaryFile(prefix="console-tail-")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_package_root(), env.get("PYTHONPATH")) if p)
        # -S: no site (the child needs the standard library and this package, which
        # PYTHONPATH names): its start takes ~0.15 s instead of ~0.5 s on a loaded host
        self._proc = subprocess.Popen(
            [sys.executable, "-S", "-m", "harness.evidence.console_tail",
             *self._child_args()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            close_fds=True, env=env)
        try:
            msg = self._read_message(timeout, "the console tail's first poll")
        except BaseException:
            self.close()
            raise
        if msg.get("event") != "ready":
            self.close()
            raise ConsoleTailError(f"the console tail failed at its first poll: "
                                   f"{msg.get('error') or msg.get('event', 'no answer')}")
        return self

    def _child_args(self) -> List[str]:
        return ["--src", self.paths[SRC], "--dst", self.paths[DST],
                "--regex", self.fmt.heartbeat_regex, "--boot", self.fmt.boot_marker,
                "--period-ms", str(self.fmt.period_ms),
                "--max-seconds", repr(float(self.max_seconds)),
                "--interval-s", repr(self.interval_s), "--relaxed-s", repr(self.relaxed_s)]

    def progress(self, timeout: float = STOP_TIMEOUT_S) -> Dict[str, int]:
        """``{"polls": n, "source": n, "target": n}``: heartbeats stamped so far (e.g. to
        wait for the target's first few).

        :raise ConsoleTailError: the child failed (it could not read a file, or died).
        """
        if self._proc is None:
            raise UsageError("the console tail was never started")
        if self._final is None and self.running:
            self._send("seen", quiet=True)
            msg = self._read_message(timeout, "the console tail's progress")
            if msg.get("event") == "seen":
                return {k: int(msg.get(k, 0)) for k in ("polls", SRC, DST)}
        arrivals = self._final_result(timeout)
        return {"polls": arrivals.polls, SRC: len(arrivals.heartbeats(SRC)),
                DST: len(arrivals.heartbeats(DST))}

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> ConsoleArrivals:
        """Stop it (once more is fine) and return what it saw.

        :raise ConsoleTailError: it died, or could not read a file (what it saw is on
            the error). :raise WaitTimeout: no result in ``timeout`` (it is killed).
        """
        if self.result is not None:
            return self.result
        if self._proc is None:
            raise UsageError("the console tail was never started")
        try:
            if self._final is None and self._proc.poll() is None:
                self._send("stop", quiet=True)   # stopped by itself: its result is there
            arrivals = self._final_result(timeout)
        finally:
            self.close()
        self.result = arrivals
        return arrivals

    def _final_result(self, timeout: float) -> ConsoleArrivals:
        """The child's result (read now if not yet); raises when it reports a failure."""
        if self._final is None:
            msg = self._read_message(timeout, "the console tail's result")
            while msg.get("event") == "seen":    # an answer to a question nobody awaits
                msg = self._read_message(timeout, "the console tail's result")
            if msg.get("event") != "result":
                raise ConsoleTailError(f"the console tail said {msg.get('event', 'nothing')} "
                                       "where its result was due")
        assert self._final is not None
        arrivals, error = self._final
        if error:
            raise ConsoleTailError(f"the console tail failed: {error}", arrivals)
        return arrivals

    def close(self) -> None:
        """Kill the child if it still runs, reap it, close the pipes; idempotent."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                try:
                    if pipe is not None:
                        pipe.close()
                except OSError:
                    pass            # stdin to a dead child: EPIPE on flush
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- plumbing

    def _send(self, cmd: str, quiet: bool = False) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(cmd.encode() + b"\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            if not quiet:
                raise self._died(f"at {cmd}") from None

    def _read_message(self, timeout: float, what: str) -> Dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd, start = self._proc.stdout.fileno(), time.monotonic()
        limit = budget(timeout)
        while b"\n" not in self._buf:
            left = start + limit - time.monotonic()
            if left <= 0:
                raise WaitTimeout(what, limit, time.monotonic() - start,
                                  "running" if self.running else "exited")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    raise self._died(f"waiting for {what}")
                self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise ConsoleTailError(f"the console tail wrote an unreadable line: "
                                   f"{line[:100].decode(errors='replace')}") from None
        if msg.get("event") == "result":
            self._final = (ConsoleArrivals.from_dict(msg["result"]), msg.get("error", ""))
        return msg

    def _died(self, when: str) -> ConsoleTailError:
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        tail = ""
        if self._stderr is not None:
            self._stderr.flush()
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            tail = lines[-1] if lines else ""
        how = "still running" if code is None else f"exit status {code}"
        return ConsoleTailError(f"the console tail's child ended {when} ({how})"
                                + (f": {tail}" if tail else ""))


# --------------------------------------------------------------------------- the child

def _commands(deadline_ns: int, wait_s: float) -> List[str]:
    """Wait up to ``wait_s`` (or the deadline) for commands on stdin; "eof" when the
    parent is gone."""
    left = min(wait_s, max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9))
    ready, _, _ = select.select([0], [], [], left)
    if not ready:
        return []
    data = os.read(0, 4096)
    return data.decode(errors="replace").split() if data else ["eof"]


def _say(obj: Dict[str, Any]) -> None:
    os.write(1, json.dumps(obj).encode() + b"\n")


def _child(args: argparse.Namespace) -> int:
    cpu0 = time.process_time()              # the loop's CPU, not the interpreter's start
    fmt = ConsoleFormat(args.regex, args.boot, args.period_ms)
    state = _TailState(fmt, {SRC: args.src, DST: args.dst})
    started = time.monotonic_ns()
    deadline = started + int(args.max_seconds * 1e9)
    ended, error = "asked", ""
    try:
        state.poll()
        _say({"event": "ready"})
        while True:
            cmds = _commands(deadline, args.relaxed_s if state.relaxed_ns else args.interval_s)
            state.poll()                        # after "stop" too: the last lines
            if "eof" in cmds:
                return 3                        # the parent is gone: nobody to tell
            if "seen" in cmds:
                _say({"event": "seen", "polls": state.polls, **state.seen})
            if "stop" in cmds:
                break
            if time.monotonic_ns() >= deadline:
                ended = "max_seconds"
                break
    except OSError as exc:                      # a file it cannot read: said, not hidden
        ended, error = "failed", f"{type(exc).__name__}: {exc}"
    finally:
        state.close()
    result = state.result(started, ended, args.interval_s, time.process_time() - cpu0)
    _say({"event": "result", "result": asdict(result), "error": error})
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.evidence.console_tail",
                                description="Stamp the heartbeat lines of two serial files "
                                            "(the child of ConsoleTail).")
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--regex", required=True)
    p.add_argument("--boot", required=True)
    p.add_argument("--period-ms", type=int, required=True)
    p.add_argument("--max-seconds", type=float, required=True)
    p.add_argument("--interval-s", type=float, default=0.001)
    p.add_argument("--relaxed-s", type=float, default=0.01)
    return _child(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
