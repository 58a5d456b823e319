"""Guest RAM seen from the host, through the memory backend's file.

cpr-transfer keeps guest RAM in place: source and target QEMU map the same
memory-backend file (a memfd, or a ``share=on`` file on /dev/shm). The harness
reaches that file from the outside by re-opening ``/proc/<qemu pid>/fd/<n>`` and
mapping it ``MAP_SHARED``, which gives it three kinds of in-place evidence
(DESIGN.md, "In-place RAM"):

* :func:`compare_mappings`: both processes map the same inode (evidence 1);
* :func:`fill_pattern` / :func:`verify_pattern`: every byte of guest RAM outside the
  guest's work area keeps a seeded, per-page-distinct pattern (evidence 3);
* :class:`GuestRam` reads the guest's work area: magic, progress counter, boots
  (evidence 4); :mod:`harness.sampler` samples the counter for the pause (evidence 5).

Offsets in the backend file are not guest-physical addresses on x86: RAM above the
PCI hole is mapped at 4 GiB. :class:`RamLayout` does that translation; reports always
name guest-physical addresses.

Reading another process's ``/proc/<pid>/fd`` needs ptrace read access to it (root,
or the same uid). Multi-byte values are read with native-size loads (``struct``
native mode copies 8 bytes at once), which assumes a little-endian host, like the
x86 and aarch64 guests it reads.
"""
from __future__ import annotations

import mmap
import os
import re
import stat
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from typing import (Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, TypeVar, Union)

import numpy as np

from harness.errors import HarnessError, UsageError

PAGE_SIZE = 4096
GiB = 1 << 30
FOUR_GIB = 1 << 32

# Pattern chunk: small enough that the expected-pattern scratch buffer stays in the
# CPU cache (measured: 4 MiB verifies ~3x faster than 64 MiB), large enough that
# Python's per-chunk overhead does not show.
DEFAULT_CHUNK = 4 << 20
DEFAULT_MAX_LISTED = 64

# Threads for fill/verify: numpy releases the GIL. Keep it at the 2 cores the
# harness is sized for; the sampler is not running while the pattern is handled.
DEFAULT_WORKERS = 2

# Loads: struct's native mode copies the value with one load, so a concurrent store by
# the guest is never seen half done. Stores go through a native memoryview item, which
# is one store too; struct.pack_into would zero the bytes first (a reader could see 0).
_U32 = struct.Struct("I")
_U64 = struct.Struct("Q")


def _store(mm: mmap.mmap, offset: int, fmt: str, width: int, value: int) -> None:
    with memoryview(mm) as whole, whole[offset:offset + width] as part, \
            part.cast(fmt) as item:
        item[0] = value


# --------------------------------------------------------------------------- errors

class RamError(HarnessError):
    """Guest RAM could not be found, opened or read as asked."""


class RamFdNotFound(RamError):
    """No fd of the process, or more than one distinct file, can be guest RAM."""

    def __init__(self, pid: int, size: int, hint: Optional[str], reason: str,
                 candidates: Sequence[Tuple[int, str, int]]):
        self.pid = pid
        self.size = size
        self.hint = hint
        self.reason = reason
        self.candidates = list(candidates)
        hint_txt = f", hint {hint!r}" if hint else ""
        if reason == "ambiguous":
            head = (f"pid {pid}: {len(self.candidates)} fds of distinct files have the "
                    f"guest RAM size {size} ({_human(size)}){hint_txt}; cannot tell which "
                    f"backs guest RAM, pass a more specific hint")
        else:
            head = (f"pid {pid}: no open regular file of {size} bytes ({_human(size)}) "
                    f"backs guest RAM{hint_txt}; is the RAM a memory-backend-memfd or a "
                    f"share=on memory-backend-file, and is the size right?")
        shown = self.candidates[:20]
        lines = [f"  fd {fd} -> {link} ({sz} bytes)" for fd, link, sz in shown]
        if len(self.candidates) > len(shown):
            lines.append(f"  ... and {len(self.candidates) - len(shown)} more")
        what = "candidates" if reason == "ambiguous" else "regular files open"
        body = "\n".join(lines) if lines else "  (none)"
        super().__init__(f"{head}\n{what}:\n{body}")


class RamLayoutError(RamError):
    """A machine type, guest-physical address or backend offset outside the rules."""


# --------------------------------------------------------------------------- work area

