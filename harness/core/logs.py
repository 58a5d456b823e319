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
