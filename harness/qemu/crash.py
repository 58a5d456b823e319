"""Why a QEMU crashed: its core dump, read by gdb, as a backtrace and the top frames.

QEMUs start with an unlimited core size and a coredump_filter that leaves the shared
guest RAM out (:mod:`harness.core.cleanup`), in their own working directory. When one
dies by a signal that dumps core, :func:`diagnose` finds the core there (a relative
``kernel.core_pattern``; through ``coredumpctl`` when systemd-coredump takes it), runs
``gdb -batch`` on it with the binary that really ran, writes the whole backtrace beside
the QEMU's log and returns the crashing thread's top frames. Each step that cannot be
done is said, never guessed: no gdb, no core (and why), no debug symbols.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
from dataclasses import dataclass, field
from typing import List, Optional

from harness.core.wait import budget

#: Signals whose default action dumps core.
CORE_SIGNALS = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                signal.SIGTRAP, signal.SIGSYS, signal.SIGQUIT}
GDB_TIMEOUT_S = 60.0
NO_SYMBOLS = (" (install the binary's -dbgsym package where the archive has one; frames "
              "are its exported names only, static functions show as ??)")
_FRAME = re.compile(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \(")


@dataclass
class Crash:
    side: str
    signal: str
    frames: List[str] = field(default_factory=list)   # the crashing thread's, innermost first
    backtrace_path: Optional[str] = None
    note: str = ""                                    # what could not be had, and why

    def top(self, n: int = 5) -> str:
        return " <- ".join(self.frames[:n])

    def describe(self) -> str:
        if self.frames:
            return f"top frames: {self.top()}"
        return f"no backtrace: {self.note}" if self.note else "no backtrace"

    def to_dict(self) -> dict:
        return {"side": self.side, "signal": self.signal, "frames": self.frames[:12],
                "backtrace": self.backtrace_path, "note": self.note}


def dumps_core(exitcode: Optional[int]) -> bool:
    return exitcode is not None and exitcode < 0 and -exitcode in {int(s) for s in CORE_SIGNALS}


def _core_pattern() -> str:
    try:
        with open("/proc/sys/kernel/core_pattern") as f:
            return f.read().strip()
    except OSError:
        return ""


def find_core(pid: int, core_dir: str) -> tuple:
    """(path of the core, note): the core dumped by ``pid``, or why there is none."""
    pattern = _core_pattern()
    if pattern.startswith("|"):
        if shutil.which("coredumpctl") and "systemd-coredump" in pattern:
            out = os.path.join(core_dir, f"core.{pid}")
            p = subprocess.run(["coredumpctl", "dump", str(pid), "-o", out], timeout=budget(30),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if p.returncode == 0 and os.path.exists(out):
                return out, ""
        return None, f"cores go to a program ({pattern.split()[0][1:]}), not to a file"
    if pattern.startswith("/"):
        core_dir = os.path.dirname(pattern)
    try:
        names = sorted(os.listdir(core_dir))
    except OSError:
        return None, f"cannot list {core_dir}"
    cands = [n for n in names if n == "core" or (n.startswith("core") and str(pid) in n)]
    if not cands:
        return None, (f"no core file in {core_dir} (kernel.core_pattern {pattern!r}; a core "
                      f"limit or a full disk stops it)")
    return os.path.join(core_dir, cands[-1]), ""


def debug_info(exe: str) -> bool:
    """Whether the ELF binary ``exe`` carries DWARF (a ``.debug_info`` section), or a
    separate debug file for its build id is installed under /usr/lib/debug."""
    try:
        with open(exe, "rb") as f:
            elf = f.read()
    except OSError:
        return False
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:   # ELF64 little-endian only
        return False
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    def section(i: int) -> tuple:
        name, kind, _, _, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, kind, off, size
    _, _, stroff, _ = section(shstrndx)
    names = {}
    for i in range(shnum):
        name, kind, off, size = section(i)
        end = elf.index(b"\0", stroff + name)
        names[elf[stroff + name:end].decode(errors="replace")] = (off, size)
    if ".debug_info" in names:
        return True
    if ".note.gnu.build-id" in names:
        off, size = names[".note.gnu.build-id"]
        namesz, descsz, _ = struct.unpack_from("<III", elf, off)
        desc = elf[off + 12 + (namesz + 3) // 4 * 4:][:descsz].hex()
        return os.path.exists(f"/usr/lib/debug/.build-id/{desc[:2]}/{desc[2:]}.debug")
    return False


def frames_of(text: str) -> List[str]:
    """The crashing thread's function names, from gdb's last ``bt`` (innermost first)."""
    last = text.rsplit("=== crashing thread ===", 1)[-1]
    out = []
    for line in last.splitlines():
        m = _FRAME.match(line.strip())
        if m:
            out.append(m.group(2))
    return out


def diagnose(side: str, pid: int, exitcode: Optional[int], exe: Optional[str],
             core_dir: str, out_path: str) -> Optional[Crash]:
    """The backtrace of a QEMU that died by a core-dumping signal (None otherwise)."""
    if not dumps_core(exitcode):
        return None
    assert exitcode is not None
    crash = Crash(side, signal.Signals(-exitcode).name)
    gdb = shutil.which("gdb")
    if gdb is None:
        crash.note = "gdb is not installed (apt-get install gdb; scripts/setup-host.sh does)"
        return crash
    core, why = find_core(pid, core_dir)
    if core is None:
        crash.note = why
        return crash
    if not exe or not os.path.exists(exe):
        crash.note = f"the QEMU binary that ran is unknown ({exe!r})"
        return crash
    cmd = [gdb, "-batch", "-nx", "-ex", "set pagination off", "-ex", "info threads",
           "-ex", "thread apply all bt 25", "-ex", "echo === crashing thread ===\\n",
           "-ex", "bt 40", exe, core]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                           timeout=budget(GDB_TIMEOUT_S))
    except subprocess.TimeoutExpired:
        crash.note = f"gdb did not finish within {GDB_TIMEOUT_S:g} s"
        return crash
    text = p.stdout + ("\n--- gdb's stderr ---\n" + p.stderr if p.stderr.strip() else "")
    symbols = debug_info(exe)
    header = (f"# {side} QEMU killed by {crash.signal}; binary {exe}; core {core}\n"
              f"# {'with' if symbols else 'WITHOUT'} debug symbols"
              + ("" if symbols else NO_SYMBOLS) + "\n")
    with open(out_path, "w") as f:
        f.write(header + text)
    crash.backtrace_path = out_path
    crash.frames = frames_of(p.stdout)
    if not symbols:
        crash.note = "the binary has no debug symbols: frames are its exported names only"
    try:
        os.unlink(core)  # big, and the backtrace says what it held
    except OSError:
        pass
    return crash
