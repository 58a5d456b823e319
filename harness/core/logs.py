"""Reading the end of a log file, for messages."""
from __future__ import annotations

import os


def tail(path: str, lines: int = 20, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines of ``path`` (at most ``max_bytes`` read); "" if unreadable."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def essential(text: str) -> str:
    """The lines of a QEMU log tail that say something: without its ``warning:`` lines
    (a host's CPUID warnings open every KVM log), unless that is all there is."""
    lines = [ln for ln in str(text).splitlines() if ln.strip()]
    kept = [ln for ln in lines if ": warning: " not in ln]
    return "\n".join(kept) if kept else ("(only warnings: " + lines[-1] + ")" if lines else "")