@dataclass(frozen=True)
class WorkArea:
    """Where the guest keeps its state: the only guest RAM the guest writes.

    Offsets are relative to ``base`` (a guest-physical address). The defaults are the
    bare-metal guest's layout; :meth:`from_mapping` takes the image's layout.json.
    """
    base: int = 0x10000
    size: int = 0x1000
    magic_offset: int = 0x0
    magic: int = 0x47525043
    version_offset: int = 0x4
    counter_offset: int = 0x8
    boots_offset: int = 0x10
    heartbeats_offset: int = 0x14

    def __post_init__(self) -> None:
        if self.base < 0 or self.size <= 0:
            raise UsageError(f"work area: bad base/size {self.base:#x}/{self.size:#x}")
        for name, width in (("magic_offset", 4), ("version_offset", 4),
                            ("counter_offset", 8), ("boots_offset", 4),
                            ("heartbeats_offset", 4)):
            off = getattr(self, name)
            if off < 0 or off + width > self.size or off % width:
                raise UsageError(f"work area: {name}={off:#x} must be {width}-byte "
                                 f"aligned and inside the {self.size:#x}-byte area")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> "WorkArea":
        """Build from a dict such as the guest image's layout.json.

        Keys are the field names; values are ints or strings in any base ("0x10000").
        Keys that are not fields are ignored, so the file can carry more than this.
        """
        kwargs = {}
        for f in fields(cls):
            if f.name in data:
                value = data[f.name]
                try:
                    kwargs[f.name] = int(value, 0) if isinstance(value, str) else int(value)
                except (TypeError, ValueError):
                    raise UsageError(f"work area: {f.name}={value!r} is not an integer") from None
        return cls(**kwargs)

    @property
    def end(self) -> int:
        return self.base + self.size

    @property
    def counter_gpa(self) -> int:
        return self.base + self.counter_offset

    @property
    def exclude(self) -> Tuple[Tuple[int, int], ...]:
        """The guest-physical range the pattern must leave alone (the guest writes it)."""
        return ((self.base, self.end),)


@dataclass(frozen=True)
class WorkSnapshot:
    """The work area's fields, read once."""
    magic: int
    version: int
    counter: int
    boots: int
    heartbeats: int
    magic_ok: bool


# --------------------------------------------------------------------------- layout

class RamRegion(NamedTuple):
    """A stretch of guest RAM: guest-physical start, offset in the backend, length."""
    gpa: int
    offset: int
    size: int


@dataclass(frozen=True)
class RamLayout:
    """Where each byte of the backend file appears in guest-physical space."""
    machine: str
    ram_size: int
    regions: Tuple[RamRegion, ...]

    def gpa_of_offset(self, offset: int) -> int:
        for r in self.regions:
            if r.offset <= offset < r.offset + r.size:
                return r.gpa + (offset - r.offset)
        raise RamLayoutError(f"offset {offset:#x} is outside guest RAM "
                             f"({self.ram_size:#x} bytes, machine {self.machine})")

    def offset_of_gpa(self, gpa: int, length: int = 1) -> int:
        """Backend offset of ``gpa``; ``[gpa, gpa+length)`` must be RAM in one piece."""
        for r in self.regions:
            if r.gpa <= gpa and gpa + length <= r.gpa + r.size:
                return r.offset + (gpa - r.gpa)
        raise RamLayoutError(
            f"guest-physical {gpa:#x}+{length:#x} is not RAM on machine {self.machine} "
            f"with {self.ram_size:#x} bytes of RAM (RAM: {self._describe_regions()})")

    def offset_ranges(self, gpa_start: int, gpa_end: int) -> List[Tuple[int, int]]:
        """The backend offset ranges of the RAM inside ``[gpa_start, gpa_end)``."""
        out = []
        for r in self.regions:
            lo, hi = max(gpa_start, r.gpa), min(gpa_end, r.gpa + r.size)
            if lo < hi:
                out.append((r.offset + lo - r.gpa, r.offset + hi - r.gpa))
        return out

    def _describe_regions(self) -> str:
        return ", ".join(f"{r.gpa:#x}..{r.gpa + r.size:#x}" for r in self.regions)


# Machine families. Sources (QEMU 10.0):
#  - hw/i386/pc_q35.c, pc_q35_init(): lowmem = 0x80000000 if ram_size >= 0xb0000000
#    else 0xb0000000 (room for the PCI hole and MMCFG), then min(lowmem,
#    max-ram-below-4g), below_4g = min(ram_size, lowmem).
#  - hw/i386/pc_piix.c, pc_init1(): lowmem = max-ram-below-4g (default 0xe0000000);
#    if ram_size >= it, lowmem is cut to 0xc0000000 ("gigabyte_align", true for every
#    machine type 10.0 still has); below_4g = min(ram_size, lowmem).
#  - hw/i386/pc.c, pc_memory_init(): "ram-below-4g" aliases machine RAM offset 0 at
#    GPA 0; "ram-above-4g" aliases offset below_4g at GPA 4 GiB. (The AMD 1 TiB
#    HyperTransport relocation only applies above ~1 TiB of RAM; not handled.)
#  - hw/arm/virt.c: machine RAM is one region at memmap[VIRT_MEM].base = 1 GiB.
_Q35 = re.compile(r"^(q35|pc-q35(-\d+(\.\d+)*)?)$")
_PC = re.compile(r"^(pc|pc-i440fx(-\d+(\.\d+)*)?)$")
_VIRT = re.compile(r"^virt(-\d+(\.\d+)*)?$")


