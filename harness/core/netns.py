"""Network namespaces a run creates for itself, and everything that lives in them.

Every tap, bridge and address a network case needs lives in a namespace made here
(``cprh-<tag>-<pid>-<hex>``), so no packet of a case reaches the host's own network.
A namespace is registered with the janitor (:mod:`harness.core.cleanup`) *before* it is
made, so a ``kill -9`` of the runner still removes it; :meth:`Namespace.remove` is
idempotent and the context manager calls it whatever happens.

Three ways into a namespace, each for what it suits:

- a **process** (QEMU, a tool): :meth:`Namespace.exec_prefix` is ``nsenter
  --net=/run/netns/NAME --``, which enters the namespace and execs its command in place
  (same pid: the harness's process model, PDEATHSIG and the janitor's pid watch hold
  unchanged; only the network namespace changes, not the mount namespace as ``ip netns
  exec`` would). :meth:`Namespace.wrapper` writes that as a script usable wherever a
  QEMU binary is expected; :meth:`Namespace.run` runs a short command inside.
- a **socket or fd** (a receiver, a tap fd for ``fd=``): :meth:`Namespace.call` runs a
  function on a fresh thread that has entered the namespace (``setns`` moves only the
  calling thread); what it creates belongs to the namespace for good and may be used
  from any thread afterwards. The thread ends with the call, so no thread of the
  runner is left inside.
- **/proc/net** as the namespace sees it (is a unix socket listening?):
  :meth:`Namespace.proc_net`, through a file opened once inside.

Where namespaces cannot be made (not root, no ``ip``/``nsenter``, no ``/dev/net/tun``
for taps, the kernel refuses) the functions raise :class:`Unsupported` with the reason.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import secrets
import shlex
import shutil
import socket
import struct
import subprocess
import threading
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar

from harness.core.cleanup import TMP_PREFIX, janitor
from harness.core.errors import HarnessError, Unsupported

T = TypeVar("T")

#: Every namespace the harness makes starts with this (the janitor removes no other).
PREFIX = TMP_PREFIX
NETNS_DIR = "/run/netns"
CMD_TIMEOUT_S = 10.0
_CLONE_NEWNET = 0x40000000
# <linux/if_tun.h>
_TUNSETIFF, _TUNSETQUEUE = 0x400454CA, 0x400454D9
_IFF_DETACH_QUEUE = 0x0400
_IFF_TAP, _IFF_NO_PI, _IFF_VNET_HDR, _IFF_MULTI_QUEUE = 0x0002, 0x1000, 0x4000, 0x0100
_TOOLS = {"ip": "iproute2", "nsenter": "util-linux"}

_lock = threading.Lock()
_active: Set["Namespace"] = set()


class NetnsError(HarnessError):
    """A command on a namespace failed (with what it said)."""


def unsupported_reason(tap: bool = True) -> Optional[str]:
    """Why this host cannot give a case its own namespace (with a tap when ``tap``),
    or None."""
    if os.geteuid() != 0:
        return f"network namespaces and taps need root (running as uid {os.geteuid()})"
    for tool, package in _TOOLS.items():
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (Debian: apt-get install {package})"
    if tap:
        try:
            os.close(os.open("/dev/net/tun", os.O_RDWR))
        except OSError as exc:
            return f"/dev/net/tun cannot be opened ({exc.strerror}): no tap devices here"
    return None


def require(tap: bool = True) -> None:
    """:raise Unsupported: with :func:`unsupported_reason`."""
    reason = unsupported_reason(tap)
    if reason:
        raise Unsupported(reason)


def vhost_net_reason() -> Optional[str]:
    """Why ``vhost=on`` cannot be tried here, or None."""
    if not os.path.exists("/dev/vhost-net"):
        return ("no /dev/vhost-net on this host (the vhost_net module is not loaded "
                "or not available): vhost=on cannot be tried")
    try:
        os.close(os.open("/dev/vhost-net", os.O_RDWR))
    except OSError as exc:
        return f"/dev/vhost-net cannot be opened ({exc.strerror})"
    return None


def active() -> Tuple["Namespace", ...]:
    """The namespaces this process made and has not removed yet."""
    with _lock:
        return tuple(ns for ns in _active if ns.owner_pid == os.getpid())


def _run(argv: Sequence[str], timeout: float = CMD_TIMEOUT_S) -> str:
    try:
        r = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise NetnsError(f"{' '.join(argv)}: no answer after {timeout:.0f} s") from None
    except OSError as exc:
        raise NetnsError(f"{' '.join(argv)}: cannot run it: {exc.strerror}") from None
    if r.returncode != 0:
        said = r.stderr.strip().replace("\n", " / ") or f"exit code {r.returncode}"
        raise NetnsError(f"{' '.join(argv)}: {said}")
    return r.stdout


class Namespace:
    """One network namespace of this run. Make it with :meth:`create`."""

    def __init__(self, name: str):
        self.name = name
        self.path = os.path.join(NETNS_DIR, name)
        self.owner_pid = os.getpid()
        self._proc_fds: Dict[str, int] = {}
        self._fd_lock = threading.Lock()
        self.removed = False

    @classmethod
    def create(cls, tag: str = "", tap: bool = True) -> "Namespace":
        """A new namespace with its loopback up, registered with the janitor.

        :raise Unsupported: the host cannot make one (:func:`unsupported_reason`, or the
            kernel's own refusal).
        """
        require(tap)
        name = f"{PREFIX}{tag + '-' if tag else ''}{os.getpid()}-{secrets.token_hex(3)}"
        ns = cls(name)
        janitor().watch_netns(name)  # first: a kill right after `ip netns add` is covered
        try:
            _run(["ip", "netns", "add", name])
        except NetnsError as exc:
            janitor().unwatch_netns(name)
            raise Unsupported(f"cannot create a network namespace: {exc}") from None
        with _lock:
            _active.add(ns)
        try:
            ns.ip("link", "set", "lo", "up")
            ns.call(_quiet_ipv6)
        except BaseException:
            ns.remove()
            raise
        return ns

    # -- inside the namespace ---------------------------------------------------------

    def ip(self, *args: str) -> str:
        """``ip -n NAME ARGS``; its output. :raise NetnsError: it failed."""
        return _run(["ip", "-n", self.name, *args])

    def add_tap(self, name: str = "tap0", multi_queue: bool = False,
                up: bool = True) -> str:
        """A persistent tap device ``name`` (multi-queue when asked), up."""
        self.ip("tuntap", "add", "dev", name, "mode", "tap",
                *(["multi_queue"] if multi_queue else []))
        if up:
            self.ip("link", "set", "dev", name, "up")
        return name

    def add_bridge(self, name: str = "br0", ports: Sequence[str] = ()) -> str:
        """A bridge ``name`` (up, no STP, forwarding at once) with ``ports`` on it."""
        self.ip("link", "add", "name", name, "type", "bridge", "stp_state", "0",
                "forward_delay", "0")
        for port in ports:
            self.ip("link", "set", "dev", port, "master", name)
        self.ip("link", "set", "dev", name, "up")
        return name

    def add_address(self, dev: str, cidr: str) -> None:
        self.ip("addr", "add", cidr, "dev", dev)

    def links(self) -> List[str]:
        """The names of the links in the namespace."""
        out = self.ip("-o", "link", "show")
        return [ln.split(":", 2)[1].strip().split("@")[0] for ln in out.splitlines()
                if ln.count(":") >= 2]

    def exec_prefix(self) -> List[str]:
        """Put before a command to run it inside (it keeps its pid: nsenter execs)."""
        return ["nsenter", f"--net={self.path}", "--"]

    def wrapper(self, binary: str, directory: str, name: str = "") -> str:
        """An executable script in ``directory`` that execs ``binary`` inside the
        namespace with its arguments: usable wherever a QEMU binary is expected."""
        path = os.path.join(directory, name or f"in-{self.name}")
        argv = " ".join(shlex.quote(a) for a in self.exec_prefix() + [binary])
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nexec {argv} "$@"\n')
        os.chmod(path, 0o755)
        return path

    def run(self, argv: Sequence[str], timeout: float = CMD_TIMEOUT_S) -> str:
        """Run ``argv`` inside, bounded; its output. :raise NetnsError: it failed."""
        return _run(self.exec_prefix() + list(argv), timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()`` on a fresh thread inside the namespace; its result (or exception)."""
        out: Dict[str, Any] = {}

        def body() -> None:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if _setns(fd, _CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise NetnsError(f"setns into {self.name}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                out["value"] = fn()
            except BaseException as exc:  # handed to the caller's thread
                out["error"] = exc

        t = threading.Thread(target=body, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join(CMD_TIMEOUT_S)
        if t.is_alive():
            raise NetnsError(f"a call inside {self.name} did not return in "
                             f"{CMD_TIMEOUT_S:.0f} s")
        if "error" in out:
            raise out["error"]
        return out["value"]

    def socket(self, family: int = socket.AF_INET,
               kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket of the namespace's network stack."""
        return self.call(lambda: socket.socket(family, kind))

    def open_tap(self, name: str, multi_queue: bool = False, detached: bool = False) -> int:
        """An fd attached to tap ``name`` of the namespace (as QEMU opens one: no packet
        info, a virtio-net header), for ``-netdev tap,fd=N``. ``detached`` (a multi-queue
        tap): the queue is detached again at once (``IFF_DETACH_QUEUE``): no packet is
        steered to it, yet it still reads the device's settings (its vnet header size).
        The caller closes it."""
        def attach() -> int:
            fd = os.open("/dev/net/tun", os.O_RDWR)
            flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR | (
                _IFF_MULTI_QUEUE if multi_queue else 0)
            try:
                fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), flags))
                if detached:
                    fcntl.ioctl(fd, _TUNSETQUEUE, struct.pack("16sH", b"",
                                                              _IFF_DETACH_QUEUE))
            except OSError as exc:
                os.close(fd)
                raise NetnsError(f"attach to tap {name} in {self.name}: {exc.strerror}") \
                    from None
            return fd
        return self.call(attach)

    def proc_net(self, table: str) -> str:
        """``/proc/net/<table>`` (``unix``, ``tcp``, ...) as the namespace sees it."""
        with self._fd_lock:
            if self.removed:
                return ""
            fd = self._proc_fds.get(table)
            if fd is None:
                fd = self.call(lambda: os.open(f"/proc/thread-self/net/{table}",
                                               os.O_RDONLY | os.O_CLOEXEC))
                self._proc_fds[table] = fd
            os.lseek(fd, 0, os.SEEK_SET)
            chunks = []
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    # -- removal ------------------------------------------------------------------------

    def remove(self) -> None:
        """Delete the namespace (its taps and bridges go with it once no process holds
        them). Idempotent; never raises for a namespace already gone."""
        with self._fd_lock:
            for fd in self._proc_fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._proc_fds.clear()
            self.removed = True
        if os.path.exists(self.path):
            try:
                _run(["ip", "netns", "del", self.name])
            except NetnsError:
                if os.path.exists(self.path):
                    raise
        with _lock:
            _active.discard(self)
        janitor().unwatch_netns(self.name)

    def __enter__(self) -> "Namespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"<Namespace {self.name}{' removed' if self.removed else ''}>"


def _quiet_ipv6() -> None:
    """No IPv6 in the namespace: its links would send DAD, router solicitations and MLD
    reports on their own (into the guest). /proc/sys/net is the caller's namespace."""
    for conf in ("all", "default"):
        with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
            f.write("1")


def _setns(fd: int, nstype: int) -> int:
    return ctypes.CDLL(None, use_errno=True).setns(fd, nstype)


def leftovers() -> List[str]:
    """Namespaces named like the harness's that exist now (any runner's)."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(PREFIX))
    except OSError:
        return []
