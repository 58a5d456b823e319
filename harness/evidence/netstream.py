"""The guest's network across a switch-over, measured from the host.

The Linux guest sends a datagram ``seq=N t=<uptime>`` every few tens of milliseconds
(images/linux, ``net`` command) and echoes every line of a TCP connection. The host
side is here:

- :class:`StreamReceiver`: a UDP socket (on the host's loopback, or inside the case's
  namespace: :meth:`harness.core.netns.Namespace.socket`) read on a thread that records
  each datagram's arrival time (``time.monotonic_ns``), bounded in time and count;
- :class:`EchoClient`: one TCP connection held open through the switch-over, a line
  every period, each echo's time; :meth:`EchoClient.finish` sends a last line on the same
  connection and says whether it came back (the connection survived);
- :func:`analyse`: pure, arrivals -> a frozen :class:`StreamRecord` (received, lost,
  duplicated, reordered, the longest gap and when it happened, the TCP outcome, bytes),
  with :meth:`StreamRecord.describe` in plain words.

Judging (how long a gap may be) is the caller's: this module measures and says.
"""
from __future__ import annotations

import re
import select
import socket
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from harness.core.wait import budget, wait_until

#: The guest's line in a datagram (images/linux/layout.json STREAM_REGEX, as bytes).
DEFAULT_PATTERN = re.compile(rb"seq=(?P<seq>[0-9]+) t=(?P<uptime>[0-9]+\.[0-9]+)")
#: Bounds of one receiver or echo client, whatever the caller forgets.
MAX_SECONDS = 900.0
MAX_DATAGRAMS = 200_000
_POLL_S = 0.1


@dataclass(frozen=True)
class Arrival:
    """One datagram: when it arrived (host monotonic ns), its seq and the guest's uptime
    in it (-1.0: the datagram had none), its size."""
    t_ns: int
    seq: int
    uptime: float
    size: int


