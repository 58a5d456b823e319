"""Behavioural feature probes: what the QMP schema cannot tell.

Some differences between QEMU builds have no trace in the schema. For those, start the
binary briefly in a way that makes it answer, and read the answer. Each probe is
bounded, memoized per binary, and returns ``(supported, reason)``.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from functools import lru_cache
from typing import Callable, Dict, Tuple

from harness.cleanup import popen_guarded, released

PROBE_TIMEOUT = 15.0


def _run(binary: str, args: list) -> Tuple[int, str]:
    with tempfile.TemporaryFile() as out:
        proc = popen_guarded([binary, "-machine", "none", "-nodefaults", "-display", "none",
                              *args], stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, cwd="/")
        try:
            code = proc.wait(PROBE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -9
        finally:
            released(proc)
        out.seek(0)
        return code, out.read().decode(errors="replace").strip()


@lru_cache(maxsize=None)
def cpr_incoming_fd(binary: str) -> Tuple[bool, str]:
    """Does the target accept its cpr channel as an fd (``addr.type=fd``)?

    QEMU 10.0.x accepts only a unix path there ("bad cpr channel socket type; must be
    unix"); later releases also take an fd, which lets the harness pre-create the
    listening socket as QEMU's qtest does. Probe: hand it a bad fd number and see
    whether it complains about the type or about the fd.
    """
    chan = json.dumps({"channel-type": "cpr", "addr": {
        "transport": "socket", "type": "fd", "str": "cprh_no_such_fd"}})
    code, out = _run(binary, ["-incoming", chan])
    if "must be unix" in out:
        return False, (f"{binary} accepts only a unix cpr channel on the target "
                       f"(it said: {out.splitlines()[-1] if out else '?'}); an fd cpr channel "
                       f"needs a newer QEMU")
    return True, ""


FEATURES: Dict[str, Callable[[str], Tuple[bool, str]]] = {
    "cpr-incoming-fd": cpr_incoming_fd,
}


def check(name: str, binary: str) -> Tuple[bool, str]:
    return FEATURES[name](os.fspath(binary))
