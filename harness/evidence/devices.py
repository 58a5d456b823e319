"""The device probes of one case: what starts before the transfer and what stops after
the observation window, for the network (:class:`NetProbe`), the disk
(:class:`DiskProbe`) and QEMU's image locks (:class:`LockWatch`).

Each probe talks to the guest through ``console(cmd) -> reply groups`` (the Linux
driver's :meth:`~harness.guest.linux.LinuxDriver.command` bound to a side) and hands
back a frozen record (:mod:`.netstream`, :mod:`.diskseq`). The order a case follows::

    setup = netdevs.open_setup(arrangement)          # before the source starts
    disk = DiskProbe(image, layout); disk.prepare()  # before the source starts
    ... source up ...
    net = NetProbe(setup).start(console_src)         # the stream, the echo connection
    disk.start(console_src)
    ... transfer, observation window ...
    record = net.stop(console_side, switch_ns)       # side: the one that runs now
    disk.stop(console_side)
    ... teardown of both QEMUs ...
    disk_record = disk.verify()
    setup.close()
"""
from __future__ import annotations

import array
import fcntl
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from harness.core.errors import HarnessError
from harness.cpr.netdevs import NetSetup
from harness.evidence import diskseq, netstream

Console = Callable[[str], Dict[str, str]]
#: How long a guest command may take (``net`` waits for syslogd; ``dread`` reads the
#: blocks back under TCG).
COMMAND_S = 30.0


class NetProbe:
    """The guest's datagram stream to the host and one TCP connection, through the
    switch-over, for one :class:`~harness.cpr.netdevs.NetSetup`."""

    def __init__(self, setup: NetSetup, echo_period_s: float = 0.1):
        self.setup = setup
        self.echo_period_s = echo_period_s
        self.receiver: Optional[netstream.StreamReceiver] = None
        self.echo: Optional[netstream.EchoClient] = None
        #: Why the TCP connection was not measured ("" when it was).
        self.no_echo = ""
        self.started_reply: Dict[str, str] = {}

    def start(self, console: Console) -> "NetProbe":
        """The receiver, then the guest's workload, then the echo connection.

        :raise HarnessError: the guest refused (``net error ...``); the receiver is
            stopped again.
        """
        s = self.setup
        self.receiver = netstream.StreamReceiver.bind(s.bind_ip, 0, ns=s.socket_ns).start()
        try:
            self.started_reply = console(s.guest_command(self.receiver.port))
            if self.started_reply.get("result") != "ok":
                raise HarnessError("the guest could not start its network workload: "
                                   + (self.started_reply.get("detail") or "no reason"))
            if s.echo_addr is None:
                self.no_echo = "no way in from the host (no forwarded port)"
            else:
                self.echo = netstream.EchoClient.connect(
                    *s.echo_addr, ns=s.socket_ns, period_s=self.echo_period_s).start()
        except BaseException:
            self.receiver.stop()
            raise
        return self

    def stop(self, console: Optional[Console], switch_ns: Optional[int] = None,
             last_echo_s: float = 5.0) -> netstream.StreamRecord:
        """After the window: the last line on the TCP connection, the guest's count
        (``nstop``; ``console`` None: no guest to ask, the count stays unknown), the
        receiver stopped; the record."""
        tcp = self.echo.finish(last_echo_s, switch_ns) if self.echo is not None else None
        sent: Optional[int] = None
        told_ns = time.monotonic_ns()  # the stream runs until the guest is told to stop
        if console is not None:
            try:
                sent = int(console("nstop")["sent"])
            except Exception:  # noqa: BLE001 - a dead console: the count stays unknown
                sent = None
        assert self.receiver is not None, "stop() before start()"
        arrivals = self.receiver.stop()
        return netstream.analyse(arrivals, sent=sent, switch_ns=switch_ns,
                                 stopped_ns=told_ns, tcp=tcp,
                                 truncated=self.receiver.truncated)

    def abandon(self) -> None:
        """Stop the host's side without asking the guest (teardown after an error)."""
        if self.echo is not None:
            self.echo.close()
        if self.receiver is not None:
            self.receiver.stop()


