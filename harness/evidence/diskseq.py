"""The guest's disk writes across a switch-over, verified in the image after teardown.

The Linux guest writes block ``seq=N`` every ``DISK_PERIOD_MS`` to its virtio-blk disk
(images/linux, ``dstart``/``dstop``/``dread``; the format is in layout.json and
docs/guest.md): write N goes to block ``first + (N-1) mod slots`` as ``block / line``
copies of one line carrying N and its checksum, O_DIRECT, each acknowledged before the
next. Here, on the host:

- :func:`prepare` fills the image before the source starts: a seeded pattern
  everywhere the guest never writes, zeros in the stream's blocks;
- :func:`verify` reads the image after both QEMUs are gone and judges every block
  against what the guest reported written (``dstop written=N``): a frozen
  :class:`DiskRecord` (found, lost, torn, reordered, blocks written beyond the guest's
  count, bytes changed where the guest never writes), :meth:`DiskRecord.describe` in
  plain words;
- :func:`image_locks` reads which of QEMU's image-lock bytes a process holds
  (``/proc/PID/fdinfo``), to say what image locking did to each side.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

#: Bytes of the pattern written per seed block (one sha256 chain per 4 KiB).
PATTERN_BLOCK = 4096
_LINE = re.compile(rb"^CPRDISK seq=([0-9]{10}) ck=([0-9]{10}) *\n$")


@dataclass(frozen=True)
class DiskLayout:
    """Where and how the guest writes (images/linux/layout.json DISK_*)."""
    first_block: int
    slots: int
    block: int
    line: int
    ck_mul: int
    ck_add: int
    #: (offset, size) byte ranges other commands may write (``wdisk``).
    other_writes: Tuple[Tuple[int, int], ...] = ()

    @classmethod
    def from_layout(cls, lay: Mapping[str, Any]) -> "DiskLayout":
        return cls(first_block=lay["DISK_FIRST_BLOCK"], slots=lay["DISK_SLOTS"],
                   block=lay["DISK_BLOCK"], line=lay["DISK_LINE"],
                   ck_mul=lay["DISK_CK_MUL"], ck_add=lay["DISK_CK_ADD"],
                   other_writes=tuple((w["offset"], w["size"])
                                      for w in lay.get("DISK_OTHER_WRITES", ())))

    @property
    def start(self) -> int:
        return self.first_block * self.block

    @property
    def end(self) -> int:
        return (self.first_block + self.slots) * self.block

    def block_of(self, seq: int) -> bytes:
        """What write ``seq`` puts on the disk."""
        text = b"CPRDISK seq=%010d ck=%010d" % (seq, (seq * self.ck_mul + self.ck_add)
                                                % 2 ** 32)
        return (text.ljust(self.line - 1) + b"\n") * (self.block // self.line)

    def expected_seq(self, slot: int, written: int) -> int:
        """The last write of ``slot`` among writes 1..written (0: none)."""
        if slot >= written:
            return 0
        return slot + 1 + self.slots * ((written - slot - 1) // self.slots)


def _pattern(seed: int, offset: int, size: int) -> bytes:
    """The seeded filler of [offset, offset+size), aligned to PATTERN_BLOCK."""
    out = bytearray()
    first = offset // PATTERN_BLOCK
    last = (offset + size + PATTERN_BLOCK - 1) // PATTERN_BLOCK
    for b in range(first, last):
        seed_b = hashlib.sha256(b"cprh-disk %d %d" % (seed, b)).digest()
        out += (seed_b * (PATTERN_BLOCK // len(seed_b)))
    skip = offset - first * PATTERN_BLOCK
    return bytes(out[skip:skip + size])


def prepare(path: str, layout: DiskLayout, seed: int, size: Optional[int] = None) -> None:
    """Fill the image: the seeded pattern outside the stream's blocks, zeros in them."""
    size = size if size is not None else os.path.getsize(path)
    if layout.end > size:
        raise ValueError(f"the disk stream ends at {layout.end} bytes, past the image's "
                         f"{size}")
    with open(path, "r+b") as f:
        f.truncate(size)
        for off in range(0, size, 1 << 20):
            n = min(1 << 20, size - off)
            chunk = bytearray(_pattern(seed, off, n))
            lo, hi = max(off, layout.start), min(off + n, layout.end)
            if lo < hi:
                chunk[lo - off:hi - off] = bytes(hi - lo)
            f.seek(off)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class DiskRecord:
    """The guest's disk stream as found in the image after teardown."""
    #: Blocks the guest reported written and acknowledged (``dstop written=N``).
    written: int
    #: The slots those writes fill (fewer than ``written`` once the stream wrapped).
    filled: int
    #: Slots holding the last write of theirs, intact.
    found: int
    #: Slots whose last acknowledged write is missing (the slot as before it).
    lost: int
    #: Slots holding no whole block (lines of two writes, a bad checksum, garbage).
    torn: int
    #: Slots holding an older write of theirs than the last acknowledged one: the older
    #: write landed after the newer (reordered) or the newer was dropped.
    reordered: int
    #: Slots holding a write the guest never reported (beyond ``written``).
    beyond: int
    #: Bytes changed where the guest never writes (outside the stream and its commands'
    #: ranges), and the first such offsets.
    changed_bytes: int
    changed_at: Tuple[int, ...]
    #: Per kind, the first few slots (for the report).
    examples: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()
    #: The guest's own read-back before teardown (``dread``: ok, lost, torn, stale), and
    #: its failed writes (``dstop errors=E``), when known.
    guest_read: Optional[Tuple[int, int, int, int]] = None
    write_errors: int = 0

    @property
    def intact(self) -> bool:
        return not (self.lost or self.torn or self.reordered or self.beyond
                    or self.changed_bytes or self.write_errors)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        head = (f"{self.written} block(s) written as the guest reported: {self.found} of "
                f"the {self.filled} block(s) they fill hold their last write")
        bad = [(n, word) for n, word in ((self.lost, "lost"), (self.torn, "torn"),
                                         (self.reordered, "reordered (an older write "
                                          "found)"),
                                         (self.beyond, "written beyond the guest's count"))
               if n]
        parts = [head + (", " + ", ".join(f"{n} {w}" for n, w in bad) if bad else
                         ", none lost, torn or reordered")]
        for kind, where in self.examples:
            parts.append(f"{kind}: block(s) {', '.join(map(str, where))} of the stream")
        if self.changed_bytes:
            at = ", ".join(f"{o:#x}" for o in self.changed_at)
            parts.append(f"{self.changed_bytes} byte(s) changed where the guest never "
                         f"writes (first at {at})")
        else:
            parts.append("nothing changed where the guest never writes")
        if self.write_errors:
            parts.append(f"the guest saw {self.write_errors} failed write(s)")
        if self.guest_read is not None:
            ok, lost, torn, stale = self.guest_read
            parts.append(f"the guest's own read-back: {ok} ok, {lost} lost, {torn} torn, "
                         f"{stale} stale")
        return "; ".join(parts)