def machine_family(machine: Optional[str]) -> str:
    """"q35", "pc", "virt" or "flat" (no machine: offset == GPA) for a -machine value."""
    if machine is None:
        return "flat"
    name = machine.split(",", 1)[0].strip()
    for family, rx in (("q35", _Q35), ("pc", _PC), ("virt", _VIRT)):
        if rx.match(name):
            return family
    raise RamLayoutError(
        f"machine {machine!r}: guest-physical layout unknown; accepted: q35, "
        f"pc-q35-X.Y, pc, pc-i440fx-X.Y, virt, virt-X.Y")


def ram_layout(machine: Optional[str], ram_size: int,
               max_ram_below_4g: Optional[int] = None) -> RamLayout:
    """The guest-physical layout of ``ram_size`` bytes of machine RAM.

    ``max_ram_below_4g`` is the ``-machine max-ram-below-4g=`` property, if set.
    """
    if ram_size <= 0:
        raise RamLayoutError(f"ram size {ram_size} must be positive")
    family = machine_family(machine)
    name = machine or "flat"
    if family == "flat":
        return RamLayout(name, ram_size, (RamRegion(0, 0, ram_size),))
    if family == "virt":
        return RamLayout(name, ram_size, (RamRegion(GiB, 0, ram_size),))
    if family == "q35":
        lowmem = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
        limit = FOUR_GIB if max_ram_below_4g is None else max_ram_below_4g
        lowmem = min(lowmem, limit)
    else:  # pc (i440fx)
        lowmem = 0xE0000000 if max_ram_below_4g is None else max_ram_below_4g
        if ram_size >= lowmem and lowmem > 0xC0000000:
            lowmem = 0xC0000000
    below = min(ram_size, lowmem)
    regions = [RamRegion(0, 0, below)]
    if ram_size > below:
        regions.append(RamRegion(FOUR_GIB, below, ram_size - below))
    return RamLayout(name, ram_size, tuple(regions))


def gpa_of_offset(offset: int, machine: Optional[str], ram_size: int) -> int:
    """Guest-physical address of byte ``offset`` of the RAM backend (see :func:`ram_layout`)."""
    return ram_layout(machine, ram_size).gpa_of_offset(offset)


def offset_of_gpa(gpa: int, machine: Optional[str], ram_size: int) -> int:
    """Backend offset of guest-physical ``gpa``; raises for the PCI hole and beyond RAM."""
    return ram_layout(machine, ram_size).offset_of_gpa(gpa)


# --------------------------------------------------------------------------- finding the fd

@dataclass(frozen=True)
class RamFd:
    """One fd of a process that refers to the guest RAM backend file."""
    pid: int
    fd: int
    link: str
    inode: int
    dev: int
    size: int

    @property
    def path(self) -> str:
        """A path that re-opens the same file (works for memfds too)."""
        return f"/proc/{self.pid}/fd/{self.fd}"


class Region(NamedTuple):
    """One mapping of a file in a process: virtual start, end, file offset."""
    start: int
    end: int
    offset: int


class _MapsLine(NamedTuple):
    start: int
    end: int
    offset: int
    dev: Tuple[int, int]
    inode: int


def _read_maps(pid: int) -> List[_MapsLine]:
    path = f"/proc/{pid}/maps"
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise RamError(f"pid {pid}: no such process ({path} missing)") from None
    except PermissionError:
        raise RamError(f"pid {pid}: cannot read {path}: permission denied "
                       f"(needs root or ptrace access)") from None
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        major, minor = (int(x, 16) for x in parts[3].split(":"))
        out.append(_MapsLine(start, end, int(parts[2], 16), (major, minor), int(parts[4])))
    return out


def mapped_regions(pid: int, inode: int, dev: Optional[int] = None) -> List[Region]:
    """The mappings of file ``inode`` (on device ``dev``, if given) in process ``pid``.

    Evidence that the process maps guest RAM, and at which virtual addresses.
    """
    want_dev = None if dev is None else (os.major(dev), os.minor(dev))
    return [Region(m.start, m.end, m.offset) for m in _read_maps(pid)
            if m.inode == inode and (want_dev is None or m.dev == want_dev)]


