#!/usr/bin/env python3
"""Measure by hand what cpr-transfer does to the Linux guest's devices, per network
arrangement and QEMU build: the datagram stream's longest gap, losses and duplicates,
whether an established TCP connection survives, the disk writes in flight, what image
locking does to each side (docs/same-arguments.md).

It runs the library's own pair driver (harness.run.driver.run_scenario) on the Linux
guest's scenario and adds the devices from the outside, without changing harness/run/:

- each side's extra QEMU arguments and fds, and the namespace a tap arrangement's QEMU
  must run in, through the pair's QemuProcess (a subclass put in its place);
- the probes (harness.evidence.devices) started after the source's guest is up and
  stopped after the observation window, on the side that runs then;
- the disk image verified after teardown, before the case's temp dir goes.

    .venv/bin/python scripts/measure-devices.py --qemu /usr/bin/qemu-system-x86_64 \\
        --qemu $(scripts/get-qemu.sh 11.1.3) --json /tmp/devices.json

One line per case on stdout, the records as JSON with --json. Nothing is judged here.
"""
from __future__ import annotations

import argparse
import array
import fcntl
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.core.cleanup import remove_tmpdir, private_tmpdir  # noqa: E402
from harness.core.errors import Unsupported  # noqa: E402
from harness.core.logs import tail  # noqa: E402
from harness.cpr import netdevs  # noqa: E402
from harness.evidence import devices  # noqa: E402
from harness.evidence.diskseq import DiskRecord  # noqa: E402
from harness.guest.linux import LinuxDriver  # noqa: E402
from harness.qemu.process import QemuProcess  # noqa: E402
from harness.run import driver as driver_mod  # noqa: E402
from harness.run import pair as pair_mod  # noqa: E402
from harness.run.config import resolve  # noqa: E402
from harness.scenario.catalogue import SCENARIOS  # noqa: E402
from harness.scenario.model import Observed  # noqa: E402

SCENARIO = "transfer/unix-unix-memfd-immediate-q35-linux"
#: TUNGETVNETHDRSZ (<linux/if_tun.h>): the tap device's virtio-net header size.
TUNGETVNETHDRSZ = 0x800454D7
#: Seconds of stream before the transfer, so its usual interval is known.
LEAD_IN_S = 2.0


class Case:
    """The devices of the case being run (one at a time)."""
    setup: Optional[netdevs.NetSetup] = None
    out: Dict[str, Any] = {}


def qemu_class(base: type) -> type:
    class WithDevices(base):  # type: ignore[misc, valid-type]
        """A QEMU with the arrangement's arguments, fds and namespace."""
        def __init__(self, side: str, binary: str, args: List[str], *a: Any, **kw: Any):
            s = Case.setup
            if s is not None:
                kw["pass_fds"] = tuple(kw.get("pass_fds", ())) + s.side_fds(side)
            super().__init__(side, binary, args, *a, **kw)
            if s is not None:
                self.cmdline = s.prefix() + self.cmdline
    return WithDevices


class HeaderWatch(threading.Thread):
    """With fd=, the harness holds the tap fd too: the device's vnet header size, read
    every 2 ms, with each change's time (the target's start-up resets it)."""

    def __init__(self, fd: int):
        super().__init__(name="cprh-vnethdr", daemon=True)
        self.fd, self.changes, self.halt = fd, [], threading.Event()

    def run(self) -> None:
        last = None
        end = time.monotonic() + 600
        while not self.halt.wait(0.002) and time.monotonic() < end:
            buf = array.array("i", [0])
            try:
                fcntl.ioctl(self.fd, TUNGETVNETHDRSZ, buf, True)
            except OSError:
                return
            if buf[0] != last:
                last = buf[0]
                self.changes.append((time.monotonic_ns(), last))


