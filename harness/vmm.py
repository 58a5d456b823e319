"""One QEMU process: command line, own log file, QMP, bounded waits, teardown.

Launch and QMP connect are separate steps: a cpr-transfer target creates its monitor
only after it has read CPR state from the cpr channel.

QEMU never inherits the runner's stdout/stderr (a killed runner would leave pipes held
open by orphans): its output goes to its own log file. It dies with the runner:
``PR_SET_PDEATHSIG`` is set in the child before exec (QEMU 10.0.2 has no
``-run-with exit-with-parent``), and the janitor (:mod:`harness.cleanup`) kills what
escapes that. Note that PDEATHSIG fires when the *thread* that forked exits, so launch
from a thread that lives as long as the VM (the test's own thread).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence

import psutil

from harness.cleanup import popen_guarded, proc_starttime, released
from harness.errors import VMLaunchFailure, WaitTimeout
from harness.qmp import QMPSession

def tail(path: str, lines: int = 20, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


class QemuProcess:
    """A QEMU process on one side (``src`` or ``dst``) of a transfer."""

    def __init__(self, side: str, binary: str, args: Sequence[str], workdir: str,
                 logdir: str, pass_fds: Sequence[int] = (), env: Optional[Dict[str, str]] = None):
        self.side = side
        self.binary = binary
        self.qmp_path = os.path.join(workdir, f"{side}.qmp")
        self.log_path = os.path.join(logdir, f"{side}.log")
        self.args = list(args)
        self.cmdline: List[str] = [binary, *self.args, "-qmp",
                                   f"unix:{self.qmp_path},server=on,wait=off"]
        self.pass_fds = tuple(pass_fds)
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.qmp: Optional[QMPSession] = None
        self.exitcode: Optional[int] = None
        #: Why the process ended, when we ended it: "quit", "killed", or None.
        self.intent: Optional[str] = None
        self._starttime: Optional[int] = None

    # -- life cycle --------------------------------------------------------------------

    def launch(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = popen_guarded(
                self.cmdline, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds, env=self.env, cwd="/")
        except FileNotFoundError:
            raise VMLaunchFailure(self.side, None, self.cmdline, self.log_path,
                                  f"executable not found: {self.binary}", "at exec") from None
        except PermissionError as exc:
            raise VMLaunchFailure(self.side, None, self.cmdline, self.log_path,
                                  f"cannot execute {self.binary}: {exc}", "at exec") from None
        finally:
            log.close()
        # Identity by /proc start time, as the janitor's: a recycled pid is not ours.
        self._starttime = proc_starttime(self.proc.pid)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not launched"
        return self.proc.pid

    def poll(self) -> Optional[int]:
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is not None:
            self.exitcode = code
        return code

    def is_running(self) -> bool:
        return self.proc is not None and self.poll() is None

    def check_alive(self, when: str = "during start-up") -> None:
        """Raise VMLaunchFailure with the log tail if QEMU has exited."""
        code = self.poll()
        if code is not None and self.intent is None:
            raise VMLaunchFailure(self.side, code, self.cmdline, self.log_path,
                                  tail(self.log_path), when)

    def connect_qmp(self, timeout: float) -> QMPSession:
        session = QMPSession(self.side, self.qmp_path, self.log_path)
        try:
            session.connect(timeout, lambda: self.check_alive("before its QMP monitor came up"))
        except BaseException:
            session.close()
            raise
        self.qmp = session
        return session

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit on its own; WaitTimeout if it does not."""
        assert self.proc is not None
        start = time.monotonic()
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise WaitTimeout("QEMU to exit", timeout, time.monotonic() - start, "running",
                              self.side, self.log_path) from None
        self.exitcode = code
        return code

    def shutdown(self, timeout: float = 10.0) -> Optional[int]:
        """Stop QEMU whatever its state. Idempotent; never raises.

        QMP ``quit`` first, then SIGTERM, then SIGKILL of the process group and any
        descendants, each with a bounded wait.
        """
        try:
            if self.proc is not None and self.proc.poll() is None:
                if self.qmp is not None and self.qmp.connected:
                    self.intent = self.intent or "quit"
                    self.qmp.try_cmd("quit", timeout=min(3.0, timeout))
                    self._wait_quietly(timeout / 2)
                if self.proc.poll() is None:
                    self.intent = self.intent or "killed"
                    self._signal_all(signal.SIGTERM)
                    self._wait_quietly(min(3.0, timeout / 2))
                if self.proc.poll() is None:
                    self._signal_all(signal.SIGKILL)
                    self._wait_quietly(5.0)
            if self.proc is not None:
                self._signal_descendants(signal.SIGKILL)
        finally:
            if self.qmp is not None:
                self.qmp.close()
            if self.proc is not None:
                self.exitcode = self.proc.poll()
                released(self.proc)
        return self.exitcode

    def kill(self) -> None:
        """Kill on purpose (fault injection): recorded so it is not reported as a crash."""
        self.intent = "killed"
        if self.is_running():
            self._signal_all(signal.SIGKILL)
            self._wait_quietly(5.0)

    def _wait_quietly(self, timeout: float) -> None:
        assert self.proc is not None
        try:
            self.proc.wait(timeout=max(timeout, 0.01))
        except subprocess.TimeoutExpired:
            pass

    def _signal_all(self, sig: int) -> None:
        assert self.proc is not None
        self._signal_descendants(sig)
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _signal_descendants(self, sig: int) -> None:
        assert self.proc is not None
        if self._starttime is None or proc_starttime(self.proc.pid) != self._starttime:
            return
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for k in kids:
            try:
                k.send_signal(sig)
            except psutil.Error:
                pass

    def __enter__(self) -> "QemuProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "not launched" if self.proc is None else (
            f"pid {self.proc.pid}" + ("" if self.poll() is None else f", exited {self.exitcode}"))
        return f"<QemuProcess {self.side} {state}>"
