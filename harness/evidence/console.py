"""The guest's console across a cpr-transfer: the heartbeat lines in the source's and
the target's serial files, and when each one arrived.

The bare-metal guests print ``hb <seq>`` every HEARTBEAT_MS of their own time (``seq``:
8 hex digits, 0 after each boot, +1 a line; layout.json's HEARTBEAT_REGEX, docs/guest.md).
The target's UART carries on where the source's stopped, so one line can begin in
``src.serial`` and end in ``dst.serial``: the analysis joins the source's unfinished last
line to the target's first piece. A reset shows as a new boot marker followed by a
sequence that starts again at 0.

* :func:`console_continuity` (pure): the bytes of both files and the size ``src.serial``
  had at the switch-over -> a frozen :class:`ConsoleContinuity`: the source's last
  number, the target's first and last, numbers lost, repeated, out of order, a reset,
  what the source printed after the switch-over.
* :class:`harness.evidence.console_tail.ConsoleTail`: a child process that reads both
  files about every millisecond while a transfer and its window run and stamps each new
  heartbeat line with the host's ``time.monotonic_ns``; its ``gap()`` is the console's
  silence across the switch-over.

Whose clock: the guest's clock (the TSC under KVM and TCG, CNTVCT on aarch64) does not
run while the VM is stopped (KVM restores the TSC on the target; TCG's ticks and the
virtual counter stop with the VM), so its next line is due one period after the last in
*guest* time. The host therefore sees a gap of about one period plus the pause; only the
host can measure the pause, never the guest.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Pattern, Sequence, Tuple

from harness.core.errors import UsageError

if TYPE_CHECKING:      # the console tail's child imports this module: it stays light
    from harness.guest.images import GuestImage

HEARTBEAT, BOOT, OTHER = "heartbeat", "boot", "other"
SRC, DST = "source", "target"
#: Longest list of numbers a record keeps (its counts are always whole).
MAX_LISTED = 16
#: Heartbeats the guest may have printed that the file does not show yet: the one whose
#: characters are going out while the work area is read, and the next.
UNSEEN_SLACK = 2
_EXAMPLE_CHARS = 60


@dataclass(frozen=True)
class ConsoleFormat:
    """How a guest's console lines look: the heartbeat regex (applied to one line
    without its newline; group ``seq`` holds the number in hex), the boot marker line,
    and the nominal period."""
    heartbeat_regex: str
    boot_marker: str
    period_ms: int

    def __post_init__(self) -> None:
        pattern = _compile(self.heartbeat_regex)
        if "seq" not in pattern.groupindex:
            raise UsageError(f"heartbeat regex '{self.heartbeat_regex}' has no group 'seq'")
        if self.period_ms <= 0:
            raise UsageError(f"heartbeat period {self.period_ms} ms must be positive")

    @classmethod
    def of(cls, image: "GuestImage") -> "ConsoleFormat":
        """The format of ``image``'s console (its layout.json)."""
        if not image.heartbeat_regex or image.heartbeat_period_ms <= 0:
            raise UsageError(f"guest {image.name} prints no console heartbeat")
        return cls(image.heartbeat_regex, image.boot_marker, image.heartbeat_period_ms)

    @property
    def pattern(self) -> Pattern[bytes]:
        return _compile(self.heartbeat_regex)


@lru_cache(maxsize=16)
def _compile(regex: str) -> Pattern[bytes]:
    try:
        return re.compile(regex.encode("ascii"))
    except (re.error, UnicodeEncodeError) as exc:
        raise UsageError(f"heartbeat regex '{regex}' does not compile: {exc}") from None


@dataclass(frozen=True)
class ConsoleLine:
    """One complete line: a heartbeat (``seq``), a boot marker, or something else
    (``text``: printable, at most 60 characters)."""
    kind: str
    seq: int = -1
    text: str = ""


def classify(line: bytes, fmt: ConsoleFormat) -> ConsoleLine:
    """What ``line`` (without its newline; a trailing CR is ignored) is."""
    line = line[:-1] if line.endswith(b"\r") else line
    m = fmt.pattern.fullmatch(line)
    if m:
        return ConsoleLine(HEARTBEAT, seq=int(m.group("seq"), 16))
    if line == fmt.boot_marker.encode("ascii", "replace"):
        return ConsoleLine(BOOT)
    return ConsoleLine(OTHER, text=printable(line))


