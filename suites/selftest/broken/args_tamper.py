#!/usr/bin/env python3
"""A deliberately broken cpr-transfer target for the args/ self-tests only.

NOT a conformance subject: it execs the real QEMU and, once the guest runs on it, damages
what an option provides, so the self-tests can show that the args checks
(harness/run/checks/args.py) notice. Usage, as a --qemu-dst wrapper:

    args_tamper.py MODE [QEMU ARGS...]

Modes (each acts at the target's RESUME, seen on a monitor of its own):

    truncate-console  truncate the console file (-chardev file,...,path=P) to nothing, as
                      a target opening it without append=on would: what the source wrote
                      there is gone (use on args/serial-file-append)
    wrong-pid         write a pid that is neither QEMU's into the target's -pidfile (use
                      on args/pidfile-per-side)

The observation window stays open while ``<the harness's QMP socket>.hold`` exists; the
wrapper removes it once the damage is done, and the args checks look when the window
ends: nothing races the harness (suites/selftest/broken/tamper.py, whose helpers this
uses, says more). Anything that is not a cpr-transfer target runs QEMU unchanged.
"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tamper  # noqa: E402  (the sibling wrapper's helpers)

#: mode -> (the check that must fail, words its observed text must hold).
DEFECTS = {
    "truncate-console": ("args.kept", ["are gone", "console.log"]),
    "wrong-pid": ("args.pidfile", ["neither QEMU's pid"]),
}
#: A pid no QEMU of a case has: init's.
WRONG_PID = "1"


def option_path(args, pattern):
    """The first path an option names (``pattern`` with one group), or None."""
    for a in args:
        m = re.search(pattern, a)
        if m:
            return m.group(1)
    return None


def damage(mode, args):
    if mode == "truncate-console":
        path = option_path(args, r"^file,id=ser0,path=([^,]+)")
        with open(path, "r+b") as f:
            f.truncate(0)
    else:
        path = args[args.index("-pidfile") + 1]
        with open(path, "w") as f:
            f.write(WRONG_PID + "\n")


def tamperer(sock_path, mode, args, qemu_pid, hold):
    """Wait for RESUME on our own monitor, damage, release the hold (left in place when
    the wrapper could not act: the harness then fails the case, 'hold file released')."""
    s = tamper.connect(sock_path, qemu_pid, time.monotonic() + 120)
    if s is None:
        return
    if tamper.wait_resume(s.makefile("rw")):
        damage(mode, args)
        os.unlink(hold)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode not in DEFECTS:
        sys.exit(f"args_tamper.py: unknown mode {mode!r}; known: {', '.join(DEFECTS)}")
    if "-incoming" not in args:
        os.execv(tamper.QEMU, [tamper.QEMU, *args])
    harness_qmp = tamper.qmp_path(args)
    side, hold = harness_qmp + ".tamper", harness_qmp + ".hold"
    open(hold, "w").close()
    pid = os.getpid()
    tamper.child(lambda: tamperer(side, mode, args, pid, hold))
    os.execv(tamper.QEMU, [tamper.QEMU, *args, "-qmp", f"unix:{side},server=on,wait=off"])


if __name__ == "__main__":
    main()
