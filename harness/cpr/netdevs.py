"""How each side's NIC is given its back-end across a cpr-transfer: the arrangements.

cpr-transfer passes only memory over its cpr channel: the target opens its network
back-end itself while the source still holds its own. What the target can open
depends on how the back-end is arranged, which is what a management layer chooses:

==========================  ===================================================  =====
arrangement                 both sides get                                       ns
==========================  ===================================================  =====
``user``                    ``-netdev user`` (no forwarded port)                 no
``user-hostfwd``            the same ``hostfwd=tcp:127.0.0.1:P-:7000``           no
``user-hostfwd-dst-port``   the target another host port than the source's       no
``tap-ifname``              the same ``-netdev tap,ifname=tap0``                 yes
``tap-mq``                  a ``multi_queue`` tap, ``queues=2``, ``mq=on``         yes
``tap-fd``                  one tap fd opened by the harness, ``fd=N`` to both     tap
``tap-bridge``              a bridge with two taps: ``tap0`` src, ``tap1`` dst     yes
``vhost-net``               ``tap-mq`` with ``vhost=on``                           yes
==========================  ===================================================  =====

Every tap lives in a namespace the case makes (:mod:`harness.core.netns`) with the
host's side at ``10.77.0.1/24`` and the guest at ``10.77.0.2/24``: no packet leaves it.
A QEMU that opens a tap by name must run inside (:meth:`NetSetup.prefix`); with
``fd=`` the fd already belongs to the namespace's tap and QEMU runs outside. With
``-netdev user`` the guest is ``10.0.2.15/24`` and sends only to the slirp gateway
``10.0.2.2``, which slirp maps to the host's ``127.0.0.1``.

The NIC is a second ``virtio-net-pci`` (id ``cprnic0``, netdev ``cprnet0``, a fixed
MAC) beside whatever the guest already has; the guest's ``net`` command finds it by
its MAC.
"""
from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

from harness.core import netns
from harness.core.errors import Unsupported, UsageError

GUEST_MAC = "52:54:00:c0:ff:01"
NETDEV, NIC = "cprnet0", "cprnic0"
#: The guest's TCP echo port.
GUEST_TCP_PORT = 7000
TAP_HOST, TAP_GUEST, TAP_PREFIX = "10.77.0.1", "10.77.0.2", 24
USER_HOST, USER_GUEST = "10.0.2.2", "10.0.2.15"


@dataclass(frozen=True)
class Arrangement:
    id: str
    #: What a management layer does, in plain words.
    title: str
    #: It needs the case's namespace (and /dev/net/tun).
    tap: bool = False
    #: What was seen on this machine kind before (docs/same-arguments.md), a hint only.
    expect: str = ""


ARRANGEMENTS: Dict[str, Arrangement] = {a.id: a for a in (
    Arrangement("user", "-netdev user on both sides, no forwarded port"),
    Arrangement("user-hostfwd", "-netdev user with the same hostfwd port on both sides"),
    Arrangement("user-hostfwd-dst-port", "-netdev user, the target forwarding another "
                "host port than the source"),
    Arrangement("tap-ifname", "the same tap by name (ifname=tap0) on both sides", tap=True,
                expect="refused"),
    Arrangement("tap-mq", "a multi_queue tap opened by name by both sides (queues=2)",
                tap=True, expect="completes"),
    Arrangement("tap-fd", "one tap fd opened by the management layer, handed to both "
                "sides with fd=", tap=True),
    Arrangement("tap-bridge", "a bridge with two taps: the source on tap0, the target on "
                "tap1", tap=True),
    Arrangement("vhost-net", "a multi_queue tap with vhost=on on both sides", tap=True),
)}


def nic_args(netdev: str, mq: bool = False) -> List[str]:
    dev = f"virtio-net-pci,netdev={NETDEV},mac={GUEST_MAC},id={NIC}"
    return ["-netdev", netdev, "-device", dev + (",mq=on,vectors=6" if mq else "")]


