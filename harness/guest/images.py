"""Guest images: built from source in ``images/``, described by their layout.

A guest is built from source in ``images/`` (``images/build.py``), cached by content
hash. Its work area (magic, progress counter, boot count) sits at a fixed
guest-physical address; everything else in guest RAM is the harness's to fill and
verify.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional

from harness.core.errors import HarnessError, UsageError

IMAGES_DIR = Path(__file__).resolve().parents[2] / "images"


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
    #: The console heartbeat of a bare-metal guest: a line matching ``heartbeat_regex``
    #: (applied to a line without its newline; group ``seq``: the sequence number, 8 hex
    #: digits, 0 after each boot) every ``heartbeat_period_ms`` of the guest's own time.
    #: 0 and "" for a guest that prints none (layout.json: HEARTBEAT_MS, HEARTBEAT_REGEX).
    heartbeat_period_ms: int = 0
    heartbeat_regex: str = ""

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
                      ram_base=int(lay.get("RAM_BASE", 0)),
                      heartbeat_period_ms=int(lay.get("HEARTBEAT_MS", 0)),
                      heartbeat_regex=str(lay.get("HEARTBEAT_REGEX", "")))