class StreamReceiver:
    """Datagrams on a bound UDP socket, each with its arrival time, read on a thread.

    Stops by itself after ``max_seconds`` or ``max_datagrams`` (then ``truncated``).
    """

    def __init__(self, sock: socket.socket, pattern: "re.Pattern[bytes]" = DEFAULT_PATTERN,
                 max_seconds: float = MAX_SECONDS, max_datagrams: int = MAX_DATAGRAMS):
        self.sock = sock
        self.sock.settimeout(_POLL_S)
        self.pattern = pattern
        self.max_seconds, self.max_datagrams = max_seconds, max_datagrams
        self._arrivals: List[Arrival] = []
        self.unparsed = 0
        self.truncated = False
        self.started_ns = self.stopped_ns = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="cprh-netstream",
                                        daemon=True)

    @classmethod
    def bind(cls, addr: str = "127.0.0.1", port: int = 0, ns: Any = None,
             **kw: Any) -> "StreamReceiver":
        """A receiver on ``addr:port`` (0: any free port), inside namespace ``ns``
        (a :class:`harness.core.netns.Namespace`) when given."""
        sock = ns.socket() if ns is not None else socket.socket(socket.AF_INET,
                                                                 socket.SOCK_DGRAM)
        try:
            sock.bind((addr, port))
        except OSError:
            sock.close()
            raise
        return cls(sock, **kw)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def start(self) -> "StreamReceiver":
        self.started_ns = time.monotonic_ns()
        self._thread.start()
        return self

    def _loop(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set():
            if time.monotonic() > end or len(self._arrivals) >= self.max_datagrams:
                self.truncated = True
                break
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            t = time.monotonic_ns()
            m = self.pattern.search(data)
            if m is None:
                self.unparsed += 1
                continue
            up = m.groupdict().get("uptime")
            with self._lock:
                self._arrivals.append(Arrival(t, int(m["seq"]),
                                              float(up) if up else -1.0, len(data)))

    @property
    def arrivals(self) -> Tuple[Arrival, ...]:
        with self._lock:
            return tuple(self._arrivals)

    def stop(self, timeout: float = 5.0) -> Tuple[Arrival, ...]:
        """Stop reading and close the socket (idempotent); the arrivals so far."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(budget(timeout))
        if not self.stopped_ns:
            self.stopped_ns = time.monotonic_ns()
        self.sock.close()
        return self.arrivals

    def __enter__(self) -> "StreamReceiver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class TcpRecord:
    """One TCP connection held open through the switch-over."""
    #: The last line (sent after the window) came back on the same connection.
    survived: bool
    sent: int
    echoed: int
    #: The longest time a line waited for its echo (an unanswered line: until the end).
    longest_wait_ms: float
    #: When that wait began, seconds from the switch-over (None: no switch-over given).
    longest_wait_from_s: Optional[float]
    #: How the connection ended before the last line came back ("" if it did not).
    broke_how: str = ""
    #: When it broke, seconds from the switch-over (None: it did not, or no switch-over).
    broke_at_s: Optional[float] = None

    def describe(self) -> str:
        counts = f"{self.echoed} of {self.sent} line(s) echoed"
        wait = f"the longest wait for an echo {self.longest_wait_ms:.0f} ms" + (
            f", from {_when(self.longest_wait_from_s)}"
            if self.longest_wait_from_s is not None else "")
        if self.survived:
            return f"the TCP connection survived ({counts}, {wait}, the last line echoed)"
        when = f" {_when(self.broke_at_s)}" if self.broke_at_s is not None else ""
        how = f": {self.broke_how}" if self.broke_how else ""
        return f"the TCP connection did not survive: it broke{when}{how} ({counts}, {wait})"


class EchoClient:
    """One TCP connection to the guest's echo server: a numbered line every
    ``period_s`` on a thread, each echo's time recorded; bounded by ``max_seconds``."""

    def __init__(self, sock: socket.socket, period_s: float = 0.1,
                 max_seconds: float = MAX_SECONDS):
        self.sock = sock
        self.period_s, self.max_seconds = period_s, max_seconds
        self.sent_ns: List[int] = []
        self.echo_ns: Dict[int, int] = {}
        self.broke_how = ""
        self.broke_ns = 0
        self._buf = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cprh-echo", daemon=True)

    @classmethod
    def connect(cls, addr: str, port: int, ns: Any = None, timeout: float = 20.0,
                **kw: Any) -> "EchoClient":
        """Connect (from inside namespace ``ns`` when given) and see a first line come
        back, retrying while the guest's server is not there yet: slirp's ``hostfwd``
        accepts on the host before it reaches the guest, and resets the connection when
        nothing listens there.

        :raise harness.core.errors.WaitTimeout: no connection echoed.
        """
        def attempt() -> Optional[socket.socket]:
            s = ns.socket(socket.AF_INET, socket.SOCK_STREAM) if ns is not None else \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(2.0)
            try:
                s.connect((addr, port))
                s.sendall(b"hello\n")
                got = b""
                while not got.endswith(b"\n"):
                    chunk = s.recv(64)
                    if not chunk:
                        raise ConnectionResetError("closed at once")
                    got += chunk
                if got == b"hello\n":
                    return s
            except OSError:
                pass
            s.close()
            return None

        waited = wait_until(attempt, what=f"the guest's echo server at {addr}:{port}",
                            timeout=timeout, goal=lambda s: s is not None, interval=0.2,
                            show=lambda _s: "not accepting")
        return cls(waited.value, **kw)

    def start(self) -> "EchoClient":
        self._thread.start()
        return self

    def _loop(self) -> None:
        end = time.monotonic() + self.max_seconds
        due = time.monotonic()
        while not self._stop.is_set() and not self.broke_how and time.monotonic() < end:
            if time.monotonic() >= due:
                self._send(f"e {len(self.sent_ns)}")
                due = time.monotonic() + self.period_s  # late: no burst to catch up
            self._receive(max(0.0, min(due - time.monotonic(), _POLL_S)))

    def _send(self, line: str) -> None:
        try:
            self.sock.sendall(line.encode() + b"\n")
            self.sent_ns.append(time.monotonic_ns())
        except OSError as exc:
            self._broke(exc.strerror or str(exc))

    def _receive(self, wait_s: float) -> None:
        try:
            ready, _, _ = select.select([self.sock], [], [], wait_s)
            if not ready:
                return
            data = self.sock.recv(65536)
        except OSError as exc:
            self._broke(exc.strerror or str(exc))
            return
        if not data:
            self._broke("closed by the other end")
            return
        t = time.monotonic_ns()
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] in (b"e", b"last") and parts[1].isdigit():
                self.echo_ns.setdefault(int(parts[1]), t)

    def _broke(self, how: str) -> None:
        if not self.broke_how:
            self.broke_how, self.broke_ns = how, time.monotonic_ns()

    def close(self) -> None:
        """Stop the periodic lines and close the connection, without a last line
        (an error path); idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(budget(5.0))
        self.sock.close()

    def finish(self, timeout: float = 5.0, switch_ns: Optional[int] = None) -> TcpRecord:
        """Stop the periodic lines, send a last one on the same connection and wait (at
        most ``timeout``) for its echo; close; the :class:`TcpRecord`."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(budget(5.0))
        last = len(self.sent_ns)
        if not self.broke_how:
            self._send(f"last {last}")
            end = time.monotonic() + budget(timeout)
            while not self.broke_how and last not in self.echo_ns and time.monotonic() < end:
                self._receive(min(_POLL_S, max(0.0, end - time.monotonic())))
            if not self.broke_how and last not in self.echo_ns:
                self._broke(f"no echo of the last line within {timeout:.0f} s")
        self.sock.close()
        return tcp_record(self.sent_ns, self.echo_ns, last in self.echo_ns, self.broke_how,
                          self.broke_ns, time.monotonic_ns(), switch_ns)