def patch() -> None:
    """Add the devices to the driver's phases (see the module's doc)."""
    qemu_args = LinuxDriver.qemu_args
    start_src, transfer = driver_mod.PairDriver.start_src, driver_mod.PairDriver.transfer
    teardown = driver_mod.PairDriver.teardown

    def args(self: LinuxDriver, side: str, *a: Any, **kw: Any) -> List[str]:
        extra = Case.setup.side_args(side) if Case.setup is not None else []
        return qemu_args(self, side, *a, **kw) + extra

    def start(d: Any) -> None:
        d.cprh_disk = devices.DiskProbe(d.g.disk, d.g.lay)
        d.cprh_disk.prepare()
        start_src(d)
        fds = Case.setup.side_fds("src") if Case.setup is not None else ()
        d.cprh_hdr = HeaderWatch(fds[0]) if fds else None
        if d.cprh_hdr is not None:
            d.cprh_hdr.start()
        d.cprh_locks = devices.LockWatch(d.g.disk, lambda: {
            vm.side: vm.pid for vm in (d.src, d.dst) if vm is not None and vm.is_running()
        }).start()
        console = lambda cmd: d.g.command("src", cmd, devices.COMMAND_S)  # noqa: E731
        d.cprh_net = devices.NetProbe(Case.setup).start(console)
        d.cprh_disk.start(console)
        time.sleep(LEAD_IN_S)

    def transfer_then_stop(d: Any) -> None:
        try:
            transfer(d)
        finally:
            stop_probes(d)

    def teardown_then_verify(d: Any) -> None:
        if getattr(d, "cprh_net", None) is not None:
            d.cprh_net.abandon()  # idempotent: a case that failed before stop_probes
        if getattr(d, "cprh_locks", None) is not None:
            d.cprh_locks.stop()
        if getattr(d, "cprh_hdr", None) is not None:
            d.cprh_hdr.halt.set()
        teardown(d)
        if getattr(d, "cprh_disk", None) is not None and d.cprh_disk.started:
            Case.out["disk"] = d.cprh_disk.verify()

    LinuxDriver.qemu_args = args
    driver_mod.PairDriver.start_src = start
    driver_mod.PairDriver.transfer = transfer_then_stop
    driver_mod.PairDriver.teardown = teardown_then_verify
    pair_mod.QemuProcess = qemu_class(QemuProcess)


def switch_over_ns(d: Any) -> Optional[int]:
    """The switch-over on the monotonic clock: QEMU's own STOP on the source (the
    driver places it, harness.run.driver.PairDriver.switch_ns), else the harness's mark
    of the completed migration; None: the transfer did not complete."""
    placed = d.switch_ns() if d.dst is not None else None
    if placed is not None:
        return placed[0]
    t = d.r.timings.get("first_completed")
    return int((d.epoch + t) * 1e9) if t is not None else None


def stop_probes(d: Any) -> None:
    """After the window, on the side that runs: the stream, the TCP line, the disk."""
    net = getattr(d, "cprh_net", None)
    if net is None:
        return
    side = "dst" if d.dst is not None and d.dst.is_running() else \
        "src" if d.src is not None and d.src.is_running() else ""
    switch_ns = switch_over_ns(d)
    t = None if switch_ns is None else switch_ns / 1e9 - d.epoch
    console = (lambda cmd: d.g.command(side, cmd, devices.COMMAND_S)) if side else None
    Case.out["stopped_on"] = side or "no side runs"
    Case.out["timings"] = {k: round(v - t, 3) for k, v in d.r.timings.items()} \
        if t is not None else dict(d.r.timings)
    try:
        Case.out["net"] = net.stop(console, switch_ns)
        if switch_ns is not None:  # the datagrams around the switch-over, for the notes
            Case.out["around"] = [(a.seq, round((a.t_ns - switch_ns) / 1e9, 3), a.uptime)
                                  for a in net.receiver.arrivals
                                  if abs(a.t_ns - switch_ns) < 3e9]
        if console is not None:
            d.cprh_disk.stop(console)
    finally:
        net.abandon()
        d.cprh_locks.stop()
        Case.out["locks"] = d.cprh_locks.describe(switch_ns)
        if getattr(d, "cprh_hdr", None) is not None:
            d.cprh_hdr.halt.set()
            d.cprh_hdr.join(5)
            Case.out["vnet_hdr"] = [(round((t - (switch_ns or 0)) / 1e9, 3), n)
                                    for t, n in d.cprh_hdr.changes]


def words(vm_log: str, n: int = 4) -> str:
    lines = [ln for ln in tail(vm_log).splitlines() if ln.strip()][-n:]
    return " / ".join(lines)


def run_case(qemu: str, arrangement: str, observe: float) -> Dict[str, Any]:
    Case.out = {"qemu": qemu, "arrangement": arrangement}
    art = private_tmpdir("meas")
    try:
        with netdevs.opened(arrangement) as setup:
            Case.setup = setup
            cfg = resolve({"qemu_src": qemu, "qemu_dst": qemu, "observe_s": observe})
            r = driver_mod.run_scenario(SCENARIOS[SCENARIO], cfg, art)
        first = r.first
        Case.out.update(
            versions=f"{r.qemu_src_version}", observed=r.observed.value if r.observed else "",
            message=r.observed_message,
            src_after=first.src_state.value if first else "",
            dst_after=first.dst_state.value if first else "",
            downtime_ms=first.query_migrate.get("downtime") if first else None,
            dst_log=words(os.path.join(art, "dst.log")),
            src_log=words(os.path.join(art, "src.log")))
    except Unsupported as exc:
        Case.out.update(observed="skip", message=exc.reason)
    except Exception as exc:  # noqa: BLE001 - a measurement: say it and go on
        Case.out.update(observed="harness error", message=f"{type(exc).__name__}: {exc}",
                        trace=traceback.format_exc(limit=6))
    finally:
        Case.setup = None
        remove_tmpdir(art)
    return dict(Case.out)


