#!/usr/bin/env python3
"""A deliberately broken cpr-transfer target for the device checks, for the harness's
self-tests only (suites/selftest/test_broken_devices.py).

NOT a conformance subject: it execs the real QEMU and then damages the guest's devices
after the switch-over, so the self-tests can show that the network and disk checks
notice. Usage, as a --qemu-dst wrapper (a QEMU started inside a namespace runs it
through nsenter, which execs it in place):

    devices.py MODE [QEMU ARGS...]

Modes (each acts on the target LATE_S after the RESUME its own second monitor sees,
as suites/selftest/broken/tamper.py does, whose helpers it uses):

    none        run QEMU unchanged (the control)
    link-down   `set_link` the guest's NIC (id cprnic0) down: its datagrams and the held
                TCP connection go nowhere from then on
    disk-write  write one 4 KiB block of 0xA5 into the guest's image (the file of its
                -blockdev) at DISK_OFFSET, where the guest never writes: a change under
                the running guest

Determinism, as tamper.py's: before exec'ing QEMU the wrapper creates
``<the harness's QMP socket>.hold`` and removes it only once the damage is done; the
harness's observation window stays open while it exists, so the damage lands inside the
window however loaded the host is, and the device checks, concluded after the window,
see it. A hold never released fails the case (``window.hold``) instead of passing it.

Anything that is not a cpr-transfer target (no -incoming) runs QEMU unchanged.
"""
import os
import re
import sys
import time

import tamper  # the same directory: its monitor, RESUME and child helpers

#: The NIC the harness gives the guest for its network workload (harness.cpr.netdevs.NIC).
NIC = "cprnic0"
#: 3 MiB into the image: outside the guest's block stream (4-8 MiB) and the ranges its
#: other commands write (1-2 MiB; images/linux/layout.json DISK_*).
DISK_OFFSET = 0x300000
DISK_BYTES = 4096
MODES = ("none", "link-down", "disk-write")
#: What each mode breaks, as the harness must name it: the id of a check that must fail,
#: and words its message must hold (the self-tests assert exactly this).
DEFECTS = {
    "link-down": ("net.stream", ["lost"]),
    "disk-write": ("disk.intact", [f"{DISK_BYTES} byte(s) changed where the guest never "
                                   f"writes (first at {DISK_OFFSET:#x})"]),
}


def image_of(args):
    """The file of the guest's disk: the first ``-blockdev driver=file,filename=...``."""
    for a in args:
        m = re.search(r"(?:^|,)driver=file(?:,|$)", a) and re.search(r"filename=([^,]+)", a)
        if m:
            return m.group(1)
    raise RuntimeError("devices.py: no -blockdev driver=file,filename=... in the arguments")


def damage(mode, f, args):
    time.sleep(tamper.LATE_S)
    if mode == "link-down":
        f.write('{"execute": "set_link", "arguments": {"name": "%s", "up": false}}\n' % NIC)
        f.flush()
        while True:  # its reply (events may come first)
            line = f.readline()
            if not line or '"return"' in line:
                break
            if '"error"' in line:
                raise RuntimeError(f"devices.py: set_link refused: {line.strip()}")
    elif mode == "disk-write":
        fd = os.open(image_of(args), os.O_WRONLY)
        try:
            os.pwrite(fd, b"\xa5" * DISK_BYTES, DISK_OFFSET)
            os.fsync(fd)
        finally:
            os.close(fd)


def act(side, mode, pid, hold, args):
    """Our monitor; RESUME; the damage; the hold released only once it is done."""
    s = tamper.connect(side, pid, time.monotonic() + 120)
    if s is None:
        return
    f = s.makefile("rw")
    if tamper.wait_resume(f):
        damage(mode, f, args)
        os.unlink(hold)


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode not in MODES:
        sys.exit(f"devices.py: unknown mode {mode!r}; known: {', '.join(MODES)}")
    if "-incoming" not in args or mode == "none":
        os.execv(tamper.QEMU, [tamper.QEMU, *args])
    harness_qmp = tamper.qmp_path(args)
    side, hold = harness_qmp + ".devices", harness_qmp + ".hold"
    open(hold, "w").close()
    pid = os.getpid()
    tamper.child(lambda: act(side, mode, pid, hold, args))
    os.execv(tamper.QEMU, [tamper.QEMU, *args, "-qmp", f"unix:{side},server=on,wait=off"])


if __name__ == "__main__":
    main()