def printable(data: bytes) -> str:
    """``data`` as plain text a user can read: non-printable bytes as ``\\xNN``."""
    text = "".join(chr(b) if 32 <= b < 127 else f"\\x{b:02x}" for b in data)
    return text if len(text) <= _EXAMPLE_CHARS else text[:_EXAMPLE_CHARS - 3] + "..."


def split_lines(data: bytes) -> Tuple[List[bytes], bytes]:
    """The complete lines of ``data`` (without their newlines) and the unfinished rest."""
    *lines, rest = data.split(b"\n")
    return lines, rest


# --------------------------------------------------------------------------- continuity

@dataclass(frozen=True)
class ConsoleContinuity:
    """The console across one switch-over. Sequence numbers are the guest's (printed
    in hex on the console); ``None`` where a side printed no heartbeat. The target's
    numbers include a line the source began and the target finished (``cut``)."""
    src_heartbeats: int
    src_first: Optional[int]
    src_last: Optional[int]
    dst_heartbeats: int
    dst_first: Optional[int]
    dst_last: Optional[int]
    cut: bool
    cut_seq: Optional[int]
    lost: Tuple[Tuple[int, int], ...]
    lost_count: int
    repeated: Tuple[int, ...]
    repeated_count: int
    out_of_order: Tuple[int, ...]
    out_of_order_count: int
    reset: bool
    reset_side: str
    garbled: int
    garbled_example: str
    switch_offset: Optional[int]
    src_bytes_after_switch: int
    src_heartbeats_after_switch: Tuple[int, ...]
    dst_unfinished_bytes: int
    #: The guest's own heartbeat count (its work area) read just before the files at the
    #: window's end, through the QEMU that runs it; None: not read.
    guest_heartbeats: Optional[int] = None

    @property
    def unseen(self) -> Optional[int]:
        """How many heartbeats the guest had printed that no console file shows (its
        last printed is ``guest_heartbeats - 1``); None where unknown. A console that
        stopped reaching the host after the switch-over (the target's back-end
        silenced, a dead UART) shows here: the sequence itself has no hole."""
        if self.guest_heartbeats is None:
            return None
        seen = self.dst_last if self.dst_last is not None else self.src_last
        return max(0, self.guest_heartbeats - 1 - (seen if seen is not None else -1))

    @property
    def continues(self) -> bool:
        """The target's first heartbeat is the one after the source's last, same boot."""
        return (self.src_last is not None and self.dst_first is not None
                and self.dst_first == self.src_last + 1 and not self.reset)

    @property
    def unbroken(self) -> bool:
        """Continues, nothing lost, repeated, out of order or garbled, no reset, and the
        source silent after the switch-over."""
        return (self.continues and not self.lost_count and not self.repeated_count
                and not self.out_of_order_count and not self.garbled
                and not self.src_bytes_after_switch
                and (self.unseen or 0) <= UNSEEN_SLACK)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["lost"] = [list(r) for r in self.lost]
        d.update(continues=self.continues, unbroken=self.unbroken, unseen=self.unseen)
        return d

    def describe(self) -> str:
        """A few plain words: what each side printed, then what is wrong, if anything."""
        parts = [_side_words("source", self.src_heartbeats, self.src_first, self.src_last),
                 _side_words("target", self.dst_heartbeats, self.dst_first, self.dst_last)]
        if self.cut:
            parts.append(f"line {self.cut_seq} began on the source and ended on the target"
                         if self.cut_seq is not None else
                         "the source's last line was cut and the target did not finish "
                         "it as a heartbeat")
        faults = _fault_words(self)
        if faults:
            parts += faults
        elif self.continues:
            parts.append("the target continued the source's sequence, nothing lost, "
                         "repeated or out of order")
        if self.switch_offset is not None:
            parts.append(_after_words(self.src_bytes_after_switch,
                                      self.src_heartbeats_after_switch))
        if self.guest_heartbeats is not None and (self.unseen or 0) <= UNSEEN_SLACK:
            parts.append(f"the guest's own count at the end {self.guest_heartbeats}: "
                         "its console shows them")
        return "; ".join(parts)


def _side_words(side: str, count: int, first: Optional[int], last: Optional[int]) -> str:
    if not count or first is None or last is None:
        return f"the {side} printed no heartbeat"
    lines = f"{count} line{'s' if count != 1 else ''}"
    if last < first:
        return f"{side} heartbeats: {lines}, the first {first}, the last {last}"
    return f"{side} heartbeats {first}..{last} ({lines})"