def line(o: Dict[str, Any]) -> str:
    net, disk = o.get("net"), o.get("disk")
    parts = [f"{o['arrangement']} on {o.get('versions') or o['qemu']}: {o['observed']}"]
    if o.get("observed") not in ("completed", "skip"):
        parts.append(f"({o.get('message', '')}; target said: {o.get('dst_log', '')})")
    if o.get("observed") == "skip":
        parts.append(f"({o['message']})")
    if net is not None:
        parts.append(f"[stream on {o.get('stopped_on')}] {net.describe()}")
    if disk is not None:
        parts.append(f"[disk] {disk.describe()}")
    for ln in o.get("locks") or []:
        parts.append(f"[lock] {ln}")
    if o.get("vnet_hdr"):
        parts.append("[tap] vnet header size: " + ", ".join(
            f"{n} at {t:+.3f} s" for t, n in o["vnet_hdr"]))
    return "\n  ".join(parts)


def _span(values: List[float], unit: str = "") -> str:
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo:.0f}{unit}" if lo == hi else f"{lo:.0f}-{hi:.0f}{unit}"


def _cell(runs: List[Dict[str, Any]]) -> List[str]:
    """One table row's cells for the runs of one arrangement on one build."""
    first = runs[0]
    said = first.get("message", "") if first["observed"] != "completed" else ""
    nets = [o["net"] for o in runs if o.get("net") is not None]
    gaps = [n.switch_gap for n in nets if n.switch_gap is not None]
    tcp = [n.tcp.survived for n in nets if n.tcp is not None]
    disks = [o["disk"] for o in runs if o.get("disk") is not None]
    ran = [g.guest_ms for g in gaps if getattr(g, "guest_ms", None) is not None]
    return [
        f"{first['observed']} ({len(runs)})" + (f": `{said}`" if said else ""),
        _span([g.ms for g in gaps], " ms") + (f" (guest ran {_span(ran, ' ms')})" if ran else ""),
        _span([n.lost for n in nets]) + " / " + _span([n.duplicated for n in nets]),
        f"{sum(tcp)} of {len(tcp)}" if tcp else "not measured",
        "intact" if disks and all(d.intact for d in disks) else
        ("; ".join(d.describe() for d in disks if not d.intact) or "-"),
        _span([o["downtime_ms"] for o in runs if o.get("downtime_ms") is not None], " ms"),
    ]


def summary(out: List[Dict[str, Any]]) -> str:
    """A markdown table: arrangement x build, over every run of each."""
    rows = ["| arrangement | QEMU | outcome (runs) | gap across the switch-over | lost / dup | "
            "TCP survived | disk | QEMU downtime |", "|---|---|---|---|---|---|---|---|"]
    keys: Dict[Any, List[Dict[str, Any]]] = {}
    for o in out:
        keys.setdefault((o["arrangement"], o.get("versions") or o["qemu"]), []).append(o)
    for (arr, ver), runs in keys.items():
        rows.append(f"| {arr} | {ver.split(' ')[0]} | " + " | ".join(_cell(runs)) + " |")
    return "\n".join(rows)


def _loaded(o: Dict[str, Any]) -> Dict[str, Any]:
    """A record read back from --json: attribute access, the disk record whole again."""
    def ns(x: Any) -> Any:
        if isinstance(x, dict):
            return SimpleNamespace(**{k: ns(v) for k, v in x.items()})
        return x
    o = dict(o)
    if isinstance(o.get("net"), dict):
        o["net"] = ns(o["net"])
    if isinstance(o.get("disk"), dict):
        o["disk"] = DiskRecord(**o["disk"])
    return o


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qemu", action="append", help="a QEMU build (both sides); repeatable")
    ap.add_argument("--arrangement", action="append", choices=list(netdevs.ARRANGEMENTS))
    ap.add_argument("--observe", type=float, default=5.0, help="observation window, s")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each case")
    ap.add_argument("--json", type=Path, help="write every record here")
    ap.add_argument("--table-from", type=Path, nargs="+", metavar="JSON",
                    help="only print the table of earlier --json files")
    args = ap.parse_args(argv)
    if args.table_from:
        print(summary([_loaded(o) for f in args.table_from for o in json.loads(f.read_text())]))
        return 0
    patch()
    out = []
    for qemu in args.qemu or ["qemu-system-x86_64"]:
        for arr in args.arrangement or list(netdevs.ARRANGEMENTS):
            for _ in range(args.repeat):
                o = run_case(qemu, arr, args.observe)
                print(line(o), flush=True)
                out.append(o)
    print(summary(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=lambda x: x.to_dict()
                                        if hasattr(x, "to_dict") else str(x)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
