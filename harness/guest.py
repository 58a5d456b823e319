"""Guests the harness builds and runs, and how to read their work area.

A guest is built from source in ``images/`` (``images/build.py``), cached by content
hash. Its work area (magic, progress counter, boot count) sits at a fixed
guest-physical address; everything else in guest RAM is the harness's to fill and
verify.
"""
from __future__ import annotations

import importlib.util
import re
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Protocol

from harness.errors import HarnessError, UsageError, WaitTimeout

IMAGES_DIR = Path(__file__).resolve().parent.parent / "images"


class GuestBuildFailed(HarnessError):
    pass


@dataclass(frozen=True)
class WorkAreaLayout:
    base: int
    size: int
    off_magic: int
    off_version: int
    off_counter: int
    off_boots: int
    off_heartbeats: int
    magic: int


@dataclass(frozen=True)
class GuestImage:
    name: str
    path: str
    arch: str
    layout: Optional[WorkAreaLayout]   # None for guests without a RAM work area
    boot_marker: str
    #: Guest-physical ranges written by the guest or by QEMU itself (e.g. the device
    #: tree QEMU copies into RAM on -machine virt): excluded from the RAM pattern.
    own_ranges: tuple
    #: The QEMU program for this guest's architecture, by default.
    binary: str = "qemu-system-x86_64"
    machine: str = "q35"
    cpu: str = ""
    ram_base: int = 0
    #: "bare-metal": a work area in RAM, nothing else written; "linux": a console.
    kind: str = "bare-metal"
    #: The image's own description (layout.json, or the Linux guest's manifest).
    manifest: Optional[Dict[str, Any]] = None
    min_ram_mb: int = 0

    def qemu_args(self, serial_path: str) -> List[str]:
        args = ["-bios", self.path,
                "-chardev", f"file,id=ser0,path={serial_path}", "-serial", "chardev:ser0"]
        return (["-cpu", self.cpu] if self.cpu else []) + args


def _build_module() -> Any:
    spec = importlib.util.spec_from_file_location("cprh_images_build", IMAGES_DIR / "build.py")
    if spec is None or spec.loader is None:
        raise GuestBuildFailed(f"cannot load {IMAGES_DIR / 'build.py'}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses in build.py look their module up
    spec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=None)
def arch_of(name: str) -> str:
    """The architecture of guest ``name``, from its layout, without building it."""
    try:
        return _build_module().layout(name).get("arch", "x86_64")
    except Exception as exc:  # noqa: BLE001 - build.py's own error types
        raise UsageError(f"unknown guest {name!r}: {exc}") from None


@lru_cache(maxsize=None)
def image(name: str = "x86-bios") -> GuestImage:
    """Build (or reuse the cached build of) guest ``name``."""
    mod = _build_module()
    try:
        path = mod.build(name)
    except SystemExit as exc:  # build.py reports problems as one line + exit
        raise GuestBuildFailed(f"building guest {name!r} failed (exit {exc.code}); "
                               f"run: python images/build.py {name}") from None
    except KeyError:
        raise UsageError(f"unknown guest {name!r}") from None
    except Exception as exc:  # build.py is stdlib-only: its errors are its own types
        if type(exc).__name__ == "UnknownImage":
            raise UsageError(str(exc)) from None
        raise GuestBuildFailed(f"building guest {name!r} failed: {exc}; "
                               f"run: python images/build.py {name}") from None
    lay = mod.layout(name)
    if lay.get("kind") == "linux":
        import json as _json
        man = _json.loads(Path(path).read_text())
        qemu = lay.get("QEMU", {})
        return GuestImage(name=name, path=str(path), arch=lay.get("arch", "x86_64"),
                          layout=None, boot_marker=lay["BOOT_MARKER"].strip(), own_ranges=(),
                          binary=qemu.get("binary", "qemu-system-x86_64"),
                          machine=qemu.get("machine", "q35"), kind="linux",
                          manifest={**man, "layout": lay},
                          min_ram_mb=int(lay.get("MIN_RAM_MIB", 256)))
    off = lay["OFFSETS"]
    layout = WorkAreaLayout(
        base=int(lay["WORK_BASE"]), size=int(lay["WORK_SIZE"]),
        off_magic=int(off["magic"]), off_version=int(off["version"]),
        off_counter=int(off["counter"]), off_boots=int(off["boots"]),
        off_heartbeats=int(off["heartbeats"]), magic=int(lay["MAGIC"]))
    qemu = lay.get("QEMU", {})
    qemu_writes = tuple((int(w["base"]), int(w["base"]) + int(w["size"]))
                        for w in lay.get("QEMU_WRITES", []))
    return GuestImage(name=name, path=str(path), arch=lay.get("arch", "x86_64"), layout=layout,
                      boot_marker=lay["BOOT_MARKER"].strip(),
                      own_ranges=((layout.base, layout.base + layout.size),) + qemu_writes,
                      binary=qemu.get("binary", "qemu-system-x86_64"),
                      machine=qemu.get("machine", "q35"), cpu=qemu.get("cpu", ""),
                      ram_base=int(lay.get("RAM_BASE", 0)))


