"""Migration channels, rendered for both sides.

A channel is rendered twice: as a QAPI ``MigrationChannel`` for the source's
``migrate`` command, and as an ``-incoming`` argument for the target. Kinds that need
host resources (a listening socket, a socket pair, a free port) allocate them here;
the caller closes them with :meth:`Channel.close` after the target has started.
"""
from __future__ import annotations

import json
import os
import select
import socket
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from harness.core import netns
from harness.core.errors import UsageError
from harness.core.wait import budget, wait_until

MAIN_KINDS = ("unix", "tcp", "fd", "exec", "file")
CPR_KINDS = ("unix", "fd", "tcp", "file", "none")

#: The longest an exec channel's FIFO is held open to let its writer go.
RELEASE_S = 5.0
#: Unix socket paths longer than this do not fit in sockaddr_un.sun_path.
UNIX_PATH_MAX = 107


@dataclass
class Channel:
    channel_type: str             # "main" or "cpr"
    kind: str
    src_addr: Optional[Dict[str, Any]]   # QAPI MigrationAddress for the source
    dst_incoming: Optional[str]   # the -incoming argument of the target
    #: QAPI MigrationAddress for the target's migrate-incoming (None: same as src_addr).
    #: The target gets its fds at launch (dst_pass_fds), so it names them by number.
    dst_addr: Optional[Dict[str, Any]] = None
    dst_pass_fds: Tuple[int, ...] = ()
    #: fds the source must receive via QMP ``getfd`` before ``migrate``: name -> fd
    src_getfd: Dict[str, int] = field(default_factory=dict)
    listen_path: Optional[str] = None   # a unix path the target listens on
    listen_port: Optional[int] = None   # a TCP port the target listens on
    fifo: Optional[str] = None          # the FIFO joining an exec channel's two commands
    _owned_fds: List[int] = field(default_factory=list)
    _owned_socks: List[socket.socket] = field(default_factory=list)

    def qapi(self) -> Optional[Dict[str, Any]]:
        if self.src_addr is None:
            return None
        return {"channel-type": self.channel_type, "addr": self.src_addr}

    def dst_qapi(self) -> Dict[str, Any]:
        return {"channel-type": self.channel_type, "addr": self.dst_addr or self.src_addr}

    def release(self, timeout: float = RELEASE_S) -> None:
        """Let go a writer that waits for a reader that will never come (an exec
        channel whose target died before it opened the FIFO): hold the read end open
        until the writer has opened it and written (at most ``timeout``), then close
        it, so the writer's next write fails instead of blocking forever."""
        if self.kind != "exec" or self.fifo is None:
            return
        try:
            fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return
        try:
            select.select([fd], [], [], budget(timeout))
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the harness's copies of fds handed to QEMU. Idempotent."""
        for s in self._owned_socks:
            s.close()
        self._owned_socks.clear()
        for fd in self._owned_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._owned_fds.clear()

    def wait_listening(self, timeout: float, alive: Any = None, side: str = "dst") -> None:
        """Wait until the target listens on :attr:`listen_path` (no-op for other kinds).

        Waiting for the path to exist is not enough: QEMU binds, then listens, and a
        connect between the two is refused, which fails the source's ``migrate``.
        /proc/net/unix shows the listening state without consuming a connection.
        """
        if self.listen_path is not None:
            ready = lambda: unix_listening(self.listen_path)  # noqa: E731
            where = self.listen_path
        elif self.listen_port is not None:
            ready = lambda: tcp_listening(self.listen_port)  # noqa: E731
            where = f"127.0.0.1:{self.listen_port}"
        else:
            return

        def probe() -> bool:
            if alive is not None:
                alive()
            return ready()

        wait_until(probe, what=f"{self.channel_type} channel listener at {where}",
                   timeout=timeout, side=side, interval=0.005,
                   show=lambda _v: "not listening")


def host_proc_net(table: str) -> List[str]:
    """The lines (header skipped) of ``/proc/net/<table>`` as this process sees it (stdlib
    only: the reproducer carries it verbatim)."""
    try:
        with open(f"/proc/net/{table}") as f:
            return f.read().splitlines()[1:]
    except OSError:
        return []


def _proc_net(table: str) -> Iterator[str]:
    """``host_proc_net``, then the table as each network namespace this runner made sees
    it: a QEMU started inside one (harness.core.netns) listens where the host's view does
    not show it."""
    yield from host_proc_net(table)
    for ns in netns.active():
        yield from ns.proc_net(table).splitlines()[1:]


def unix_listening(path: str) -> bool:
    """True if some process listens on the unix socket ``path``."""
    for line in _proc_net("unix"):
        parts = line.split()
        # Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 = ACCEPTCON
        if len(parts) >= 8 and parts[-1] == path and int(parts[3], 16) & 0x10000:
            return True
    return False


