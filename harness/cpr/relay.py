"""A unix-socket relay for the main channel, for fault injection.

The source connects to the relay instead of the target; the relay connects to the
target and forwards both ways. After ``hold_after`` bytes from the source it stops
forwarding (keeping both connections open), so a fault can be injected while the main
channel is provably mid-stream. QEMU 10.0.2 sends cpr-transfer's device state in its
final, unthrottled phase, so ``max-bandwidth`` cannot hold the stream open.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import time
from typing import List, Optional

from harness.core.errors import WaitTimeout
from harness.core.wait import budget


class Relay:
    def __init__(self, listen_path: str, target_path: str, hold_after: int = 4096):
        self.listen_path = listen_path
        self.target_path = target_path
        self.hold_after = hold_after
        self.forwarded = 0
        self.held = threading.Event()
        self.error: Optional[str] = None
        self._stop = threading.Event()
        self._lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._lsock.bind(listen_path)
        self._lsock.listen(1)
        self._socks: List[socket.socket] = [self._lsock]
        self._thread = threading.Thread(target=self._run, name="cprh-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                r, _, _ = select.select([self._lsock], [], [], 0.1)
                if r:
                    break
            else:
                return
            src, _ = self._lsock.accept()
            self._socks.append(src)
            dst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._socks.append(dst)
            dst.connect(self.target_path)
            while not self._stop.is_set():
                r, _, _ = select.select([src, dst], [], [], 0.1)
                for s in r:
                    if s is src and self.held.is_set():
                        continue
                    data = s.recv(65536 if s is dst else
                                  max(1, self.hold_after - self.forwarded))
                    if not data:
                        return
                    (dst if s is src else src).sendall(data)
                    if s is src:
                        self.forwarded += len(data)
                        if self.forwarded >= self.hold_after:
                            self.held.set()
                if self.held.is_set():
                    time.sleep(0.01)  # holding: only the target->source path stays live
        except OSError as exc:
            self.error = str(exc)

    def wait_held(self, timeout: float) -> None:
        """:raise WaitTimeout: the stream did not reach ``hold_after`` bytes in time."""
        start = time.monotonic()
        timeout = budget(timeout)
        if not self.held.wait(timeout):
            raise WaitTimeout(f"the main channel to carry {self.hold_after} bytes through "
                              f"the relay", timeout, time.monotonic() - start,
                              f"{self.forwarded} bytes forwarded; {self.error or 'no error'}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self._socks:
            s.close()
        try:
            os.unlink(self.listen_path)
        except OSError:
            pass
