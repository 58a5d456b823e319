#!/usr/bin/env python3
"""A deliberately broken cpr-transfer target, for the harness's self-tests only.

NOT a conformance subject: it execs the real QEMU and then tampers with it, so the
self-tests can show that the harness notices. Usage, as a --qemu-dst wrapper:

    tamper.py MODE [QEMU ARGS...]

MODE: "paused" adds -S (the target never resumes the guest); "reset" resets the guest
right after the target resumes it; "page" flips one byte of guest RAM (guest-physical
TAMPER_GPA) right after the target resumes. Anything that is not a cpr-transfer target
(no -incoming) just runs QEMU unchanged, so probing the wrapper works.
"""
import json
import os
import shutil
import socket
import sys
import time

TAMPER_GPA = 0x200000
QEMU = os.environ.get("TAMPER_QEMU") or shutil.which("qemu-system-x86_64")


def qmp_path(args):
    for i, a in enumerate(args[:-1]):
        if a == "-qmp" and args[i + 1].startswith("unix:"):
            return args[i + 1][5:].split(",")[0]
    return None


def tamperer(sock_path, mode, qemu_pid):
    """Connect to our own monitor, wait for RESUME, then do the damage."""
    deadline = time.monotonic() + 120
    s = None
    while time.monotonic() < deadline:
        try:
            os.kill(qemu_pid, 0)
        except OSError:
            return
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock_path)
            break
        except OSError:
            s.close()
            s = None
            time.sleep(0.01)
    if s is None:
        return
    f = s.makefile("rw")
    f.readline()  # greeting
    f.write(json.dumps({"execute": "qmp_capabilities"}) + "\n")
    f.flush()
    while True:
        line = f.readline()
        if not line:
            return
        msg = json.loads(line)
        if msg.get("event") == "RESUME":
            break
    if mode == "reset":
        f.write(json.dumps({"execute": "system_reset"}) + "\n")
        f.flush()
        f.readline()
    elif mode == "page":
        for fd in os.listdir(f"/proc/{qemu_pid}/fd"):
            link = os.readlink(f"/proc/{qemu_pid}/fd/{fd}")
            if link.startswith("/memfd:memory-backend-memfd"):
                with open(f"/proc/{qemu_pid}/fd/{fd}", "r+b") as ram:
                    ram.seek(TAMPER_GPA)  # below 2 GiB on q35: offset == GPA
                    b = ram.read(1)
                    ram.seek(TAMPER_GPA)
                    ram.write(bytes([b[0] ^ 0xFF]))
                break


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if "-incoming" not in args or mode == "none":
        os.execv(QEMU, [QEMU, *args])
    if mode == "paused":
        os.execv(QEMU, [QEMU, *args, "-S"])
    side = qmp_path(args) + ".tamper"
    pid = os.getpid()
    if os.fork() == 0:
        try:
            tamperer(side, mode, pid)
        finally:
            os._exit(0)
    os.execv(QEMU, [QEMU, *args, "-qmp", f"unix:{side},server=on,wait=off"])


if __name__ == "__main__":
    main()