def tcp_record(sent_ns: Sequence[int], echo_ns: Dict[int, int], survived: bool,
               broke_how: str, broke_ns: int, end_ns: int,
               switch_ns: Optional[int] = None) -> TcpRecord:
    """Pure: the record of an echo connection from its send and echo times."""
    waits = [((echo_ns.get(i, end_ns) - t) / 1e6, t) for i, t in enumerate(sent_ns)]
    longest, from_ns = max(waits, default=(0.0, 0))
    return TcpRecord(
        survived=survived, sent=len(sent_ns),
        echoed=sum(1 for i in range(len(sent_ns)) if i in echo_ns),
        longest_wait_ms=round(longest, 1),
        longest_wait_from_s=_rel(from_ns, switch_ns) if waits else None,
        broke_how="" if survived else broke_how,
        broke_at_s=None if survived or not broke_ns else _rel(broke_ns, switch_ns))


@dataclass(frozen=True)
class Gap:
    """The longest time without a datagram: between two arrivals, or (``before_seq``
    0) from the last arrival to the end of the measurement."""
    ms: float
    #: When it began and ended, seconds from the switch-over (None: none was given).
    start_s: Optional[float]
    end_s: Optional[float]
    after_seq: int
    before_seq: int
    #: How far the guest's own clock moved between the two datagrams (None: unknown or
    #: no datagram after): what the guest spent running; the rest it was not running.
    guest_ms: Optional[float] = None


