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
  (evidence 4); :mod:`harness.evidence.sampler` samples the counter for the pause (evidence 5).

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
import stat
import struct
from dataclasses import asdict, dataclass
from typing import (Any, Dict, Iterator, List, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import numpy as np

from harness.evidence.layout import (PAGE_SIZE, RamError, WorkArea,
                                     WorkSnapshot, _human, ram_layout)

# Loads: struct's native mode copies the value with one load, so a concurrent store by
# the guest is never seen half done. Stores go through a native memoryview item, which
# is one store too; struct.pack_into would zero the bytes first (a reader could see 0).
_U32 = struct.Struct("I")
_U64 = struct.Struct("Q")


def _store(mm: mmap.mmap, offset: int, fmt: str, width: int, value: int) -> None:
    with memoryview(mm) as whole, whole[offset:offset + width] as part, \
            part.cast(fmt) as item:
        item[0] = value


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
    #: cpr-exec: one process, before its exec (src) and after it (dst).
    across_exec: bool = False

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