def _numbers(values: Sequence[int], count: int) -> str:
    text = ", ".join(str(v) for v in values)
    return text + (f" and {count - len(values)} more" if count > len(values) else "")


def _fault_words(c: ConsoleContinuity) -> List[str]:
    out = []
    if c.reset:
        out.append(f"the {c.reset_side} rebooted: a new boot marker, the sequence "
                   "started again at 0")
    if (c.src_last is not None and c.dst_first is not None and not c.reset
            and c.dst_first != c.src_last + 1):
        out.append(f"the target began at {c.dst_first} after the source's {c.src_last}")
    if c.lost_count:
        ranges = [f"{a}" if a == b else f"{a}..{b}" for a, b in c.lost]
        out.append(f"lost {c.lost_count}: {_numbers(ranges, len(ranges))}"
                   + (" and more" if len(c.lost) == MAX_LISTED else ""))
    if c.repeated_count:
        out.append(f"repeated {c.repeated_count}: {_numbers(c.repeated, c.repeated_count)}")
    if c.out_of_order_count:
        out.append(f"out of order {c.out_of_order_count}: "
                   f"{_numbers(c.out_of_order, c.out_of_order_count)}")
    if c.garbled:
        out.append(f"{c.garbled} line(s) neither heartbeat nor boot marker, "
                   f"e.g. '{c.garbled_example}'")
    if (c.unseen or 0) > UNSEEN_SLACK:
        assert c.guest_heartbeats is not None
        out.append(f"the guest had printed up to heartbeat {c.guest_heartbeats - 1}: "
                   f"{c.unseen} never reached the console file")
    return out


def _after_words(n: int, seqs: Tuple[int, ...]) -> str:
    if not n:
        return "the source printed nothing after the switch-over"
    hb = f" (heartbeats {_numbers(seqs[:MAX_LISTED], len(seqs))})" if seqs else ""
    return f"the source printed {n} byte(s) after the switch-over{hb}"


def console_continuity(fmt: ConsoleFormat, src: bytes, dst: bytes,
                       switch_offset: Optional[int] = None,
                       guest_heartbeats: Optional[int] = None) -> ConsoleContinuity:
    """The console across a switch-over, from the bytes of ``src.serial`` and
    ``dst.serial``.

    ``switch_offset``: the size ``src.serial`` had at the switch-over, taken once the
    source is known stopped (postmigrate); bytes past it are the source printing after
    the switch-over, reported apart and left out of the sequence. ``None``: all of
    ``src`` is before the switch-over and nothing is said about after it.
    ``guest_heartbeats``: the guest's own count, read just before the files
    (:attr:`ConsoleContinuity.unseen`).
    """
    if switch_offset is not None and not 0 <= switch_offset <= len(src):
        raise UsageError(f"switch-over offset {switch_offset} is outside the source's "
                         f"{len(src)} bytes of console")
    cut_at = len(src) if switch_offset is None else switch_offset
    src_lines, src_rest = split_lines(src[:cut_at])
    events = [(SRC, classify(line, fmt)) for line in src_lines]
    joined, dst_rest, cut_line = _join_cut(fmt, src_rest, dst)
    events += joined
    dst_lines, dst_unfinished = split_lines(dst_rest)
    events += [(DST, classify(line, fmt)) for line in dst_lines]
    after_lines = split_lines(src[cut_at:])[0]
    after = tuple(c.seq for c in (classify(x, fmt) for x in after_lines) if c.kind == HEARTBEAT)
    return replace(_analyse(events, bool(src_rest), cut_line, switch_offset,
                            len(src) - cut_at, after, len(dst_unfinished)),
                   guest_heartbeats=guest_heartbeats)


Events = List[Tuple[str, ConsoleLine]]


def _join_cut(fmt: ConsoleFormat, src_rest: bytes,
              dst: bytes) -> Tuple[Events, bytes, Optional[ConsoleLine]]:
    """The line the source left unfinished (``src_rest``), completed by the target's
    first piece: the events it makes, the target's bytes after that piece, and the cut
    line when it was finished as a heartbeat or boot marker.

    A joined line that is neither while the target's piece alone is one: the source's
    fragment was garbage, and the piece is a line of its own. A target that has not
    finished any line: no event (the fragment may still be completed)."""
    nl = dst.find(b"\n")
    if not src_rest or nl < 0:
        return [], dst, None
    joined, alone = classify(src_rest + dst[:nl], fmt), classify(dst[:nl], fmt)
    if joined.kind == OTHER and alone.kind != OTHER:
        return [(SRC, ConsoleLine(OTHER, text=printable(src_rest))), (DST, alone)], \
            dst[nl + 1:], None
    return [(DST, joined)], dst[nl + 1:], joined if joined.kind != OTHER else None