class _FdEntry(NamedTuple):
    fd: int
    link: str
    st: os.stat_result


def _regular_fds(pid: int) -> Iterator[_FdEntry]:
    d = f"/proc/{pid}/fd"
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        raise RamError(f"pid {pid}: no such process ({d} missing)") from None
    except PermissionError:
        raise RamError(f"pid {pid}: cannot list {d}: permission denied; reaching another "
                       f"process's guest RAM needs root (or the same uid)") from None
    for name in sorted(names, key=int):
        path = f"{d}/{name}"
        try:
            link = os.readlink(path)
            st = os.stat(path)
        except OSError:
            continue  # closed meanwhile, or not stat-able: not our RAM
        if stat.S_ISREG(st.st_mode):
            yield _FdEntry(int(name), link, st)


def find_ram_fd(pid: int, size: int, hint: Optional[str] = None) -> RamFd:
    """Find the fd of process ``pid`` whose file backs guest RAM of ``size`` bytes.

    Candidates are the regular files (memfds included) of exactly ``size`` bytes.
    Among several, those whose link contains ``hint`` win (e.g.
    "memory-backend-memfd", or the backend's file path), then those the process maps.
    Several fds of one file (QEMU may hold duplicates) are one answer: the lowest fd.
    """
    regular = list(_regular_fds(pid))
    pool = [e for e in regular if e.st.st_size == size]
    if not pool:
        raise RamFdNotFound(pid, size, hint, "none",
                            [(e.fd, e.link, e.st.st_size) for e in regular])
    if hint:
        hinted = [e for e in pool if hint in e.link]
        pool = hinted or pool

    def distinct(entries: Sequence[_FdEntry]) -> int:
        return len({(e.st.st_dev, e.st.st_ino) for e in entries})

    if distinct(pool) > 1:
        mapped = {(m.dev, m.inode) for m in _read_maps(pid)}
        in_maps = [e for e in pool
                   if ((os.major(e.st.st_dev), os.minor(e.st.st_dev)), e.st.st_ino) in mapped]
        pool = in_maps or pool
    if distinct(pool) > 1:
        raise RamFdNotFound(pid, size, hint, "ambiguous",
                            [(e.fd, e.link, e.st.st_size) for e in pool])
    e = pool[0]
    return RamFd(pid=pid, fd=e.fd, link=e.link, inode=e.st.st_ino, dev=e.st.st_dev,
                 size=e.st.st_size)


# --------------------------------------------------------------------------- same memfd

@dataclass(frozen=True)
class SameMemfdEvidence:
    """Evidence 1: source and target map one and the same RAM file.

    Different virtual addresses are expected; only the file identity matters.
    """
    size: int
    src_pid: int
    src_fd: int
    src_link: str
    src_inode: int
    src_dev: int
    src_regions: Tuple[Region, ...]
    dst_pid: int
    dst_fd: int
    dst_link: str
    dst_inode: int
    dst_dev: int
    dst_regions: Tuple[Region, ...]

    @property
    def same_file(self) -> bool:
        return (self.src_dev, self.src_inode) == (self.dst_dev, self.dst_inode)

    @property
    def same(self) -> bool:
        """One file, and both processes map it."""
        return self.same_file and bool(self.src_regions) and bool(self.dst_regions)

    def describe(self) -> str:
        def side(name: str, pid: int, link: str, dev: int, ino: int,
                 regions: Sequence[Region]) -> str:
            where = ", ".join(f"{r.start:#x}-{r.end:#x}" for r in regions) or "not mapped"
            return (f"{name} pid {pid}: {link} (dev {os.major(dev)}:{os.minor(dev)} "
                    f"inode {ino}) at {where}")
        verdict = "same RAM file" if self.same else (
            "same file but not mapped by both" if self.same_file else "DIFFERENT RAM files")
        return "; ".join([verdict,
                          side("src", self.src_pid, self.src_link, self.src_dev,
                               self.src_inode, self.src_regions),
                          side("dst", self.dst_pid, self.dst_link, self.dst_dev,
                               self.dst_inode, self.dst_regions)])

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["src_regions"] = [list(r) for r in self.src_regions]
        d["dst_regions"] = [list(r) for r in self.dst_regions]
        d["same_file"] = self.same_file
        d["same"] = self.same
        return d


