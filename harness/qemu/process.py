"""One QEMU process: command line, own log file, QMP, bounded waits, teardown.

Launch and QMP connect are separate steps: a cpr-transfer target creates its monitor
only after it has read CPR state from the cpr channel.

QEMU never inherits the runner's stdout/stderr (a killed runner would leave pipes held
open by orphans): its output goes to its own log file. It dies with the runner: where
the binary has it, ``-run-with exit-with-parent=on``; always ``PR_SET_PDEATHSIG`` set
in the child before exec, and the janitor (:mod:`harness.core.cleanup`) kills what
escapes both. PDEATHSIG fires when the *thread* that forked exits, so launch from a
thread that lives as long as the VM (the test's own thread).

Intent is recorded (``quit``, ``killed``, ``refused``): an exit the harness caused or
expected is not reported as a crash; :meth:`QemuProcess.died_unexpectedly` says when
one was not.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence

from harness.core.cleanup import popen_guarded, proc_starttime, released
from harness.core.errors import AbnormalShutdown, VMLaunchFailure, WaitTimeout
from harness.core.logs import tail
from harness.core.wait import wait_until
from harness.qemu.qmp import QMPSession
from harness.qemu.states import Intent


def describe_exit(code: Optional[int]) -> str:
    """``exited with code 1``, ``was killed by signal 11 (SIGSEGV)``, ``did not exit``."""
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class QemuProcess:
    """A QEMU process on one side (``src`` or ``dst``) of a transfer, or a probe.

    ``exit_with_parent``: add ``-run-with exit-with-parent=on`` (only for binaries that
    have it; the probe says so). ``prefix``: a command put before the binary that execs
    it in place (``nsenter --net=... --``): the pid stays QEMU's, and with it PDEATHSIG
    and the janitor's watch.
    """

    def __init__(self, side: str, binary: str, args: Sequence[str], workdir: str,
                 logdir: str, pass_fds: Sequence[int] = (),
                 env: Optional[Dict[str, str]] = None, exit_with_parent: bool = False,
                 log_name: Optional[str] = None, epoch: Optional[float] = None,
                 prefix: Sequence[str] = ()):
        self.side = side
        self.binary = binary
        #: Its working directory (private): where a core dump lands.
        self.workdir = self.core_dir = workdir
        #: The program that really runs (through wrappers), once seen: for gdb.
        self.exe: Optional[str] = None
        self.qmp_path = os.path.join(workdir, f"{side}.qmp")
        self.log_path = os.path.join(logdir, log_name or f"{side}.log")
        self.args = list(args)
        ewp = ["-run-with", "exit-with-parent=on"] if exit_with_parent else []
        self.cmdline: List[str] = [*prefix, binary, *self.args, *ewp, "-qmp",
                                   f"unix:{self.qmp_path},server=on,wait=off"]
        self.pass_fds = tuple(pass_fds)
        self.env = env
        #: Transcript times count from here (the case's start, shared by both sides).
        self.epoch = epoch
        self.proc: Optional[subprocess.Popen] = None
        self.qmp: Optional[QMPSession] = None
        self.exitcode: Optional[int] = None
        #: Why the process ended, when we ended it or expected it to end (None: we
        #: did not).
        self.intent: Optional[Intent] = None
        #: When it was launched and when it was first seen dead (time.monotonic()).
        self.launched_at: Optional[float] = None
        self.exited_at: Optional[float] = None
        self._starttime: Optional[int] = None

    def adopt(self, old: "QemuProcess") -> None:
        """Become the QEMU ``old`` exec'd into (cpr-exec): the same process, this
        object's command line (given to the exec) and monitor, ``old``'s log."""
        self.proc, self.launched_at, self._starttime = old.proc, old.launched_at, old._starttime
        self.log_path, self.core_dir = old.log_path, old.core_dir
        old.intent = Intent.EXECED

    # -- life cycle --------------------------------------------------------------------

    def launch(self) -> None:
        """Start QEMU with its output in its own log.

        :raise VMLaunchFailure: the binary is missing or cannot be executed.
        """
        log = open(self.log_path, "ab")
        try:
            self.proc = popen_guarded(
                self.cmdline, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds, env=self.env, cwd=self.workdir)
        except FileNotFoundError:
            raise VMLaunchFailure(self.side, None, self.cmdline, self.log_path,
                                  f"executable not found: {self.binary}", "at exec") from None
        except PermissionError as exc:
            raise VMLaunchFailure(self.side, None, self.cmdline, self.log_path,
                                  f"cannot execute {self.binary}: {exc}", "at exec") from None
        finally:
            log.close()
        self.launched_at = time.monotonic()
        # Identity by /proc start time, as the janitor's: a recycled pid is not ours.
        self._starttime = proc_starttime(self.proc.pid)

    @property
    def name(self) -> str:
        """Its artifact name: its log's (``dst``, ``dst-retry``, ``src``...)."""
        base = os.path.basename(self.log_path)
        return base[:-len(".log")] if base.endswith(".log") else base

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
            if self.exited_at is None:
                self.exited_at = time.monotonic()
        return code

    def is_running(self) -> bool:
        return self.proc is not None and self.poll() is None

    def died_unexpectedly(self) -> bool:
        """It exited, and the harness neither ended it nor expected it to end."""
        return self.proc is not None and self.poll() is not None and self.intent is None

    def check_alive(self, when: str = "during start-up") -> None:
        """:raise VMLaunchFailure: QEMU has exited (with the log tail)."""
        code = self.poll()
        if code is not None and self.intent is None:
            raise VMLaunchFailure(self.side, code, self.cmdline, self.log_path,
                                  tail(self.log_path), when)

    def connect_qmp(self, timeout: float) -> QMPSession:
        """Connect to the monitor, retrying until it accepts.

        :raise VMLaunchFailure: QEMU exited before its monitor came up.
        :raise WaitTimeout: the monitor did not come up in time.
        """
        session = QMPSession(self.side, self.qmp_path, self.log_path, epoch=self.epoch)
        try:
            session.connect(timeout, lambda: self.check_alive("before its QMP monitor came up"))
        except BaseException:
            session.close()
            raise
        self.qmp = session
        self.note_exe()
        return session

    def note_exe(self) -> None:
        """Record the program the process runs now (a wrapper has exec'd it by now)."""
        try:
            self.exe = os.readlink(f"/proc/{self.pid}/exe")
        except OSError:
            pass

    def wait_exit(self, timeout: float) -> int:
        """Wait for QEMU to exit on its own.

        :raise WaitTimeout: it is still running after ``timeout``.
        """
        assert self.proc is not None
        waited = wait_until(self.poll, what="QEMU to exit", timeout=timeout, side=self.side,
                            goal=lambda code: code is not None, log_path=self.log_path,
                            show=lambda _c: "running")
        return waited.value

    def expect_exit(self, intent: Intent = Intent.REFUSED) -> None:
        """Record that an exit of this QEMU is expected (a refusing target)."""
        self.intent = self.intent or intent

    def shutdown(self, timeout: float = 10.0) -> Optional[int]:
        """Stop QEMU whatever its state; idempotent.

        QMP ``quit`` first, then SIGTERM, then SIGKILL of the process group and any
        descendants, each with a bounded wait; the monitor is closed and the process
        reaped in every case.

        :raise AbnormalShutdown: QEMU was running with a monitor but ignored ``quit``
            and had to be signalled (raised after everything is cleaned up).
        """
        forced = ""
        try:
            if self.proc is not None and self.proc.poll() is None:
                asked = False
                if self.qmp is not None and self.qmp.connected:
                    self.intent = self.intent or Intent.QUIT
                    asked = True
                    self.qmp.try_cmd("quit", timeout=min(3.0, timeout))
                    self._wait_quietly(timeout / 2)
                if self.proc.poll() is None:
                    self.intent = self.intent or Intent.KILLED
                    self._signal_all(signal.SIGTERM)
                    self._wait_quietly(min(3.0, timeout / 2))
                    forced = "terminated (SIGTERM)" if asked else ""
                if self.proc.poll() is None:
                    self._signal_all(signal.SIGKILL)
                    self._wait_quietly(5.0)
                    forced = "killed (SIGKILL)" if asked else ""
            if self.proc is not None:
                self._signal_descendants(signal.SIGKILL)
        finally:
            if self.qmp is not None:
                self.qmp.close()
            if self.proc is not None:
                self.poll()
                released(self.proc)
        if forced:
            raise AbnormalShutdown(self.side, forced, self.log_path)
        return self.exitcode

    def kill(self) -> None:
        """Kill on purpose (fault injection): recorded so it is not reported as a crash."""
        self.intent = Intent.KILLED
        if self.is_running():
            self._signal_all(signal.SIGKILL)
            self._wait_quietly(5.0)
            self.poll()

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
        # Imported here: the probe runs this module under a system Python too (a user
        # without the venv), where the process-group kill alone must do.
        try:
            import psutil
        except ImportError:
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


__all__ = ["QemuProcess", "describe_exit", "Intent", "WaitTimeout"]
