"""Nothing outlives the runner: a janitor process and private temp dirs.

Each QEMU child gets ``PR_SET_PDEATHSIG`` (see :mod:`harness.qemu.process`), which covers the
direct child when the runner dies. What that cannot cover (a wrapper script that forks
instead of exec'ing, temp dirs holding sockets) is covered by a *janitor*: a small
process started once per runner process, reading registrations from a pipe whose write
end only the runner holds. When the runner exits for any reason, including
``kill -9``, the janitor reads EOF, kills the registered processes (checked against
their start time so a recycled pid is never hit) and removes the registered paths.

The janitor is started in its own session so a Ctrl-C in the terminal does not kill
it before it has cleaned up.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from typing import ContextManager, Optional

from harness.core import hugepages

_lock = threading.Lock()
_janitor: Optional["Janitor"] = None

#: Prefix of every temp dir the harness creates; short so unix socket paths fit.
TMP_PREFIX = "cprh-"


class Janitor:
    def __init__(self) -> None:
        r, w = os.pipe()  # both ends non-inheritable by default
        self.owner_pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.core.cleanup", str(self.owner_pid)],
            stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=True, start_new_session=True,
            cwd="/",
        )
        os.close(r)
        self._w = w

    def _send(self, line: str) -> None:
        try:
            os.write(self._w, (line + "\n").encode())
        except OSError:
            pass

    def watch_pid(self, pid: int) -> None:
        """Kill ``pid`` (and its process group) if the runner dies. Identified by its
        start time too, so a recycled pid is never hit."""
        start = proc_starttime(pid)
        if start is not None:
            self._send(f"pid {pid} {start}")

    def unwatch_pid(self, pid: int) -> None:
        self._send(f"unpid {pid}")

    def watch_path(self, path: str) -> None:
        self._send(f"path {path}")

    def unwatch_path(self, path: str) -> None:
        self._send(f"unpath {path}")

    def watch_hugepages(self, size_kb: int, pages: int) -> None:
        """Give ``pages`` huge pages back if the runner dies (harness.core.hugepages)."""
        self._send(f"huge {size_kb} {pages}")

    def unwatch_hugepages(self, size_kb: int, pages: int) -> None:
        self._send(f"unhuge {size_kb} {pages}")

    def close(self) -> None:
        """Normal exit: EOF makes the janitor sweep what is left and exit."""
        try:
            os.close(self._w)
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def proc_starttime(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = stat[stat.rindex(b")") + 2:].split()
    return int(fields[19])


#: coredump_filter of a QEMU: anonymous private memory and ELF headers, enough for a
#: backtrace; not the shared guest RAM (hundreds of MiB to GiB).
COREDUMP_FILTER = b"0x11"


def _child_setup() -> None:  # runs in the child between fork and exec
    import ctypes
    import resource

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    # A QEMU that crashes leaves a core in its working directory (harness.qemu.crash
    # turns it into a backtrace); both survive the exec.
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,
                                                  resource.RLIM_INFINITY))
        with open("/proc/self/coredump_filter", "wb") as f:
            f.write(COREDUMP_FILTER)
    except (OSError, ValueError):
        pass


def popen_guarded(args: "list", **kw: object) -> "subprocess.Popen":
    """``subprocess.Popen`` for every QEMU the harness starts (pairs and probes alike):
    its own session, SIGKILL when the launching thread dies (PR_SET_PDEATHSIG), and
    registered with the janitor. Call :func:`released` once it has been reaped."""
    kw.setdefault("close_fds", True)
    proc = subprocess.Popen(args, start_new_session=True, preexec_fn=_child_setup,
                            **kw)  # type: ignore[call-overload]
    janitor().watch_pid(proc.pid)
    return proc


def released(proc: "subprocess.Popen") -> None:
    if proc.poll() is not None:
        janitor().unwatch_pid(proc.pid)


def janitor() -> Janitor:
    """The janitor of this process, started on first use (fork-safe)."""
    global _janitor
    with _lock:
        if _janitor is None or _janitor.owner_pid != os.getpid():
            _janitor = Janitor()
            atexit.register(_janitor.close)
        return _janitor


def tmp_base() -> str:
    """Where private dirs go: $CPRH_TMPDIR, else /tmp.

    Not $TMPDIR: unix socket paths must stay under 108 bytes.
    """
    return os.environ.get("CPRH_TMPDIR") or "/tmp"


#: The longest socket name the harness puts in a private dir, plus the dir's own name
#: ("cprh-XXXXXXXX/retry/s/" + "cpr.sock" and the like).
_SOCKET_SUFFIX_MAX = 36
UNIX_PATH_MAX = 107


def check_tmp_base(base: Optional[str] = None) -> str:
    """Fail early, with the fix, when socket paths under the base would not fit."""
    from harness.core.errors import UsageError

    base = base or tmp_base()
    if len(base.encode()) + _SOCKET_SUFFIX_MAX > UNIX_PATH_MAX:
        raise UsageError(f"temp dir base {base!r} ({len(base.encode())} bytes) is too long: "
                         f"unix socket paths under it would exceed {UNIX_PATH_MAX} bytes; "
                         f"set CPRH_TMPDIR to a short path such as /tmp")
    if not os.path.isdir(base) or not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"temp dir base {base!r} is not a writable directory "
                         f"(CPRH_TMPDIR)")
    return base


def private_tmpdir(tag: str = "", base: Optional[str] = None) -> str:
    """A new 0700 directory, removed by the janitor if the runner dies."""
    path = tempfile.mkdtemp(prefix=TMP_PREFIX + (tag + "-" if tag else ""),
                            dir=base or tmp_base())
    os.chmod(path, 0o700)
    janitor().watch_path(path)
    return path


def reserved_hugepages(pages: int, size_kb: int = 2048) -> ContextManager[None]:
    """:func:`harness.core.hugepages.reserved`, the janitor giving them back if the
    runner dies first."""
    j = janitor()
    return hugepages.reserved(pages, size_kb, j.watch_hugepages, j.unwatch_hugepages)


def remove_tmpdir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    janitor().unwatch_path(path)


# -- the janitor process itself ---------------------------------------------------------

def _kill_tree(pid: int, starttime: int) -> None:
    alive = proc_starttime(pid)
    if alive is not None and alive != starttime:
        return  # pid recycled: not ours
    # QEMU was started as the leader of its own session and process group. A wrapper
    # that forked (rather than exec'd) QEMU may already be dead, killed by its
    # PDEATHSIG, leaving QEMU in the group without a parent we could walk from; the
    # group outlives its leader, so kill it by its id.
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        import psutil
    except ImportError:  # e.g. a probe run by a system Python: the group kill suffices
        return
    try:
        procs = psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def _main(argv: list) -> int:
    # Only the runner's end of the pipe ends a janitor: a `pkill -f python` or a Ctrl-C
    # sent to every process would otherwise take it down before the runner it cleans
    # up after (SIGKILL still can).
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    pids: dict = {}
    paths: set = set()
    huge: dict = {}  # size_kb -> pages reserved
    for raw in sys.stdin.buffer:
        parts = raw.decode(errors="replace").rstrip("\n").split(" ", 2)
        if parts[0] == "pid" and len(parts) == 3:
            pids[int(parts[1])] = int(parts[2])
        elif parts[0] == "unpid" and len(parts) >= 2:
            pids.pop(int(parts[1]), None)
        elif parts[0] == "path" and len(parts) >= 2:
            paths.add(" ".join(parts[1:]))
        elif parts[0] == "unpath" and len(parts) >= 2:
            paths.discard(" ".join(parts[1:]))
        elif parts[0] in ("huge", "unhuge") and len(parts) == 3:
            sign = 1 if parts[0] == "huge" else -1
            huge[int(parts[1])] = huge.get(int(parts[1]), 0) + sign * int(parts[2])
    # EOF: the runner is gone (or closed us on a normal exit).
    for pid, ctime in pids.items():
        _kill_tree(pid, ctime)
    for path in paths:
        if os.path.basename(path).startswith(TMP_PREFIX) or "/" + TMP_PREFIX in path:
            shutil.rmtree(path, ignore_errors=True)
    for size_kb, pages in huge.items():  # the QEMUs holding them are gone now
        if pages > 0:
            try:
                hugepages.adjust(size_kb, -pages)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv))