def _judge_slot(layout: DiskLayout, slot: int, data: bytes, want: int) -> str:
    """One slot's block against the write it should hold (0: none) -> its kind: ok,
    empty (never written, as expected), lost, torn, reordered, beyond."""
    if data == bytes(len(data)):
        return "lost" if want else "empty"
    lines = {data[i:i + layout.line] for i in range(0, len(data), layout.line)}
    m = _LINE.match(next(iter(lines))) if len(lines) == 1 else None
    if m is None:
        return "torn"
    seq, ck = int(m[1]), int(m[2])
    if ck != (seq * layout.ck_mul + layout.ck_add) % 2 ** 32 or \
            data != layout.block_of(seq) or (seq - 1) % layout.slots != slot:
        return "torn"
    if want and seq == want:
        return "ok"
    if want and seq < want:
        return "reordered"
    return "beyond"


def _changed_outside(image: bytes, layout: DiskLayout, seed: int,
                     most: int = 5) -> Tuple[int, Tuple[int, ...]]:
    """Bytes differing from the pattern where the guest never writes."""
    keep = sorted([(layout.start, layout.end)] + [(o, o + s) for o, s in layout.other_writes])
    spans, pos = [], 0
    for lo, hi in keep:
        if lo > pos:
            spans.append((pos, lo))
        pos = max(pos, hi)
    if pos < len(image):
        spans.append((pos, len(image)))
    changed, first = 0, []
    for lo, hi in spans:
        want = _pattern(seed, lo, hi - lo)
        got = image[lo:hi]
        if got == want:
            continue
        for i in range(0, hi - lo, PATTERN_BLOCK):
            a, b = got[i:i + PATTERN_BLOCK], want[i:i + PATTERN_BLOCK]
            if a != b:
                diff = [j for j in range(len(a)) if a[j] != b[j]]
                changed += len(diff)
                if len(first) < most:
                    first.append(lo + i + diff[0])
    return changed, tuple(first)