@dataclass
class NetSetup:
    """One arrangement made for one case: its namespace and devices, what each side's
    QEMU gets, and where the host measures. Close it (or use :func:`opened`)."""
    arrangement: Arrangement
    ns: Optional[netns.Namespace]
    #: Extra QEMU arguments per side ("src", "dst").
    args: Dict[str, List[str]]
    #: fds each side's QEMU must inherit (pass_fds), for ``fd=``.
    fds: Dict[str, Tuple[int, ...]] = field(default_factory=dict)
    #: Both QEMUs must start inside ``ns`` (they open a tap by name).
    inside: bool = False
    guest_cidr: str = f"{USER_GUEST}/24"
    #: The host as the guest addresses it, and where the host's receiver binds.
    host_ip: str = USER_HOST
    bind_ip: str = "127.0.0.1"
    #: Where the host connects to reach the guest's echo server (None: no way in).
    echo_addr: Optional[Tuple[str, int]] = None
    #: Where a client reaches the guest once the target runs it, when that is not
    #: ``echo_addr`` (the target forwards another host port): clients must reconnect.
    dst_echo_addr: Optional[Tuple[str, int]] = None
    #: Where the host's sockets live: ``ns`` for taps, the host's own stack otherwise.
    socket_ns: Optional[netns.Namespace] = None
    #: An fd of the harness's own on the tap device both QEMUs share (the copy of the
    #: one handed over with ``fd=``; a detached queue of a multi-queue tap, which no
    #: packet is steered to): the device's settings are read through it. None: no
    #: shared device, or none the harness can hold without taking it from a QEMU.
    watch_fd: Optional[int] = None

    def side_args(self, side: str) -> List[str]:
        return list(self.args.get(side, ()))

    def side_fds(self, side: str) -> Tuple[int, ...]:
        return tuple(self.fds.get(side, ()))

    def prefix(self) -> List[str]:
        """Put before each QEMU's command line (empty: it runs where the runner does)."""
        return self.ns.exec_prefix() if self.inside and self.ns is not None else []

    def guest_command(self, udp_port: int) -> str:
        """The guest's console command that starts its network workload."""
        return (f"net {GUEST_MAC} {self.guest_cidr} {self.host_ip} {udp_port} "
                f"{GUEST_TCP_PORT}")

    def close(self) -> None:
        """Close the harness's fds and remove the namespace. Idempotent."""
        for fds in self.fds.values():
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fds = {}
        if self.watch_fd is not None:
            try:
                os.close(self.watch_fd)
            except OSError:
                pass  # the copy of an fd= above: closed already
            self.watch_fd = None
        if self.ns is not None:
            self.ns.remove()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _user(arr: Arrangement) -> NetSetup:
    if arr.id == "user":
        net = f"user,id={NETDEV}"
        return NetSetup(arr, None, {"src": nic_args(net), "dst": nic_args(net)})
    src_port = _free_port()
    dst_port = src_port if arr.id == "user-hostfwd" else _free_port()

    def fwd(port: int) -> str:
        return f"user,id={NETDEV},hostfwd=tcp:127.0.0.1:{port}-:{GUEST_TCP_PORT}"
    return NetSetup(arr, None, {"src": nic_args(fwd(src_port)), "dst": nic_args(fwd(dst_port))},
                    echo_addr=("127.0.0.1", src_port),
                    dst_echo_addr=("127.0.0.1", dst_port) if dst_port != src_port else None)


def _tap(arr: Arrangement, ns: netns.Namespace) -> NetSetup:
    s = NetSetup(arr, ns, {}, guest_cidr=f"{TAP_GUEST}/{TAP_PREFIX}", host_ip=TAP_HOST,
                 bind_ip=TAP_HOST, echo_addr=(TAP_GUEST, GUEST_TCP_PORT), socket_ns=ns,
                 inside=True)
    try:
        ns.add_address(_tap_devices(s, ns), f"{TAP_HOST}/{TAP_PREFIX}")
    except BaseException:
        s.close()
        raise
    return s


def _tap_devices(s: NetSetup, ns: netns.Namespace) -> str:
    """The namespace's devices and each side's arguments; the host side's device."""
    arr, tap, host_dev = s.arrangement, "script=no,downscript=no", "tap0"
    if arr.id == "tap-ifname":
        ns.add_tap("tap0")
        s.args = {side: nic_args(f"tap,id={NETDEV},ifname=tap0,{tap}") for side in ("src", "dst")}
    elif arr.id in ("tap-mq", "vhost-net"):
        ns.add_tap("tap0", multi_queue=True)
        s.watch_fd = ns.open_tap("tap0", multi_queue=True, detached=True)
        vhost = ",vhost=on" if arr.id == "vhost-net" else ""
        net = f"tap,id={NETDEV},ifname=tap0,queues=2,{tap}{vhost}"
        s.args = {side: nic_args(net, mq=True) for side in ("src", "dst")}
    elif arr.id == "tap-fd":
        ns.add_tap("tap0")
        fd = ns.open_tap("tap0")
        s.fds = {"src": (fd,), "dst": (fd,)}
        s.watch_fd = fd
        s.args = {side: nic_args(f"tap,id={NETDEV},fd={fd}") for side in ("src", "dst")}
        s.inside = False
    elif arr.id == "tap-bridge":
        ns.add_tap("tap0")
        ns.add_tap("tap1")
        host_dev = ns.add_bridge("br0", ["tap0", "tap1"])
        s.args = {side: nic_args(f"tap,id={NETDEV},ifname={t},{tap}")
                  for side, t in (("src", "tap0"), ("dst", "tap1"))}
    return host_dev


def open_setup(arrangement: str, tag: str = "net") -> NetSetup:
    """Make ``arrangement`` for one case (its namespace and devices when it has taps).

    :raise UsageError: no such arrangement.
    :raise Unsupported: the host cannot make it (not root, no /dev/net/tun, no
        /dev/vhost-net), with the reason.
    """
    arr = ARRANGEMENTS.get(arrangement)
    if arr is None:
        raise UsageError(f"unknown network arrangement {arrangement!r}; known: "
                         f"{', '.join(ARRANGEMENTS)}")
    if arr.id == "vhost-net":
        reason = netns.vhost_net_reason()
        if reason:
            raise Unsupported(reason)
    if not arr.tap:
        return _user(arr)
    return _tap(arr, netns.Namespace.create(tag))


@contextmanager
def opened(arrangement: str, tag: str = "net") -> Iterator[NetSetup]:
    """:func:`open_setup`, closed (fds, namespace) whatever happens."""
    setup = open_setup(arrangement, tag)
    try:
        yield setup
    finally:
        setup.close()


__all__ = ["ARRANGEMENTS", "Arrangement", "NetSetup", "open_setup", "opened", "nic_args",
           "GUEST_MAC", "GUEST_TCP_PORT"]