def compare_mappings(src_pid: int, dst_pid: int, size: int,
                     hint: Optional[str] = None) -> SameMemfdEvidence:
    """Find the RAM file in both processes and where each maps it."""
    src = find_ram_fd(src_pid, size, hint)
    dst = find_ram_fd(dst_pid, size, hint)
    return SameMemfdEvidence(
        size=size,
        src_pid=src.pid, src_fd=src.fd, src_link=src.link, src_inode=src.inode,
        src_dev=src.dev, src_regions=tuple(mapped_regions(src.pid, src.inode, src.dev)),
        dst_pid=dst.pid, dst_fd=dst.fd, dst_link=dst.link, dst_inode=dst.inode,
        dst_dev=dst.dev, dst_regions=tuple(mapped_regions(dst.pid, dst.inode, dst.dev)))


# --------------------------------------------------------------------------- guest RAM

class GuestRam:
    """A ``MAP_SHARED`` mapping of the whole RAM backend file; a context manager.

    Addresses given to the read/write methods are guest-physical, translated by
    :attr:`layout`. Use :func:`open_ram` to make one.
    """

    def __init__(self, path: str, writable: bool = False, *,
                 machine: Optional[str] = None, work: WorkArea = WorkArea(),
                 max_ram_below_4g: Optional[int] = None):
        self.path = path
        self.writable = writable
        self.work = work
        try:
            fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        except OSError as e:
            raise RamError(f"cannot open guest RAM {path} "
                           f"({'read-write' if writable else 'read-only'}): {e}") from None
        try:
            self.size = os.fstat(fd).st_size
            if self.size <= 0 or self.size % PAGE_SIZE:
                raise RamError(f"guest RAM {path}: size {self.size} is not a positive "
                               f"multiple of the {PAGE_SIZE}-byte page")
            self.layout = ram_layout(machine, self.size, max_ram_below_4g)
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self._mm: Optional[mmap.mmap] = mmap.mmap(fd, self.size, mmap.MAP_SHARED, prot)
        except OSError as e:
            raise RamError(f"cannot map guest RAM {path} ({self.size} bytes): {e}") from None
        finally:
            os.close(fd)

    # -- lifecycle

    def close(self) -> None:
        """Unmap. Idempotent."""
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                # A numpy view outlives us (e.g. held by a traceback): the mapping goes
                # when that view does. Not worth masking the exception in flight.
                pass

    def __enter__(self) -> "GuestRam":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._mm is None

    # -- raw access (offsets into the backend file)

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            raise RamError(f"guest RAM {self.path} is closed")
        return self._mm

    def _words(self, offset: int, nbytes: int) -> np.ndarray:
        """A uint64 numpy view (no copy) of ``nbytes`` at backend ``offset``."""
        return np.frombuffer(self._map(), dtype=np.uint64, count=nbytes // 8, offset=offset)

    # -- guest-physical access

    def read_bytes(self, gpa: int, length: int) -> bytes:
        off = self.layout.offset_of_gpa(gpa, length)
        return self._map()[off:off + length]

    def read_u32(self, gpa: int) -> int:
        return _U32.unpack_from(self._map(), self.layout.offset_of_gpa(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return _U64.unpack_from(self._map(), self.layout.offset_of_gpa(gpa, 8))[0]

    def _writable_map(self) -> mmap.mmap:
        if not self.writable:
            raise RamError(f"guest RAM {self.path} is mapped read-only")
        return self._map()

    def write_u32(self, gpa: int, value: int) -> None:
        _store(self._writable_map(), self.layout.offset_of_gpa(gpa, 4), "I", 4, value)

    def write_u64(self, gpa: int, value: int) -> None:
        _store(self._writable_map(), self.layout.offset_of_gpa(gpa, 8), "Q", 8, value)

    # -- the work area

    def counter(self) -> int:
        return self.read_u64(self.work.counter_gpa)

    def boots(self) -> int:
        return self.read_u32(self.work.base + self.work.boots_offset)

    def heartbeats(self) -> int:
        return self.read_u32(self.work.base + self.work.heartbeats_offset)

    def magic(self) -> int:
        return self.read_u32(self.work.base + self.work.magic_offset)

    def snapshot(self) -> WorkSnapshot:
        w = self.work
        magic = self.magic()
        return WorkSnapshot(magic=magic, version=self.read_u32(w.base + w.version_offset),
                            counter=self.counter(), boots=self.boots(),
                            heartbeats=self.heartbeats(), magic_ok=magic == w.magic)


def open_ram(ramfd: Union[RamFd, str], writable: bool = False, *,
             machine: Optional[str] = None, work: WorkArea = WorkArea(),
             max_ram_below_4g: Optional[int] = None) -> GuestRam:
    """Map guest RAM (a :class:`RamFd` or a path such as ``/proc/PID/fd/N``).

    ``machine`` (e.g. "q35", "pc-i440fx-10.0") sets the guest-physical layout; without
    it, backend offset == guest-physical address.
    """
    path = ramfd.path if isinstance(ramfd, RamFd) else ramfd
    return GuestRam(path, writable, machine=machine, work=work,
                    max_ram_below_4g=max_ram_below_4g)


# --------------------------------------------------------------------------- the pattern
#
# Page p of the backend file (offset p * 4096) holds 512 little-endian u64 words:
#     tag(p)   = splitmix64 output number p+1 for state `seed`
#              = mix64(seed + (p + 1) * GOLDEN)            (mod 2**64)
#     word(p, i) = tag(p) XOR (i * WORD_K)                 (mod 2**64), i in 0..511
# mix64 is a bijection and GOLDEN is odd, so tags differ between pages of one seed; WORD_K
# is odd, so words differ within a page. A page moved, swapped, zeroed or changed in one
# byte no longer matches, and its first two words say which page's pattern it now holds.

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
_WORD_K = 0xD1B54A32D192ED03
_WORDS_PER_PAGE = PAGE_SIZE // 8
_WORD_XOR = np.arange(_WORDS_PER_PAGE, dtype=np.uint64) * np.uint64(_WORD_K)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX2)
    return z ^ (z >> np.uint64(31))


def _unmix64(z: int) -> int:
    z = z ^ (z >> 31) ^ (z >> 62)
    z = (z * pow(_MIX2, -1, 1 << 64)) & _MASK
    z = z ^ (z >> 27) ^ (z >> 54)
    z = (z * pow(_MIX1, -1, 1 << 64)) & _MASK
    return z ^ (z >> 30) ^ (z >> 60)


def _page_tags(seed: int, first_page: int, count: int) -> np.ndarray:
    pages = np.arange(first_page + 1, first_page + 1 + count, dtype=np.uint64)
    return _mix64(pages * np.uint64(_GOLDEN) + np.uint64(seed))


def pattern_word(seed: int, page: int, index: int) -> int:
    """Word ``index`` of backend page ``page`` (scalar reference of the pattern)."""
    z = (seed + (page + 1) * _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK
    return (z ^ (z >> 31)) ^ ((index * _WORD_K) & _MASK)


def _pattern_page_of_tag(seed: int, tag: int) -> int:
    """The page whose tag is ``tag`` (may be out of range: then no page of ours)."""
    return ((((_unmix64(tag) - seed) & _MASK) * pow(_GOLDEN, -1, 1 << 64)) & _MASK) - 1


def _check_seed(seed: int) -> int:
    if not 0 <= seed <= _MASK:
        raise UsageError(f"pattern seed {seed!r} must be an integer in 0..2**64-1")
    return int(seed)


def _exclusions(ram: GuestRam, layout: RamLayout,
                exclude: Optional[Sequence[Tuple[int, int]]]) -> Tuple[Tuple[Tuple[int, int], ...],
                                                                      List[Tuple[int, int]]]:
    """(guest-physical ranges, merged backend offset ranges) left out of the pattern."""
    gpa_ranges = tuple(ram.work.exclude if exclude is None else
                       ((int(a), int(b)) for a, b in exclude))
    offs: List[Tuple[int, int]] = []
    for a, b in gpa_ranges:
        if b < a:
            raise UsageError(f"exclude range {a:#x}..{b:#x} ends before it starts")
        offs.extend(layout.offset_ranges(a, b))
    offs.sort()
    merged: List[Tuple[int, int]] = []
    for a, b in offs:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return gpa_ranges, merged


def _kept(c0: int, c1: int, excluded: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """``[c0, c1)`` minus the (sorted, merged) excluded ranges."""
    out, pos = [], c0
    for a, b in excluded:
        if b <= pos:
            continue
        if a >= c1:
            break
        if a > pos:
            out.append((pos, a))
        pos = max(pos, b)
    if pos < c1:
        out.append((pos, c1))
    return out


@dataclass(frozen=True)
class FillReport:
    seed: int
    bytes_written: int
    elapsed: float
    excluded: Tuple[Tuple[int, int], ...]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _check_chunk(chunk: int, workers: int) -> None:
    if chunk <= 0 or chunk % PAGE_SIZE:
        raise UsageError(f"chunk {chunk} must be a positive multiple of {PAGE_SIZE}")
    if workers < 1:
        raise UsageError(f"workers {workers} must be >= 1")


_T = TypeVar("_T")


def _in_lanes(size: int, chunk: int, workers: int,
              lane: Callable[[Sequence[int]], _T]) -> List[_T]:
    """Run ``lane`` over interleaved shares of the chunk starts, one thread each.

    numpy releases the GIL in its loops, and first-touch page faults of a fresh memfd
    run in parallel: measured 2 threads ~2-3x faster than 1 at filling new RAM.
    Each lane gets ascending chunk starts and owns its scratch buffers.
    """
    starts = range(0, size, chunk)
    if workers == 1 or len(starts) == 1:
        return [lane(starts)]
    with ThreadPoolExecutor(workers, thread_name_prefix="ram-pattern") as pool:
        return list(pool.map(lane, [starts[i::workers] for i in range(workers)]))


def fill_pattern(ram: GuestRam, seed: int,
                 exclude: Optional[Sequence[Tuple[int, int]]] = None, *,
                 chunk: int = DEFAULT_CHUNK, workers: int = DEFAULT_WORKERS) -> FillReport:
    """Write the seeded pattern over all guest RAM except ``exclude``.

    ``exclude``: guest-physical ``(start, end)`` ranges, end exclusive; default: the
    work area. Excluded bytes are never written, not even transiently: the guest runs
    meanwhile. A guest whose code or stack lives in RAM must exclude those ranges too.
    """
    seed = _check_seed(seed)
    if not ram.writable:
        raise RamError(f"fill_pattern: guest RAM {ram.path} is mapped read-only")
    _check_chunk(chunk, workers)
    gpa_ranges, excluded = _exclusions(ram, ram.layout, exclude)

    def lane(starts: Sequence[int]) -> int:
        scratch = np.empty(chunk // 8, dtype=np.uint64)
        written = 0
        for c0 in starts:
            c1 = min(c0 + chunk, ram.size)
            kept = _kept(c0, c1, excluded)
            if not kept:
                continue
            npages = (c1 - c0) // PAGE_SIZE
            tags = _page_tags(seed, c0 // PAGE_SIZE, npages)[:, None]
            view = ram._words(c0, c1 - c0)
            try:
                if kept == [(c0, c1)]:
                    np.bitwise_xor(tags, _WORD_XOR, out=view.reshape(npages, -1))
                else:   # write around the exclusions, byte-exact
                    exp = scratch[:npages * _WORDS_PER_PAGE]
                    np.bitwise_xor(tags, _WORD_XOR, out=exp.reshape(npages, -1))
                    vb, eb = view.view(np.uint8), exp.view(np.uint8)
                    for a, b in kept:
                        vb[a - c0:b - c0] = eb[a - c0:b - c0]
                    del vb, eb
            finally:
                del view
            written += sum(b - a for a, b in kept)
        return written

    t0 = time.monotonic()
    written = sum(_in_lanes(ram.size, chunk, workers, lane))
    return FillReport(seed, written, time.monotonic() - t0, gpa_ranges)


@dataclass(frozen=True)
class PatternReport:
    """The result of :func:`verify_pattern`. Addresses are guest-physical."""
    seed: int
    machine: str
    ram_size: int
    pages_checked: int
    bytes_checked: int
    bad_page_count: int
    bad_pages: Tuple[int, ...]               # the first `max_listed` changed pages
    misplaced: Tuple[Tuple[int, int], ...]   # (page, page whose pattern it holds)
    zeroed: Tuple[int, ...]                  # listed pages now all zero
    elapsed: float
    excluded: Tuple[Tuple[int, int], ...]

    @property
    def ok(self) -> bool:
        return self.bad_page_count == 0

    def describe(self) -> str:
        if self.ok:
            return (f"pattern intact: {self.pages_checked} page(s), {self.bytes_checked} "
                    f"bytes checked in {self.elapsed:.2f}s")
        shown = ", ".join(f"{g:#x}" for g in self.bad_pages)
        more = self.bad_page_count - len(self.bad_pages)
        text = (f"{self.bad_page_count} page(s) changed out of {self.pages_checked}, "
                f"first at guest-physical {shown}" + (f" (+{more} more)" if more > 0 else ""))
        if self.misplaced:
            text += "; moved: " + ", ".join(f"{g:#x} holds the pattern of {s:#x}"
                                            for g, s in self.misplaced)
        if self.zeroed:
            text += "; zeroed: " + ", ".join(f"{g:#x}" for g in self.zeroed)
        return text

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["description"] = self.describe()
        return d


def verify_pattern(ram: GuestRam, seed: int,
                   exclude: Optional[Sequence[Tuple[int, int]]] = None,
                   machine: Optional[str] = None, ram_size: Optional[int] = None, *,
                   max_listed: int = DEFAULT_MAX_LISTED, chunk: int = DEFAULT_CHUNK,
                   workers: int = DEFAULT_WORKERS) -> PatternReport:
    """Check every byte of guest RAM outside ``exclude`` against the seeded pattern.

    ``machine``/``ram_size`` override the layout ``ram`` was opened with (they only
    change which guest-physical addresses are reported and excluded); ``ram_size``
    must then equal the backend's size. Never copies RAM: one chunk at a time.
    """
    seed = _check_seed(seed)
    _check_chunk(chunk, workers)
    layout = ram.layout
    if machine is not None or ram_size is not None:
        size = ram.size if ram_size is None else ram_size
        if size != ram.size:
            raise RamLayoutError(f"ram_size {size:#x} differs from the RAM file's size "
                                 f"{ram.size:#x} ({ram.path})")
        layout = ram_layout(machine if machine is not None else ram.layout.machine, size)
    gpa_ranges, excluded = _exclusions(ram, layout, exclude)

    def lane(starts: Sequence[int]) -> Tuple[int, List[int]]:
        """(bad page count, the first `max_listed` bad backend pages) of these chunks."""
        exp_buf = np.empty(chunk // 8, dtype=np.uint64)
        ne_buf = np.empty(chunk // 8, dtype=bool)
        count, listed = 0, []
        for c0 in starts:
            c1 = min(c0 + chunk, ram.size)
            kept = _kept(c0, c1, excluded)
            if not kept:
                continue
            npages = (c1 - c0) // PAGE_SIZE
            exp = exp_buf[:npages * _WORDS_PER_PAGE].reshape(npages, -1)
            np.bitwise_xor(_page_tags(seed, c0 // PAGE_SIZE, npages)[:, None], _WORD_XOR,
                           out=exp)
            view = ram._words(c0, c1 - c0)
            try:
                if kept == [(c0, c1)]:
                    ne = ne_buf[:npages * _WORDS_PER_PAGE].reshape(npages, -1)
                    np.not_equal(view.reshape(npages, -1), exp, out=ne)
                    bad = np.flatnonzero(ne.any(axis=1)) if ne.any() else ()
                else:
                    vb, eb = view.view(np.uint8), exp.reshape(-1).view(np.uint8)
                    found = [np.flatnonzero(vb[a - c0:b - c0] != eb[a - c0:b - c0]) + (a - c0)
                             for a, b in kept]
                    bad = np.unique(np.concatenate(found) // PAGE_SIZE)
                    del vb, eb
            finally:
                del view
            count += len(bad)
            listed.extend(int(p) + c0 // PAGE_SIZE for p in bad[:max_listed - len(listed)])
        return count, listed

    t0 = time.monotonic()
    lanes = _in_lanes(ram.size, chunk, workers, lane)
    elapsed = time.monotonic() - t0
    bad_count = sum(count for count, _ in lanes)
    listed = sorted(p for _, pages in lanes for p in pages)[:max_listed]
    misplaced, zeroed = _classify(ram, seed, listed, excluded, layout)
    total_pages = ram.size // PAGE_SIZE
    fully_excluded = sum(max(0, b // PAGE_SIZE - -(-a // PAGE_SIZE)) for a, b in excluded)
    return PatternReport(
        seed=seed, machine=layout.machine, ram_size=ram.size,
        pages_checked=total_pages - fully_excluded,
        bytes_checked=ram.size - sum(b - a for a, b in excluded),
        bad_page_count=bad_count,
        bad_pages=tuple(layout.gpa_of_offset(p * PAGE_SIZE) for p in listed),
        misplaced=misplaced, zeroed=zeroed, elapsed=elapsed, excluded=gpa_ranges)


def _classify(ram: GuestRam, seed: int, pages: Sequence[int],
              excluded: Sequence[Tuple[int, int]],
              layout: RamLayout) -> Tuple[Tuple[Tuple[int, int], ...], Tuple[int, ...]]:
    """For listed bad pages (not touching exclusions): whose pattern they hold, or zeroed."""
    misplaced, zeroed = [], []
    npages = ram.size // PAGE_SIZE
    for p in pages:
        off = p * PAGE_SIZE
        if _kept(off, off + PAGE_SIZE, excluded) != [(off, off + PAGE_SIZE)]:
            continue
        words = ram._words(off, PAGE_SIZE)
        try:
            if not words.any():
                zeroed.append(layout.gpa_of_offset(off))
                continue
            tag, second = int(words[0]), int(words[1])
        finally:
            del words
        if second != tag ^ _WORD_K:
            continue  # not a whole page of some page's pattern: just changed
        src = _pattern_page_of_tag(seed, tag)
        if 0 <= src < npages and src != p:
            misplaced.append((layout.gpa_of_offset(off), layout.gpa_of_offset(src * PAGE_SIZE)))
    return tuple(misplaced), tuple(zeroed)


def _human(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