class DiskProbe:
    """The guest's block stream on its virtio-blk disk image ``image``."""

    def __init__(self, image: str, layout: Mapping[str, Any], seed: int = 0x5EED):
        self.image = image
        self.layout = diskseq.DiskLayout.from_layout(layout)
        self.seed = seed
        self.written = 0
        self.errors = 0
        self.guest_read: Optional[Tuple[int, int, int, int]] = None
        self.started = False

    def prepare(self) -> None:
        """Before any QEMU opens the image."""
        diskseq.prepare(self.image, self.layout, self.seed)

    def start(self, console: Console) -> None:
        reply = console("dstart")["result"]
        if reply != "ok":
            raise HarnessError(f"the guest could not start its disk writer: dstart {reply}")
        self.started = True

    def stop(self, console: Console) -> None:
        """After the window, on the side that runs: stop the writer, read back."""
        r = console("dstop")
        self.written, self.errors = int(r["written"]), int(r["errors"])
        g = console("dread")
        self.guest_read = (int(g["ok"]), int(g["lost"]), int(g["torn"]), int(g["stale"]))

    def verify(self) -> diskseq.DiskRecord:
        """After teardown (no QEMU holds the image)."""
        return diskseq.verify(self.image, self.layout, self.written, self.seed,
                              self.guest_read, self.errors)


#: TUNGETVNETHDRSZ (<linux/if_tun.h>): the tap device's virtio-net header size.
TUNGETVNETHDRSZ = 0x800454D7


class TapHeaderWatch:
    """The virtio-net header size of the tap device behind ``fd`` (the harness's own
    copy of a tap fd it handed to QEMU), read every ``interval_s`` on a thread: each
    change with its time. The size belongs to the device, not to an fd or a queue: a
    QEMU that sets it sets it for every other opener of the device too."""

    def __init__(self, fd: int, interval_s: float = 0.002, max_seconds: float = 600.0):
        self.fd, self.interval_s, self.max_seconds = fd, interval_s, max_seconds
        #: (host monotonic ns, header size) at the first reading and at every change.
        self.changes: List[Tuple[int, int]] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cprh-vnethdr", daemon=True)

    def size(self) -> int:
        buf = array.array("i", [0])
        fcntl.ioctl(self.fd, TUNGETVNETHDRSZ, buf, True)
        return buf[0]

    def start(self) -> "TapHeaderWatch":
        self._thread.start()
        return self

    def _loop(self) -> None:
        end = time.monotonic() + self.max_seconds
        while time.monotonic() < end:
            try:
                size = self.size()
            except OSError as exc:
                self.error = f"TUNGETVNETHDRSZ: {exc.strerror}"
                return
            if not self.changes or self.changes[-1][1] != size:
                self.changes.append((time.monotonic_ns(), size))
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> List[Tuple[int, int]]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        return list(self.changes)


class LockWatch:
    """QEMU's lock bytes on an image, per process, sampled on a thread: each change
    with its time, so what the target held while the source still ran shows."""

    def __init__(self, image: str, pids: Callable[[], Dict[str, int]],
                 interval_s: float = 0.01, max_seconds: float = 600.0):
        self.image, self.pids = image, pids
        self.interval_s, self.max_seconds = interval_s, max_seconds
        #: (host monotonic ns, side, lock bytes or None: image not open) at every change.
        self.changes: List[Tuple[int, str, Optional[Tuple[int, ...]]]] = []
        self._last: Dict[str, Optional[Tuple[int, ...]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cprh-locks", daemon=True)

    def start(self) -> "LockWatch":
        self._thread.start()
        return self

    def sample(self) -> None:
        for side, pid in self.pids().items():
            held = diskseq.image_locks(pid, self.image)
            if side not in self._last or self._last[side] != held:
                self._last[side] = held
                self.changes.append((time.monotonic_ns(), side, held))

    def _loop(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.wait(self.interval_s) and time.monotonic() < end:
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a process gone between listdir and read
                pass

    def stop(self) -> List[Tuple[int, str, Optional[Tuple[int, ...]]]]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        return list(self.changes)

    def describe(self, switch_ns: Optional[int] = None) -> List[str]:
        """One line per change: when (from the switch-over), which side, in words."""
        lines = []
        for t, side, held in self.changes:
            when = "" if switch_ns is None else f"{(t - switch_ns) / 1e9:+.3f} s: "
            lines.append(f"{when}{side} {diskseq.describe_locks(held)}")
        return lines