def verify(path: str, layout: DiskLayout, written: int, seed: int,
           guest_read: Optional[Tuple[int, int, int, int]] = None,
           write_errors: int = 0, most: int = 5) -> DiskRecord:
    """Judge the image at ``path`` (both QEMUs gone) against ``written`` writes."""
    with open(path, "rb") as f:
        image = f.read()
    return judge(image, layout, written, seed, guest_read, write_errors, most)


def judge(image: bytes, layout: DiskLayout, written: int, seed: int,
          guest_read: Optional[Tuple[int, int, int, int]] = None,
          write_errors: int = 0, most: int = 5) -> DiskRecord:
    """Pure: :func:`verify` on the image's bytes."""
    kinds: Dict[str, List[int]] = {}
    for slot in range(layout.slots):
        at = layout.start + slot * layout.block
        kind = _judge_slot(layout, slot, image[at:at + layout.block],
                           layout.expected_seq(slot, written))
        kinds.setdefault(kind, []).append(slot)
    changed, changed_at = _changed_outside(image, layout, seed, most)
    examples = tuple((k, tuple(v[:most])) for k, v in sorted(kinds.items())
                     if k not in ("ok", "empty"))
    return DiskRecord(written=written, filled=min(written, layout.slots),
                      found=len(kinds.get("ok", ())),
                      lost=len(kinds.get("lost", ())),
                      torn=len(kinds.get("torn", ())),
                      reordered=len(kinds.get("reordered", ())),
                      beyond=len(kinds.get("beyond", ())), changed_bytes=changed,
                      changed_at=changed_at, examples=examples, guest_read=guest_read,
                      write_errors=write_errors)


# -- image locking ------------------------------------------------------------------------

#: QEMU's file-posix lock bytes: 100 + bit = "I use this permission", 200 + bit = "I do not
#: share it" (block/file-posix.c raw_apply_lock_bytes; bits from BlockPermission).
PERMISSIONS = ("consistent-read", "write", "write-unchanged", "resize", "graph-mod")
_LOCK = re.compile(r"^lock:\s+\d+:\s+(?P<kind>\S+)\s+\S+\s+(?P<mode>\S+)\s+\S+\s+\S+\s+"
                   r"(?P<start>\d+)\s+(?P<end>\d+|EOF)")


def image_locks(pid: int, image: str) -> Optional[Tuple[int, ...]]:
    """The lock bytes process ``pid`` holds on ``image`` (through any of its fds);
    None when it does not have the image open."""
    real = os.path.realpath(image)
    held: set = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    opened = False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != real:
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        opened = True
        for line in text.splitlines():
            m = _LOCK.match(line)
            if m and m["end"] != "EOF":
                held.update(range(int(m["start"]), int(m["end"]) + 1))
    return tuple(sorted(held)) if opened else None


def describe_locks(held: Optional[Sequence[int]]) -> str:
    """QEMU's lock bytes in words: what the process uses and what it does not share."""
    if held is None:
        return "does not have the image open"
    uses = [PERMISSIONS[b - 100] for b in held if 100 <= b < 100 + len(PERMISSIONS)]
    denies = [PERMISSIONS[b - 200] for b in held if 200 <= b < 200 + len(PERMISSIONS)]
    if not uses and not denies:
        return "has the image open and holds no lock on it"
    words = []
    if uses:
        words.append("uses " + ", ".join(uses))
    if denies:
        words.append("does not share " + ", ".join(denies))
    return "; ".join(words)