def tcp_listening(port: int) -> bool:
    """True if some socket listens on TCP ``port`` (IPv4)."""
    for line in _proc_net("tcp"):
        parts = line.split()
        # sl local_address rem_address st ...; st 0A = LISTEN
        if len(parts) > 3 and parts[3] == "0A" and \
                int(parts[1].rsplit(":", 1)[1], 16) == port:
            return True
    return False


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the kernel's choice, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _check_unix_path(path: str) -> str:
    if len(path.encode()) > UNIX_PATH_MAX:
        raise UsageError(f"unix socket path is {len(path.encode())} bytes, longer than the "
                         f"{UNIX_PATH_MAX} the kernel accepts: {path}")
    return path


def _unix_addr(path: str) -> Dict[str, Any]:
    return {"transport": "socket", "type": "unix", "path": path}


def main_channel(kind: str, workdir: str) -> Channel:
    """The main (device state) channel of the given kind."""
    if kind == "unix":
        path = _check_unix_path(os.path.join(workdir, "main.sock"))
        return Channel("main", kind, _unix_addr(path), f"unix:{path}")
    if kind == "tcp":
        port = free_tcp_port()
        return Channel("main", kind,
                       {"transport": "socket", "type": "inet", "host": "127.0.0.1",
                        "port": str(port)},
                       f"tcp:127.0.0.1:{port}")
    if kind == "tcp0":
        # Port 0 on the target: the CPR doc says it is not allowed.
        return Channel("main", kind,
                       {"transport": "socket", "type": "inet", "host": "127.0.0.1",
                        "port": "0"},
                       "tcp:127.0.0.1:0")
    if kind == "file":
        path = os.path.join(workdir, "main.state")
        return Channel("main", kind, {"transport": "file", "filename": path, "offset": 0},
                       f"file:{path}")
    if kind == "fd":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        dst_addr = {"transport": "socket", "type": "fd", "str": str(b.fileno())}
        ch = Channel("main", kind, {"transport": "socket", "type": "fd", "str": "migmain"},
                     json.dumps({"channel-type": "main", "addr": dst_addr}), dst_addr=dst_addr,
                     dst_pass_fds=(b.fileno(),), src_getfd={"migmain": a.fileno()})
        ch._owned_socks += [a, b]
        return ch
    if kind == "exec":
        # A fixed command pair joined by a FIFO: no shell string is built from input.
        fifo = os.path.join(workdir, "main.fifo")
        os.mkfifo(fifo, 0o600)
        dst_addr = {"transport": "exec", "args": ["/bin/dd", f"if={fifo}", "status=none"]}
        return Channel("main", kind,
                       {"transport": "exec", "args": ["/bin/dd", f"of={fifo}", "status=none"]},
                       json.dumps({"channel-type": "main", "addr": dst_addr}), dst_addr=dst_addr,
                       fifo=fifo)
    raise UsageError(f"unknown main channel kind {kind!r}; known: {', '.join(MAIN_KINDS)}")


def cpr_channel(kind: str, workdir: str) -> Channel:
    """The cpr channel (memfds over SCM_RIGHTS) of the given kind."""
    path = _check_unix_path(os.path.join(workdir, "cpr.sock"))
    if kind == "unix":
        addr = _unix_addr(path)
        return Channel("cpr", kind, addr,
                       json.dumps({"channel-type": "cpr", "addr": addr}), listen_path=path)
    if kind == "fd":
        # Pre-create the listening socket and hand it to the target, as QEMU's own
        # qtest does: the source can connect as soon as the target exists, no race.
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(path)
        lsock.listen(1)
        dst_addr = {"transport": "socket", "type": "fd", "str": str(lsock.fileno())}
        ch = Channel("cpr", kind, _unix_addr(path),
                     json.dumps({"channel-type": "cpr", "addr": dst_addr}), dst_addr=dst_addr,
                     dst_pass_fds=(lsock.fileno(),))
        ch._owned_socks.append(lsock)
        return ch
    if kind == "tcp":
        port = free_tcp_port()
        addr = {"transport": "socket", "type": "inet", "host": "127.0.0.1", "port": str(port)}
        return Channel("cpr", kind, addr, json.dumps({"channel-type": "cpr", "addr": addr}),
                       listen_port=port)
    if kind == "file":
        fpath = os.path.join(workdir, "cpr.state")
        addr = {"transport": "file", "filename": fpath, "offset": 0}
        return Channel("cpr", kind, addr, json.dumps({"channel-type": "cpr", "addr": addr}))
    if kind == "none":
        return Channel("cpr", kind, None, None)
    raise UsageError(f"unknown cpr channel kind {kind!r}; known: {', '.join(CPR_KINDS)}")