@dataclass(frozen=True)
class WorkArea:
    magic: int
    version: int
    counter: int
    boots: int
    heartbeats: int

    def valid(self, layout: WorkAreaLayout) -> bool:
        return self.magic == layout.magic


_XP_LINE = re.compile(r"^[0-9a-fA-F]+:\s*((?:0x[0-9a-fA-F]+\s*)+)$")


def read_work_area_qmp(qmp: Any, layout: WorkAreaLayout) -> WorkArea:
    """Read the work area through QEMU (works for every memory back-end)."""
    words = (max(layout.off_heartbeats, layout.off_counter + 4) + 4) // 4
    out = qmp.cmd("human-monitor-command",
                  {"command-line": f"xp /{words}wx {layout.base:#x}"})
    vals: List[int] = []
    for line in str(out).splitlines():
        m = _XP_LINE.match(line.strip())
        if m:
            vals += [int(v, 16) for v in m.group(1).split()]
    if len(vals) < words:
        raise HarnessError(f"{qmp.side}: unexpected xp output: {out!r}")

    def u32(off: int) -> int:
        return vals[off // 4]

    return WorkArea(magic=u32(layout.off_magic), version=u32(layout.off_version),
                    counter=u32(layout.off_counter) | (u32(layout.off_counter + 4) << 32),
                    boots=u32(layout.off_boots), heartbeats=u32(layout.off_heartbeats))


def wait_counter_moving(read: Any, layout: WorkAreaLayout, timeout: float, side: str,
                        above: Optional[int] = None, log_path: Optional[str] = None) -> WorkArea:
    """Wait until the work area is valid and the counter moves (past ``above``)."""
    start = time.monotonic()
    first: Optional[WorkArea] = None
    last: Any = "no read yet"
    while True:
        wa = read()
        last = wa
        if wa.valid(layout):
            if first is None:
                first = wa
            elif wa.counter != first.counter and (above is None or wa.counter > above):
                return wa
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            what = "the guest's counter to move" + (f" past {above}" if above is not None else "")
            raise WaitTimeout(what, timeout, elapsed, last, side, log_path)
        time.sleep(0.02)


class GuestDriver(Protocol):
    """What the pair runner needs from a guest, whatever its kind."""
    image: GuestImage
    #: The guest writes no RAM outside ``image.own_ranges``: the RAM pattern applies.
    leaves_ram_alone: bool
    #: The guest's progress counter lives in RAM at a known place: the sampler applies.
    counter_in_ram: bool

    def qemu_args(self, side: str, serial_path: str, sockdir: str) -> List[str]: ...
    def read(self, vm: Any) -> WorkArea: ...
    def wait_moving(self, vm: Any, timeout: float, above: Optional[int] = None) -> WorkArea: ...
    def after_transfer(self, vm: Any, timeout: float) -> Dict[str, Any]: ...


class BareMetalDriver:
    """Our bare-metal guests: a work area in RAM, read through QEMU (HMP xp)."""
    leaves_ram_alone = True
    counter_in_ram = True

    def __init__(self, image: GuestImage, workdir: str):
        self.image = image
        assert image.layout is not None
        self.layout = image.layout

    def qemu_args(self, side: str, serial_path: str, sockdir: str) -> List[str]:
        return self.image.qemu_args(serial_path)

    def read(self, vm: Any) -> WorkArea:
        return read_work_area_qmp(vm.qmp, self.layout)

    def wait_moving(self, vm: Any, timeout: float, above: Optional[int] = None) -> WorkArea:
        return wait_counter_moving(lambda: self.read(vm), self.layout, timeout, vm.side,
                                   above=above, log_path=vm.log_path)

    def after_transfer(self, vm: Any, timeout: float) -> Dict[str, Any]:
        return {}


def driver(image: GuestImage, workdir: str) -> Any:
    if image.kind == "linux":
        from harness.linux_guest import LinuxDriver
        return LinuxDriver(image, workdir)
    return BareMetalDriver(image, workdir)