@dataclass(frozen=True)
class StreamRecord:
    """The datagram stream (and the TCP connection) across one switch-over."""
    #: Datagrams the guest sent, as it reported (None: unknown; losses then count the
    #: holes below the highest seq received).
    sent: Optional[int]
    received: int
    datagrams: int
    lost: int
    lost_seqs: Tuple[Tuple[int, int], ...]
    duplicated: int
    reordered: int
    bytes: int
    #: The usual interval between arrivals (the median), ms.
    period_ms: float
    longest_gap: Gap
    #: The longest jump of the guest's own uptime between two consecutive seqs received:
    #: how long the guest itself was away, apart from the network; after which seq.
    guest_gap_ms: float
    guest_gap_after_seq: int = 0
    #: The gap that holds the switch-over: the last arrival before it to the first after
    #: (None: no switch-over given, or no arrival on one side of it).
    switch_gap: Optional[Gap] = None
    tcp: Optional[TcpRecord] = None
    #: The receiver hit its bounds (time or count) before it was stopped.
    truncated: bool = False

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.datagrams == 0:
            told = f" of {self.sent} the guest sent" if self.sent is not None else ""
            parts = [f"no datagram received{told}"]
        else:
            parts = [self._counts()]
            if self.switch_gap is not None:
                parts.append(_gap_words("across the switch-over", self.switch_gap))
            if self.switch_gap is None or self.longest_gap != self.switch_gap:
                parts.append(_gap_words("longest gap", self.longest_gap))
            if self.guest_gap_ms > 0:
                parts.append(f"the guest's own clock moved at most {self.guest_gap_ms:.0f} ms "
                             f"between two consecutive datagrams (after seq "
                             f"{self.guest_gap_after_seq})")
        parts.append(self.tcp.describe() if self.tcp is not None
                     else "no TCP connection measured")
        if self.truncated:
            parts.append("the receiver reached its time or count bound")
        return "; ".join(parts)

    def _counts(self) -> str:
        of = f"{self.received} of {self.sent}" if self.sent is not None else \
            f"{self.received} (the guest's count unknown)"
        lost = f"{self.lost} lost" + (f": seq {_ranges(self.lost_seqs)}" if self.lost else "")
        return (f"{of} datagrams received ({lost}, {self.duplicated} duplicated, "
                f"{self.reordered} reordered, {self.bytes} bytes); usual interval "
                f"{self.period_ms:.0f} ms")



def _gap_words(name: str, g: Gap) -> str:
    when = ""
    if g.guest_ms is not None:
        when = f" (the guest's own clock moved {g.guest_ms:.0f} ms of it)"
    if g.start_s is not None and g.end_s is not None:
        when += f", from {_when(g.start_s)} to {_when(g.end_s)}"
    if g.before_seq == 0:
        return (f"{name} {g.ms:.0f} ms at the end: nothing after seq {g.after_seq}"
                f"{when}")
    return f"{name} {g.ms:.0f} ms{when} (seq {g.after_seq}, then seq {g.before_seq})"


def analyse(arrivals: Sequence[Arrival], sent: Optional[int] = None,
            switch_ns: Optional[int] = None, stopped_ns: Optional[int] = None,
            tcp: Optional[TcpRecord] = None, truncated: bool = False) -> StreamRecord:
    """Pure: the :class:`StreamRecord` of ``arrivals`` (in arrival order). ``sent``: the
    guest's count; ``switch_ns``: the switch-over (host monotonic ns) every time is told
    against; ``stopped_ns``: when the stream was to end (the guest told to stop): a
    silence from the last arrival to then counts as a gap."""
    seen: Dict[int, int] = {}
    duplicated = reordered = 0
    top = 0
    for a in arrivals:
        if a.seq in seen:
            duplicated += 1
        elif a.seq < top:
            reordered += 1
        seen[a.seq] = seen.get(a.seq, 0) + 1
        top = max(top, a.seq)
    upto = sent if sent is not None else top
    missing = [s for s in range(1, upto + 1) if s not in seen]
    times = [a.t_ns for a in arrivals]
    intervals = [(b - a) / 1e6 for a, b in zip(times, times[1:])]
    guest_ms, guest_after = _guest_gap(arrivals)
    return StreamRecord(
        sent=sent, received=len(seen), datagrams=len(arrivals), lost=len(missing),
        lost_seqs=_as_ranges(missing), duplicated=duplicated, reordered=reordered,
        bytes=sum(a.size for a in arrivals),
        period_ms=round(statistics.median(intervals), 1) if intervals else 0.0,
        longest_gap=_longest_gap(arrivals, switch_ns, stopped_ns),
        switch_gap=_switch_gap(arrivals, switch_ns, stopped_ns),
        guest_gap_ms=guest_ms, guest_gap_after_seq=guest_after, tcp=tcp, truncated=truncated)


