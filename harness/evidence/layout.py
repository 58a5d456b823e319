"""Guest RAM layout: where guest-physical addresses live in the backend file, and the
guest's work area.

Offsets in the backend file are not guest-physical addresses on x86: RAM above the
PCI hole is mapped at 4 GiB. :class:`RamLayout` does that translation; reports always
name guest-physical addresses. See :mod:`harness.evidence.memory` for reaching the file
and :mod:`harness.evidence.pattern` for the seeded pattern.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import (Any, List, Mapping, NamedTuple, Optional,
                    Tuple)


from harness.core.errors import HarnessError, UsageError

PAGE_SIZE = 4096
GiB = 1 << 30
FOUR_GIB = 1 << 32


# --------------------------------------------------------------------------- errors

class RamError(HarnessError):
    """Guest RAM could not be found, opened or read as asked."""



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



def _human(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"
