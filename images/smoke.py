#!/usr/bin/env python3
"""Boot a guest image under QEMU and check the work-area protocol (stdlib only).

    python images/smoke.py [--accel kvm|tcg] [--machine q35|pc] [--smp N]
                           [--seconds S] [--reset] [--qemu PATH]

Starts QEMU with the cpr-transfer memory set-up the harness uses (memfd RAM
backend, share=on, aux-ram-share=on) and the image as -bios, then checks:

* the serial log has the boot marker, then heartbeat lines (HEARTBEAT_REGEX)
  numbered 0, 1, 2, ... with none missing, and more of them after ``--seconds``;
* the work area (read both over QMP ``xp`` and from the memfd, mapped
  read-only through /proc/<pid>/fd) has magic/version/boots and a counter that
  grows between two reads;
* no byte of guest RAM outside the work area is non-zero (the memfd starts
  zeroed, so anything else means something wrote guest RAM);
* with ``--reset``: after QMP system_reset the boots field is 2 and the
  counter restarted.

Prints one JSON object with the measurements on stdout; exit 0 if every check
passed, 1 if one failed, 2 on a usage/set-up error. Always kills the QEMU it
started and removes its temporary directory.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build as image_build  # noqa: E402  (images/build.py, stdlib only)

MEMFD_PREFIX = "/memfd:memory-backend-memfd"


class Qmp:
    """Minimal synchronous QMP client over a unix socket."""

    def __init__(self, path: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def cmd(self, name: str, **args) -> object:
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError(f"QMP {name}: {r['error']}")
            # else an event: skip

    def hmp(self, line: str) -> str:
        return str(self.cmd("human-monitor-command", **{"command-line": line}))

    def close(self) -> None:
        self.sock.close()


def parse_xp(text: str) -> List[int]:
    words = []
    for line in text.splitlines():
        if ":" in line:
            words += [int(w, 16) for w in line.split(":", 1)[1].split()]
    return words


def decode(lay: dict, raw: bytes) -> Dict[str, int]:
    """Every work-area field of the layout, by its size (4 or 8 bytes)."""
    return {f: struct.unpack_from("<I" if lay["FIELD_SIZES"][f] == 4 else "<Q", raw, off)[0]
            for f, off in lay["OFFSETS"].items()}


def header_size(lay: dict) -> int:
    """Bytes of the work area the guest writes (the rest must stay zero)."""
    return max(off + lay["FIELD_SIZES"][f] for f, off in lay["OFFSETS"].items())


def heartbeats_since_boot(lay: dict, path: Path) -> Tuple[int, List[int]]:
    """(boot markers, the sequence numbers printed since the last one)."""
    try:
        data = path.read_bytes().decode("ascii", "replace")
    except FileNotFoundError:
        return 0, []
    rx, marker = re.compile(lay["HEARTBEAT_REGEX"]), lay["BOOT_MARKER"].rstrip("\n")
    boots, seqs = 0, []
    for line in data.split("\n")[:-1]:          # the last piece may be a partial line
        if line == marker:
            boots, seqs = boots + 1, []
        else:
            m = rx.fullmatch(line)
            seqs.append(int(m.group("seq"), 16) if m else -1)
    return boots, seqs


def find_memfd(pid: int, size: int) -> str:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        p = f"/proc/{pid}/fd/{fd}"
        try:
            link = os.readlink(p)
        except OSError:
            continue
        if link.startswith(MEMFD_PREFIX) and os.stat(p).st_size == size:
            return p
    raise RuntimeError(f"no {MEMFD_PREFIX}* fd of {size} bytes in /proc/{pid}/fd")


def memfds(pid: int) -> List[Tuple[str, int]]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        p = f"/proc/{pid}/fd/{fd}"
        try:
            link = os.readlink(p)
        except OSError:
            continue
        if link.startswith("/memfd:"):
            out.append((link, os.stat(p).st_size))
    return out


def nonzero_ranges(buf, skip: Tuple[int, int], chunk: int = 4096) -> List[Tuple[int, int]]:
    """[start, end) ranges of 4 KiB chunks holding a non-zero byte, outside skip."""
    zero = bytes(chunk)
    ranges: List[Tuple[int, int]] = []
    for off in range(0, len(buf), chunk):
        if skip[0] <= off < skip[1]:
            continue
        if buf[off:off + chunk] != zero:
            data = buf[off:off + chunk]
            first = next(i for i, b in enumerate(data) if b)
            last = max(i for i, b in enumerate(data) if b)
            s, e = off + first, off + last + 1
            if ranges and ranges[-1][1] >= off:
                ranges[-1] = (ranges[-1][0], e)
            else:
                ranges.append((s, e))
    return ranges


def count_lines(path: Path, line: str) -> int:
    try:
        return path.read_bytes().count(line.encode())
    except FileNotFoundError:
        return 0


def run(args: argparse.Namespace) -> Tuple[dict, bool]:
    lay = image_build.layout(args.image)
    image = image_build.build(args.image)
    ram = args.mem_mib << 20
    wb, ws = lay["WORK_BASE"], lay["WORK_SIZE"]
    hdr = header_size(lay)
    result: dict = {"accel": args.accel, "machine": args.machine, "smp": args.smp,
                    "image": str(image)}
    failures: List[str] = []

    tmp = Path(tempfile.mkdtemp(prefix="cprg-smoke-"))
    serial, qmp_path, log = tmp / "serial.log", tmp / "qmp.sock", tmp / "qemu.log"
    argv = [args.qemu, "-nodefaults", "-display", "none",
            "-machine", f"{args.machine},memory-backend=ram0,aux-ram-share=on",
            "-accel", args.accel,
            "-object", f"memory-backend-memfd,id=ram0,size={args.mem_mib}M,share=on",
            "-m", f"{args.mem_mib}M", "-smp", str(args.smp),
            "-bios", str(image),
            "-chardev", f"file,id=ser0,path={serial}", "-serial", "chardev:ser0",
            "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    result["argv"] = argv
    proc = None
    qmp = None
    mm = None
    fdfile = None
    try:
        with open(log, "wb") as logf:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        qmp = Qmp(str(qmp_path), timeout=10.0)

        # boot marker
        deadline = time.monotonic() + 10
        while count_lines(serial, lay["BOOT_MARKER"]) < 1:
            if time.monotonic() > deadline or proc.poll() is not None:
                failures.append("no boot marker on serial within 10s")
                break
            time.sleep(0.02)

        memfd = find_memfd(proc.pid, ram)
        result["memfds"] = memfds(proc.pid)
        fdfile = open(memfd, "rb")
        mm = mmap.mmap(fdfile.fileno(), ram, mmap.MAP_SHARED, mmap.PROT_READ)

        def sample() -> Tuple[float, dict, dict, List[int]]:
            t = time.monotonic()
            via_fd = decode(lay, mm[wb:wb + hdr])
            words = parse_xp(qmp.hmp(f"xp /{hdr // 4}wx {wb:#x}"))
            raw = struct.pack(f"<{hdr // 4}I", *words[:hdr // 4])
            via_qmp = decode(lay, raw)
            return t, via_fd, via_qmp, heartbeats_since_boot(lay, serial)[1]

        time.sleep(0.2)
        t0, fd0, q0, hb0 = sample()
        time.sleep(args.seconds)
        t1, fd1, q1, hb1 = sample()
        dt = t1 - t0
        result.update({
            "first_fd": fd0, "first_qmp": q0, "second_fd": fd1, "second_qmp": q1,
            "seconds": round(dt, 3),
            "counter_rate_per_s": round((fd1["counter"] - fd0["counter"]) / dt),
            "clock_mhz": round(fd1["clock_khz"] / 1000, 3),
            "heartbeat_lines": len(hb1),
            "heartbeat_rate_per_s": round((len(hb1) - len(hb0)) / dt, 2),
            "nominal_heartbeat_rate_per_s": round(1000 / lay["HEARTBEAT_MS"], 2),
        })
        for tag, s in (("fd", fd1), ("qmp", q1)):
            if s["magic"] != lay["MAGIC"]:
                failures.append(f"{tag}: magic {s['magic']:#x}")
            if s["version"] != lay["VERSION"]:
                failures.append(f"{tag}: version {s['version']}")
            if s["boots"] != 1:
                failures.append(f"{tag}: boots {s['boots']} != 1")
        if not fd1["counter"] > fd0["counter"] or not q1["counter"] > q0["counter"]:
            failures.append("counter did not increase")
        if fd1["clock_khz"] == 0:
            failures.append("clock_khz is 0: the guest's clock was never calibrated")
        # heartbeats: numbered 0, 1, 2, ... since the boot, more of them after the window
        if hb1 != list(range(len(hb1))):
            failures.append(f"heartbeat lines are not 0, 1, 2, ...: {hb1[:20]}")
        if len(hb1) <= len(hb0):
            failures.append(f"no heartbeat line in {dt:.1f} s")
        # the guest is running, so the field may be one ahead of the lines on serial
        if abs(fd1["heartbeats"] - len(hb1)) > 1:
            failures.append(f"heartbeats field {fd1['heartbeats']} vs {len(hb1)} serial lines")

        if args.reset:
            qmp.cmd("system_reset")
            deadline = time.monotonic() + 10
            while True:
                s = decode(lay, mm[wb:wb + hdr])
                if s["boots"] == 2 and s["counter"] > 0:
                    break
                if time.monotonic() > deadline:
                    failures.append(f"after system_reset: {s}")
                    break
                time.sleep(0.02)
            result["after_reset"] = s
            result["boot_markers_after_reset"] = count_lines(serial, lay["BOOT_MARKER"])
            if result["boot_markers_after_reset"] != 2:
                failures.append("expected 2 boot markers after reset")
            # the sequence restarts at 0 after the new boot marker
            deadline = time.monotonic() + 10
            while not heartbeats_since_boot(lay, serial)[1] and time.monotonic() < deadline:
                time.sleep(0.02)
            boots, seqs = heartbeats_since_boot(lay, serial)
            result["heartbeats_after_reset"] = seqs[:5]
            if boots != 2 or not seqs or seqs != list(range(len(seqs))):
                failures.append(f"after the reset the heartbeats do not restart at 0: {seqs[:10]}")

        # RAM written outside the work area (whole RAM; first 2 MiB reported separately)
        qmp.cmd("stop")
        ranges = nonzero_ranges(mm, (wb, wb + ws))
        result["nonzero_outside_work_area"] = [[f"{a:#x}", f"{b:#x}"] for a, b in ranges]
        result["nonzero_in_first_2MiB"] = [[f"{a:#x}", f"{b:#x}"] for a, b in ranges
                                           if a < (2 << 20)]
        wa = mm[wb:wb + ws]
        result["work_area_nonzero_beyond_header"] = any(wa[hdr:])
        if ranges:
            failures.append(f"RAM outside the work area is non-zero: {ranges[:8]}")
        if any(wa[hdr:]):
            failures.append("work area beyond the header is non-zero")
    finally:
        if mm is not None:
            mm.close()
        if fdfile is not None:
            fdfile.close()
        if qmp is not None:
            try:
                qmp.cmd("quit")
            except Exception:
                pass
            qmp.close()
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            result["qemu_exit"] = proc.returncode
        qemu_log = log.read_text(errors="replace").strip() if log.exists() else ""
        result["qemu_log"] = qemu_log
        for p in (serial, qmp_path, log):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        tmp.rmdir()
    result["failures"] = failures
    return result, not failures


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="smoke.py", description=__doc__.splitlines()[0])
    ap.add_argument("--image", default="x86-bios")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--accel", default="kvm", choices=("kvm", "tcg"))
    ap.add_argument("--machine", default="q35")
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--mem-mib", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--reset", action="store_true", help="also check system_reset")
    args = ap.parse_args(argv)
    try:
        result, ok = run(args)
    except image_build.BuildError as e:
        print(f"smoke.py: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
