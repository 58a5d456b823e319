"""Behavioural feature probes: what the QMP schema cannot tell.

Some differences between QEMU builds have no trace in the schema. For those, start the
binary briefly in a way that makes it answer, and read the answer. Each probe is
bounded, memoized per binary, and returns ``(supported, reason)``.
"""
from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from functools import lru_cache
from typing import Callable, Dict, Tuple

from harness.core.cleanup import popen_guarded, released
from harness.qemu.probe import probe

PROBE_TIMEOUT = 15.0
#: The fd name handed to the target in probes: QEMU names it when it looks it up.
FD_NAME = "cprh_no_such_fd"


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
    caps = probe(binary)
    if not caps.has_cpr_transfer:
        return False, (f"{binary} ({caps.version_str}) has no cpr-transfer mode, so no cpr "
                       f"channel at all")
    if "cpr" not in caps.channel_types:
        # The rfc-v1 dialect (the cpr-transfer series): its target names the cpr channel
        # with -cpr-uri URI. Asked the probe below, 9.1.50 says "unknown migration
        # protocol: {...cprh_no_such_fd...}", which names the fd without taking it.
        return False, (f"{binary} ({caps.version_str}) has no 'cpr' migration channel type: "
                       f"its target takes the cpr channel as -cpr-uri URI (the "
                       f"{caps.dialect} dialect), which has no fd form")
    chan = json.dumps({"channel-type": "cpr", "addr": {
        "transport": "socket", "type": "fd", "str": FD_NAME}})
    code, out = _run(binary, ["-incoming", chan])
    last = out.splitlines()[-1] if out else f"nothing (exit code {code})"
    if "must be unix" in out:
        return False, (f"{binary} accepts only a unix cpr channel on the target "
                       f"(it said: {last}); an fd cpr channel needs a newer QEMU")
    if FD_NAME not in out:
        # Only an answer about the fd itself shows the channel type was accepted.
        return False, (f"{binary} gave no sign of taking an fd cpr channel on the target "
                       f"(it said: {last})")
    return True, ""


#: The unprivileged user ``-run-with user=`` drops to in the args/ cases.
RUN_AS = "nobody"


@lru_cache(maxsize=None)
def run_with_user(binary: str) -> Tuple[bool, str]:
    """Can ``binary`` drop to :data:`RUN_AS` with ``-run-with user=``? The harness must
    be root (only root can change user), the user must exist, and the binary must take
    the option (parsed before ``-version`` exits)."""
    if os.geteuid() != 0:
        return False, "-run-with user= needs root (only root can drop to another user)"
    try:
        pwd.getpwnam(RUN_AS)
    except KeyError:
        return False, f"no user {RUN_AS} on this host for -run-with user="
    code, out = _run(binary, ["-run-with", f"user={RUN_AS}", "-version"])
    if code != 0:
        last = out.splitlines()[-1] if out else f"exit code {code}"
        return False, f"{binary} does not take -run-with user= (it said: {last})"
    return True, ""


def harness_daemonize(binary: str) -> Tuple[bool, str]:
    """Never: the harness cannot follow a daemonized QEMU (the reason says why)."""
    return False, ("-daemonize cannot run under the harness's process model: QEMU forks, "
                   "the process the harness started exits once the daemon is ready, and "
                   "the daemon calls setsid(), so it leaves the process group the janitor "
                   "kills and loses PR_SET_PDEATHSIG (cleared across fork): nothing would "
                   "make it die with its runner; docs/same-arguments.md#daemonize has what "
                   "QEMU does with it, measured by hand")


FEATURES: Dict[str, Callable[[str], Tuple[bool, str]]] = {
    "cpr-incoming-fd": cpr_incoming_fd,
    "run-with-user": run_with_user,
    "harness-daemonize": harness_daemonize,
}
#: The side whose binary must have each feature ("src", "dst" or "both"): an fd cpr
#: channel is the target's business (the source connects to its socket by path), so an
#: upgrade from a QEMU without it to one with it runs the case.
SIDES: Dict[str, str] = {
    "cpr-incoming-fd": "dst",
}


def needed_on(name: str, side: str) -> bool:
    return SIDES.get(name, "both") in (side, "both")


def check(name: str, binary: str) -> Tuple[bool, str]:
    return FEATURES[name](os.fspath(binary))