def _analyse(events: Events, cut: bool, cut_line: Optional[ConsoleLine],
             switch_offset: Optional[int], after_bytes: int, after_seqs: Tuple[int, ...],
             dst_unfinished: int) -> ConsoleContinuity:
    """The record, from the console's lines in order (each with the side that ended it)."""
    segments: List[List[int]] = [[]]
    reset_side, garbled, example = "", 0, ""
    for i, (side, line) in enumerate(events):
        if line.kind == BOOT:
            if i > 0 and not reset_side:
                reset_side = side
            segments.append([])
        elif line.kind == OTHER:
            garbled, example = garbled + 1, example or line.text
        else:
            segments[-1].append(line.seq)
    lost: List[Tuple[int, int]] = []
    repeated: List[int] = []
    disorder: List[int] = []
    for seg in segments:
        if seg:
            seg_lost, seg_rep, seg_dis = segment_faults(seg)
            lost, repeated, disorder = lost + seg_lost, repeated + seg_rep, disorder + seg_dis
    src = [ln.seq for side, ln in events if side == SRC and ln.kind == HEARTBEAT]
    dst = [ln.seq for side, ln in events if side == DST and ln.kind == HEARTBEAT]
    return ConsoleContinuity(
        src_heartbeats=len(src), src_first=src[0] if src else None,
        src_last=src[-1] if src else None, dst_heartbeats=len(dst),
        dst_first=dst[0] if dst else None, dst_last=dst[-1] if dst else None,
        cut=cut, cut_seq=cut_line.seq if cut_line and cut_line.kind == HEARTBEAT else None,
        lost=tuple(lost[:MAX_LISTED]), lost_count=sum(b - a + 1 for a, b in lost),
        repeated=tuple(repeated[:MAX_LISTED]), repeated_count=len(repeated),
        out_of_order=tuple(disorder[:MAX_LISTED]), out_of_order_count=len(disorder),
        reset=bool(reset_side), reset_side=reset_side, garbled=garbled,
        garbled_example=example, switch_offset=switch_offset,
        src_bytes_after_switch=after_bytes, src_heartbeats_after_switch=after_seqs,
        dst_unfinished_bytes=dst_unfinished)


def segment_faults(seqs: Sequence[int]) -> Tuple[List[Tuple[int, int]], List[int], List[int]]:
    """Within one boot's heartbeats in console order: the numbers never printed between
    the first and the highest (inclusive ranges), the numbers printed again, and the
    numbers printed after a higher one (not repeats)."""
    seen: set = set()
    top: Optional[int] = None
    repeated: List[int] = []
    disorder: List[int] = []
    for s in seqs:
        if s in seen:
            repeated.append(s)
            continue
        if top is not None and s < top:
            disorder.append(s)
        seen.add(s)
        top = s if top is None else max(top, s)
    ordered = sorted(x for x in seen if x >= seqs[0])
    lost = [(a + 1, b - 1) for a, b in zip(ordered, ordered[1:]) if b > a + 1]
    return lost, repeated, disorder


def serial_bytes(path: str) -> bytes:
    """The bytes of a serial file; empty when it does not exist (a QEMU never started)."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def serial_size(path: str) -> int:
    """The size of a serial file now (0 when it does not exist): at the switch-over,
    once the source is stopped, this is the offset for :func:`console_continuity`."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def write_position(pid: int, path: str) -> Optional[int]:
    """How far QEMU ``pid`` has written into the file ``path``: the position of its fd
    on it (/proc/PID/fdinfo). Unlike the file's size it moves only with this process's
    own writes, also where both QEMUs write one console file (a user's "same
    arguments"; with ``append=on`` each write moves it to the end). None: no fd of
    ``pid`` is open on ``path``."""
    try:
        real = os.path.realpath(path)
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != real:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("pos:"):
                        return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return None


def heartbeat_format(image: "GuestImage") -> Optional[ConsoleFormat]:
    """The console format of a guest that prints heartbeats; None for one that does not
    (the Linux guest prints a status line a second instead)."""
    if not getattr(image, "heartbeat_period_ms", 0) or not getattr(image, "heartbeat_regex", ""):
        return None
    return ConsoleFormat.of(image)
