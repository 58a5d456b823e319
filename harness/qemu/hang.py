"""Why a QEMU that is alive does not answer or does not go on: a hang, diagnosed.

A QEMU that never comes up after reading CPR state, stops answering its monitor, or
never ends a migration is that QEMU's failure, not the harness's. :func:`diagnose_hang`
says what it was doing when the harness gave up on it: its process state and wait
channel, every thread's (from /proc), the backtraces of all its threads (``gdb -batch``
attached to the live process: gdb continues a stopped process to attach, which does
not matter here, the harness tears it down next) written beside its log, and the last
lines of its log. Each step that cannot be done is said, never guessed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Tuple

from harness.core.logs import essential, tail
from harness.core.sides import Side
from harness.core.wait import budget
from harness.qemu.crash import NO_SYMBOLS, debug_info

GDB_ATTACH_TIMEOUT_S = 60.0
#: /proc/PID/stat's state letters, in words.
STATES = {"R": "running", "S": "sleeping", "D": "uninterruptible wait", "T": "stopped",
          "t": "stopped by a tracer", "Z": "zombie", "X": "dead", "I": "idle"}
_THREAD = re.compile(r"^Thread (\d+) \(.*?LWP (\d+)\)(?: \"([^\"]*)\")?")
_FRAME = re.compile(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \(")


@dataclass(frozen=True)
class ThreadState:
    tid: int
    name: str
    state: str
    wchan: str

    def describe(self) -> str:
        return f"{self.name} {self.state}" + (f" in {self.wchan}" if self.wchan else "")


@dataclass(frozen=True)
class Hang:
    """A live QEMU that did not do what the harness waited for."""
    side: Side
    name: str
    waiting_for: str
    elapsed_s: float
    state: str
    wchan: str
    threads: Tuple[ThreadState, ...] = ()
    #: The main thread's frames, innermost first (the whole backtrace is in the file).
    frames: Tuple[str, ...] = ()
    backtrace_path: str = ""
    log_tail: str = ""
    note: str = ""

    def describe(self) -> str:
        parts = [f"{self.side} QEMU hung: no {self.waiting_for} after {self.elapsed_s:.1f} s",
                 f"process {self.state}" + (f" in {self.wchan}" if self.wchan else "")]
        stopped = [t.name for t in self.threads if t.state == STATES["T"]]
        if self.threads:
            parts.append(f"{len(self.threads)} threads"
                         + (f", {len(stopped)} stopped" if stopped else ""))
        if self.frames:
            parts.append("main thread: " + " <- ".join(self.frames[:5]))
        elif self.note:
            parts.append(f"no backtrace: {self.note}")
        text = "; ".join(parts)
        last = essential(self.log_tail).strip().splitlines()[-2:]
        return text + (f"; log: {' | '.join(last)}" if last else "")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _state_of(stat: str) -> str:
    # /proc/PID/stat: "pid (comm) S ...": the comm may hold spaces and parentheses.
    rest = stat.rsplit(")", 1)[-1].split()
    letter = rest[0] if rest else "?"
    return STATES.get(letter, letter)


def threads_of(pid: int) -> List[ThreadState]:
    out = []
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return out
    for tid in tids:
        base = f"/proc/{pid}/task/{tid}"
        wchan = _read(f"{base}/wchan")
        out.append(ThreadState(tid, _read(f"{base}/comm"), _state_of(_read(f"{base}/stat")),
                               "" if wchan == "0" else wchan))
    return out


def main_frames(text: str, pid: int) -> List[str]:
    """The frames of thread ``pid`` (QEMU's main loop) in ``thread apply all bt``."""
    frames: List[str] = []
    current = None
    for line in text.splitlines():
        m = _THREAD.match(line.strip())
        if m:
            current = int(m.group(2))
            continue
        f = _FRAME.match(line.strip())
        if f and current == pid:
            frames.append(f.group(2))
    return frames


def _backtraces(pid: int, exe: Optional[str], out_path: str, header: str
                ) -> Tuple[List[str], str, str]:
    """(main thread's frames, the file written, a note on what could not be had)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return [], "", "gdb is not installed (apt-get install gdb; scripts/setup-host.sh does)"
    cmd = [gdb, "-batch", "-nx", "-ex", "set pagination off", "-ex", "info threads",
           "-ex", "thread apply all bt 25", "-p", str(pid)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                           stdin=subprocess.DEVNULL, timeout=budget(GDB_ATTACH_TIMEOUT_S))
    except subprocess.TimeoutExpired:
        return [], "", f"gdb did not finish within {GDB_ATTACH_TIMEOUT_S:g} s"
    symbols = bool(exe) and debug_info(exe or "")
    with open(out_path, "w") as f:
        f.write(header + f"# {'with' if symbols else 'WITHOUT'} debug symbols"
                + ("" if symbols else NO_SYMBOLS) + "\n" + p.stdout
                + ("\n--- gdb's stderr ---\n" + p.stderr if p.stderr.strip() else ""))
    frames = main_frames(p.stdout, pid)
    return frames, out_path, "" if frames else "gdb could not attach: " + \
        (essential(p.stderr).strip().splitlines() or ["no output"])[-1]


def diagnose_hang(side: Side, name: str, pid: int, exe: Optional[str], waiting_for: str,
                  elapsed_s: float, out_path: str, log_path: str) -> Hang:
    """What QEMU ``pid`` is doing now: states, wait channels, backtraces, its log."""
    state = _state_of(_read(f"/proc/{pid}/stat")) if os.path.exists(f"/proc/{pid}") \
        else "gone"
    wchan = _read(f"/proc/{pid}/wchan")
    threads = threads_of(pid)
    header = (f"# {side} QEMU (pid {pid}) hung waiting for {waiting_for}; process {state}; "
              f"binary {exe or 'unknown'}\n"
              + "".join(f"# thread {t.tid}: {t.describe()}\n" for t in threads))
    frames, path, note = _backtraces(pid, exe, out_path, header)
    return Hang(side, name, waiting_for, round(elapsed_s, 1), state,
                "" if wchan == "0" else wchan, tuple(threads), tuple(frames), path,
                tail(log_path, 5), note)
