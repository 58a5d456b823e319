"""A synchronous, bounded QMP session on top of ``qemu.qmp``'s async client.

``qemu.qmp.legacy.QEMUMonitorProtocol`` has no timeout on ``connect`` and waits
forever on an ``int`` event timeout, so this module drives ``QMPClient`` on a private
event loop and bounds every await (each also clamped to the case's deadline,
:func:`harness.core.wait.budget`). Each session records a transcript: the greeting,
the capabilities negotiation, every command and reply, and every event, each with the
time the harness saw it (seconds since ``epoch``) and, for events, QEMU's own
timestamp. Events are collected after every command, so none is lost or left out.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from qemu.qmp import ConnectError, ExecuteError, QMPClient
from qemu.qmp.error import QMPError

from harness.core.errors import QMPCommandFailed, QMPConnectionLost, WaitTimeout
from harness.core.wait import budget

#: Time to wait for one command's reply unless the caller says otherwise.
DEFAULT_CMD_TIMEOUT = 15.0
#: A monitor that accepts but fails the greeting this often is not a QMP monitor.
NEGOTIATION_TRIES = 3


@dataclass
class TranscriptEntry:
    t: float
    direction: str  # "->", "<-", "event", "error"
    payload: Any

    def to_dict(self) -> Dict[str, Any]:
        return {"t": round(self.t, 6), "dir": self.direction, "msg": self.payload}


class QMPSession:
    """One QMP connection to one QEMU, named by its side (``src``/``dst``)."""

    def __init__(self, side: str, sock_path: str, log_path: Optional[str] = None,
                 epoch: Optional[float] = None):
        self.side = side
        self.sock_path = sock_path
        self.log_path = log_path
        self.transcript: List[TranscriptEntry] = []
        #: Every event received, in order (``wait_event`` consumes from a copy).
        self.all_events: List[Dict[str, Any]] = []
        self._t0 = time.monotonic() if epoch is None else epoch
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(side)
        self._backlog: List[Dict[str, Any]] = []
        self._connected = False
        self._closed = False

    # -- connection -----------------------------------------------------------------

    def connect(self, timeout: float, alive: Callable[[], None]) -> Dict[str, Any]:
        """Connect to QEMU's QMP server socket, retrying until ``timeout``, and negotiate.

        ``alive`` is called between attempts and must raise when QEMU has died, so a
        dead process fails fast instead of waiting out the timeout.

        :return: the greeting.
        :raise WaitTimeout: no monitor accepted and negotiated in time.
        :raise QMPConnectionLost: the socket accepts but its greeting or negotiation
            failed ``NEGOTIATION_TRIES`` times.
        :raise: whatever ``alive`` raises.
        """
        start = time.monotonic()
        timeout = budget(timeout)
        deadline = start + timeout
        last = "socket not created yet"
        failures = 0
        while True:
            alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(f"QMP monitor at {self.sock_path}", timeout,
                                  time.monotonic() - start, last, self.side, self.log_path)
            if os.path.exists(self.sock_path):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(min(remaining, 2.0))
                try:
                    sock.connect(self.sock_path)
                except OSError as exc:
                    sock.close()
                    last = f"connect: {exc.strerror or exc}"
                else:
                    sock.settimeout(None)
                    sock.setblocking(False)
                    try:
                        self._negotiate(sock, deadline)
                    except ConnectError as exc:
                        last = f"negotiation: {exc}"
                        self._client = QMPClient(self.side)
                        failures += 1
                        if failures >= NEGOTIATION_TRIES:
                            # It accepts connections but does not speak QMP: retrying
                            # until the timeout would only hide that.
                            alive()
                            raise QMPConnectionLost(self.side, "qmp_capabilities",
                                                    f"the QMP greeting and negotiation failed "
                                                    f"{failures} times: {exc}") from None
                    else:
                        self._connected = True
                        greeting = self._client.greeting
                        payload = greeting._asdict() if greeting is not None else None
                        self._log("<-", payload)
                        # qemu.qmp negotiates on connect: record it as the exchange it is.
                        self._log("->", {"execute": "qmp_capabilities"})
                        self._log("<-", {"return": {}})
                        self._drain()
                        return payload or {}
            time.sleep(0.02)

    @property
    def connected(self) -> bool:
        return self._connected and not self._closed

    def close(self) -> None:
        """Disconnect; idempotent, never raises. Events still queued are recorded."""
        if self._closed:
            return
        try:
            if self._connected:
                self._drain()
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - teardown must not raise
            pass
        self._closed = True
        try:
            if self._connected:
                self._loop.run_until_complete(
                    asyncio.wait_for(self._client.disconnect(), 5.0))
        except (Exception, asyncio.CancelledError):  # noqa: BLE001 - teardown must not raise
            pass
        finally:
            try:
                self._loop.close()
            except Exception:  # noqa: BLE001
                pass

    # -- commands ---------------------------------------------------------------------

    def cmd(self, name: str, args: Optional[Dict[str, Any]] = None,
            timeout: float = DEFAULT_CMD_TIMEOUT) -> Any:
        """Execute a command and return its ``return`` value.

        :raise QMPCommandFailed: QEMU answered with an error (class and ``desc`` kept).
        :raise QMPConnectionLost: the connection broke (QEMU died, or closed it).
        :raise WaitTimeout: no reply within ``timeout`` (or the case's deadline).
        """
        if self._closed:
            raise QMPConnectionLost(self.side, name, "the session is closed")
        self._log("->", {"execute": name, **({"arguments": args} if args else {})})
        try:
            ret = self._run(self._client.execute(name, args), timeout, f"reply to {name}")
        except ExecuteError as exc:
            err = {"class": exc.error_class, "desc": str(exc)}
            self._log("<-", {"error": err})
            raise QMPCommandFailed(self.side, name, args, exc.error_class, str(exc),
                                   self.log_path) from None
        except QMPError as exc:
            self._log("error", f"{type(exc).__name__}: {exc}")
            raise QMPConnectionLost(self.side, name, f"{type(exc).__name__}: {exc}") from None
        self._log("<-", {"return": ret})
        self._drain()
        return ret

    def try_cmd(self, name: str, args: Optional[Dict[str, Any]] = None,
                timeout: float = DEFAULT_CMD_TIMEOUT) -> Any:
        """Like :meth:`cmd` but returns ``None`` when QEMU is gone or silent (teardown
        paths); a QEMU error reply still raises QMPCommandFailed."""
        try:
            return self.cmd(name, args, timeout)
        except (QMPConnectionLost, WaitTimeout):
            return None

    def send_fd(self, name: str, fd: int, timeout: float = DEFAULT_CMD_TIMEOUT) -> None:
        """Hand ``fd`` to QEMU over SCM_RIGHTS and name it with ``getfd``.

        :raise: as :meth:`cmd`.
        """
        self._log("->", {"scm_rights": fd})
        self._client.send_fd_scm(fd)
        self.cmd("getfd", {"fdname": name}, timeout)

    # -- events -------------------------------------------------------------------------

    def _drain(self) -> None:
        # Let the reader task run, then move queued events into the backlog.
        if self._closed or not self._connected:
            return
        self._loop.run_until_complete(asyncio.sleep(0))
        for ev in self._client.events.clear():
            self._received(dict(ev))

    def _received(self, d: Dict[str, Any]) -> None:
        self._log("event", d)
        self._backlog.append(d)
        self.all_events.append(d)

    def events(self) -> List[Dict[str, Any]]:
        """All events received so far that nobody consumed (kept, not cleared)."""
        if self.connected:
            self._drain()
        return list(self._backlog)

    def wait_event(self, name: str, timeout: float,
                   match: Optional[Callable[[Dict[str, Any]], bool]] = None) -> Dict[str, Any]:
        """Wait for an event ``name`` (optionally matching a predicate) and consume it.

        Events that do not match stay in the backlog for later waits.

        :raise WaitTimeout: no such event within ``timeout`` (float seconds).
        """
        start = time.monotonic()
        timeout = budget(timeout)
        deadline = start + timeout
        while True:
            self._drain()
            for i, ev in enumerate(self._backlog):
                if ev.get("event") == name and (match is None or match(ev)):
                    return self._backlog.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [e.get("event") for e in self._backlog[-8:]]
                raise WaitTimeout(f"QMP event {name}", timeout, time.monotonic() - start,
                                  f"unconsumed events: {seen}", self.side, self.log_path)
            try:
                ev = self._loop.run_until_complete(
                    asyncio.wait_for(self._client.events.get(), min(remaining, 0.2)))
            except asyncio.TimeoutError:
                continue
            self._received(dict(ev))

    def _negotiate(self, sock: socket.socket, deadline: float) -> None:
        """qemu.qmp's connect on ``sock``. :raise ConnectError: it failed, or the monitor
        hung up as the session began."""
        try:
            self._run(self._client.connect(sock), deadline - time.monotonic(),
                      "QMP greeting and negotiation")
        except AssertionError:
            # qemu.qmp asserts its runstate is RUNNING once the negotiation is done; a
            # QEMU that exits right then (a target refusing the stream as soon as its
            # monitor is up: 11.1.3 refusing 9.1.50's machine type) leaves it
            # DISCONNECTING. A lost connection, like any other: drop this client.
            try:
                self._run(self._client.disconnect(), 2.0, "QMP disconnect")
            except (Exception, asyncio.CancelledError):  # noqa: BLE001 - already gone
                pass
            raise ConnectError("the monitor hung up as the session began",
                               EOFError("connection closed")) from None

    # -- helpers ------------------------------------------------------------------------

    def _run(self, coro: Any, timeout: float, what: str) -> Any:
        timeout = budget(timeout)
        start = time.monotonic()
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except asyncio.TimeoutError:
            self._log("error", f"timeout after {timeout:.1f}s waiting for {what}")
            raise WaitTimeout(what, timeout, time.monotonic() - start, None, self.side,
                              self.log_path) from None

    def _log(self, direction: str, payload: Any) -> None:
        self.transcript.append(TranscriptEntry(time.monotonic() - self._t0, direction, payload))

    def transcript_text(self) -> str:
        return "\n".join(json.dumps(e.to_dict(), default=str) for e in self.transcript)
