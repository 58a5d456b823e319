"""The Linux guest: a Debian kernel and a busybox workload, driven over its console.

The guest (images/linux/) prints a status line every second (``CPRLINUX t=<uptime>
n=<counter> sum=<buffer checksum> err=<new dmesg errors>``) and answers ``ping`` and
``check`` on its console. Each side's console is a QEMU socket chardev that also logs
everything to the case's ``<side>.serial`` file: progress is read from that log,
commands go through the socket. Guest RAM is the guest's own, so the RAM pattern does
not apply; the same-memory and empty-stream evidence still do.
"""
from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from harness.core.errors import HarnessError, WaitTimeout
from harness.core.wait import budget
from harness.guest.driver import GuestDriver, WorkArea
from harness.guest.images import GuestImage

DISK_MB = 8


@dataclass(frozen=True)
class LinuxConsole:
    """The Linux guest's answers on the target's console after the switch-over: its
    status before (uptime, counter, the buffer's boot checksum), its answers to ``ping``
    and ``check`` (or why the console did not answer), new kernel errors, boot markers
    printed on the target, and the devices it reported at boot."""
    uptime_before: Optional[float] = None
    n_before: Optional[int] = None
    sum_boot: Optional[str] = None
    pong_uptime: Optional[float] = None
    sum_check: Optional[str] = None
    console_error: str = ""
    err_after: Optional[int] = None
    boot_markers: Optional[int] = None
    devices: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    uptime: float
    n: int
    sum: str
    err: int


class LinuxDriver(GuestDriver):
    leaves_ram_alone = False
    counter_in_ram = False
    #: The guest prints a status line a second.
    progress_period_s = 0.2

    def __init__(self, image: GuestImage, workdir: str):
        super().__init__(image, workdir)
        assert image.manifest is not None
        lay = image.manifest["layout"]
        self.lay = lay
        self.status_re = re.compile(lay["STATUS_REGEX"])
        self.buffer_re = re.compile(lay["BUFFER_REGEX"])
        self.devices_re = re.compile(lay["DEVICES_REGEX"])
        self.commands = {k: re.compile(v) for k, v in lay["COMMANDS"].items()}
        self.boot_marker = lay["BOOT_MARKER"].strip()
        self.ready_marker = lay["READY_MARKER"].strip()
        # One disk image for both sides: cpr-transfer keeps the same host files.
        self.disk = os.path.join(workdir, "disk.raw")
        if not os.path.exists(self.disk):
            with open(self.disk, "wb") as f:
                f.truncate(DISK_MB << 20)
        self.serial: Dict[str, str] = {}
        self.console: Dict[str, str] = {}

    # -- command line -----------------------------------------------------------------

    def qemu_args(self, side: str, serial_path: str, sockdir: str) -> List[str]:
        sock = os.path.join(sockdir, f"{side}.con")
        self.serial[side], self.console[side] = serial_path, sock
        return [*self.image.manifest["qemu_args"],
                "-chardev", f"socket,id=ser0,path={sock},server=on,wait=off,"
                            f"logfile={serial_path}",
                "-serial", "chardev:ser0",
                "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
                "-blockdev", f"driver=file,filename={self.disk},node-name=d0",
                "-device", "virtio-blk-pci,drive=d0"]

    # -- progress ---------------------------------------------------------------------

    def _lines(self, side: str) -> List[str]:
        try:
            with open(self.serial[side], "rb") as f:
                return f.read().decode(errors="replace").replace("\r", "").splitlines()
        except OSError:
            return []

    def _status(self, side: str) -> Optional[Status]:
        for line in reversed(self._lines(side)):
            m = self.status_re.match(line)
            if m:
                return Status(float(m["uptime"]), int(m["n"]), m["sum"], int(m["err"]))
        return None

    def boots_seen(self, side: str) -> int:
        return sum(1 for line in self._lines(side) if line.strip() == self.boot_marker)

    def read(self, vm: Any) -> WorkArea:
        """Progress as a work area: counter = the status counter n, boots = boot markers
        seen on this side's console plus, on the target, the source's boot."""
        st = self._status(vm.side)
        boots = self.boots_seen(vm.side) + (self.boots_seen("src") if vm.side == "dst" else 0)
        return WorkArea(magic=1 if st else 0, version=1, counter=st.n if st else -1,
                        boots=boots, heartbeats=0, valid=st is not None)

    def alive_check(self, vm: Any) -> None:
        vm.check_alive("while the Linux guest runs")

    # -- after the transfer -------------------------------------------------------------

    def command(self, side: str, cmd: str, timeout: float) -> Dict[str, str]:
        """Send ``cmd`` on ``side``'s console; return the answer's named groups."""
        pattern = self.commands[cmd]
        timeout = budget(timeout)
        deadline = time.monotonic() + timeout
        buf = b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            s.connect(self.console[side])
            s.sendall(cmd.encode() + b"\n")
            while time.monotonic() < deadline:
                s.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    break
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").replace("\r", "").splitlines():
                    m = pattern.match(line)
                    if m:
                        return m.groupdict()
        raise WaitTimeout(f"the Linux guest's answer to {cmd!r} on its console", timeout,
                          timeout, buf[-200:].decode(errors="replace"), side)

    def boot_sum(self) -> Optional[str]:
        for line in self._lines("src"):
            m = self.buffer_re.match(line)
            if m:
                return m["sum"]
        return None

    def after_transfer(self, vm: Any, timeout: float) -> Optional[LinuxConsole]:
        """The guest answers on the target's console, without a reset, buffer intact."""
        before = self._status("src")
        pong = check = None
        error = ""
        try:
            pong = float(self.command(vm.side, "ping", timeout)["uptime"])
            check = self.command(vm.side, "check", timeout)["sum"]
        except (WaitTimeout, OSError, HarnessError) as exc:
            error = str(exc)
        st = self._status(vm.side)
        devices: Dict[str, str] = {}
        for line in self._lines("src"):
            m = self.devices_re.match(line)
            if m:
                devices = m.groupdict()
        return LinuxConsole(before.uptime if before else None, before.n if before else None,
                            self.boot_sum(), pong, check, error,
                            st.err if st else None, self.boots_seen(vm.side), devices)