def _longest_gap(arrivals: Sequence[Arrival], switch_ns: Optional[int],
                 stopped_ns: Optional[int]) -> Gap:
    best: Tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)  # ns, start, end, after, before
    guest = None
    for a, b in zip(arrivals, arrivals[1:]):
        if b.t_ns - a.t_ns > best[0]:
            best = (b.t_ns - a.t_ns, a.t_ns, b.t_ns, a.seq, b.seq)
            guest = round((b.uptime - a.uptime) * 1000, 1) \
                if min(a.uptime, b.uptime) >= 0 else None
    # the silence from the last arrival to the end of the stream (``stopped_ns``: when
    # the guest was told to stop), if the stream went quiet before that
    if arrivals and stopped_ns is not None and stopped_ns - arrivals[-1].t_ns > best[0]:
        last = arrivals[-1]
        best = (stopped_ns - last.t_ns, last.t_ns, stopped_ns, last.seq, 0)
        guest = None
    ns, start, end, after, before = best
    return Gap(ms=round(ns / 1e6, 1), start_s=_rel(start, switch_ns) if ns else None,
               end_s=_rel(end, switch_ns) if ns else None, after_seq=after,
               before_seq=before, guest_ms=guest)


def _switch_gap(arrivals: Sequence[Arrival], switch_ns: Optional[int],
                stopped_ns: Optional[int]) -> Optional[Gap]:
    if switch_ns is None:
        return None
    before = [a for a in arrivals if a.t_ns <= switch_ns]
    after = [a for a in arrivals if a.t_ns > switch_ns]
    if not before:
        return None
    a = before[-1]
    if not after:
        if stopped_ns is None or stopped_ns <= switch_ns:
            return None
        return Gap(round((stopped_ns - a.t_ns) / 1e6, 1), _rel(a.t_ns, switch_ns),
                   _rel(stopped_ns, switch_ns), a.seq, 0)
    b = after[0]
    guest = round((b.uptime - a.uptime) * 1000, 1) if min(a.uptime, b.uptime) >= 0 else None
    return Gap(round((b.t_ns - a.t_ns) / 1e6, 1), _rel(a.t_ns, switch_ns),
               _rel(b.t_ns, switch_ns), a.seq, b.seq, guest)


def _guest_gap(arrivals: Sequence[Arrival]) -> Tuple[float, int]:
    by_seq = {a.seq: a.uptime for a in arrivals if a.uptime >= 0}
    jumps = [((by_seq[s + 1] - by_seq[s]) * 1000, s) for s in by_seq if s + 1 in by_seq]
    ms, after = max(jumps, default=(0.0, 0))
    return round(ms, 1), after


def _rel(t_ns: int, switch_ns: Optional[int]) -> Optional[float]:
    return None if switch_ns is None else round((t_ns - switch_ns) / 1e9, 3)


def _when(rel_s: Optional[float]) -> str:
    if rel_s is None:
        return "an unknown time"
    if abs(rel_s) < 0.0005:
        return "the switch-over"
    side = "after" if rel_s > 0 else "before"
    return f"{abs(rel_s):.2f} s {side} the switch-over"


def _as_ranges(seqs: Sequence[int]) -> Tuple[Tuple[int, int], ...]:
    out: List[List[int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return tuple((a, b) for a, b in out)


def _ranges(ranges: Sequence[Tuple[int, int]], most: int = 8) -> str:
    words = [str(a) if a == b else f"{a}-{b}" for a, b in ranges[:most]]
    if len(ranges) > most:
        words.append(f"and {len(ranges) - most} more range(s)")
    return ", ".join(words)


__all__ = ["Arrival", "StreamReceiver", "EchoClient", "TcpRecord", "Gap", "StreamRecord",
           "analyse", "tcp_record", "DEFAULT_PATTERN"]
