"""Live self-tests of the device building blocks on the real Linux guest (TCG):

- default: one QEMU (no transfer) inside the case's own namespace, on a tap on a
  bridge: the guest's datagram stream reaches the receiver inside the namespace, the
  TCP echo connection works, the disk writer's blocks are all in the image after QEMU
  quits; the namespace is gone afterwards;
- slow (``--slow``): cpr-transfers through scripts/measure-devices.py, one that
  completes (tap on a bridge) and one the target refuses (the same tap by name): what
  each must show whatever the timing (no gap or wait is judged: they are measured).
"""
import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest

from harness.core import netns
from harness.cpr import netdevs
from harness.evidence import devices
from harness.guest import driver as guest_driver
from harness.guest.images import image
from harness.qemu.process import QemuProcess

pytestmark = pytest.mark.selftest

ROOT = Path(__file__).resolve().parents[2]
QEMU = shutil.which("qemu-system-x86_64")
REASON = netns.unsupported_reason(tap=True)
needs_all = pytest.mark.skipif(QEMU is None or REASON is not None,
                               reason=REASON or "qemu-system-x86_64 not on PATH")
BOOT_S = 240.0


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def block_in_image(path, layout, seq):
    with open(path, "rb") as f:
        f.seek(layout.start + (seq - 1) * layout.block)
        return f.read(layout.block) == layout.block_of(seq)


@needs_all
def test_stream_echo_and_disk_of_one_guest_on_a_tap_in_its_namespace(tmp_path):
    g = guest_driver(image("linux-x86"), str(tmp_path))
    base = ["-machine", "q35", "-accel", "tcg", "-m", "512M", "-nodefaults",
            "-display", "none"]
    with netdevs.opened("tap-bridge", tag="st") as setup:
        name = setup.ns.name
        disk = devices.DiskProbe(g.disk, g.lay)
        disk.prepare()
        vm = QemuProcess("src", QEMU, base + g.qemu_args("src", str(tmp_path / "src.serial"),
                                                         str(tmp_path))
                         + setup.side_args("src"), str(tmp_path), str(tmp_path),
                         pass_fds=setup.side_fds("src"))
        vm.cmdline = setup.prefix() + vm.cmdline
        net = None
        try:
            vm.launch()
            vm.connect_qmp(30.0)
            g.wait_moving(vm, BOOT_S)
            console = lambda cmd: g.command("src", cmd, devices.COMMAND_S)  # noqa: E731
            net = devices.NetProbe(setup, echo_period_s=0.05).start(console)
            disk.start(console)
            wait_for(lambda: len(net.receiver.arrivals) >= 10, 60, "10 datagrams")
            wait_for(lambda: block_in_image(g.disk, disk.layout, 5), 60, "5 disk blocks")
            rec = net.stop(console)
            disk.stop(console)
        finally:
            if net is not None:
                net.abandon()
            vm.shutdown()
        drec = disk.verify()
    assert rec.received >= 10 and rec.received + rec.lost == rec.sent
    assert rec.duplicated == 0 and rec.tcp is not None and rec.tcp.survived, rec.describe()
    assert disk.written >= 5 and disk.guest_read == (disk.written, 0, 0, 0)
    assert drec.intact and drec.found == disk.written, drec.describe()
    assert name not in netns.leftovers()


def measure_module():
    spec = importlib.util.spec_from_file_location(
        "cprh_measure_devices", ROOT / "scripts" / "measure-devices.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.patch()
    return mod


@pytest.fixture(scope="module")
def measure():
    """scripts/measure-devices.py, its driver patches applied for this module only."""
    from harness.guest.linux import LinuxDriver
    from harness.run import driver as d

    saved = (LinuxDriver.qemu_args, d.PairDriver.start_src, d.PairDriver.transfer,
             d.PairDriver.teardown, d.QemuProcess)
    try:
        yield measure_module()
    finally:
        (LinuxDriver.qemu_args, d.PairDriver.start_src, d.PairDriver.transfer,
         d.PairDriver.teardown, d.QemuProcess) = saved


def arrivals_after(o):
    around = o.get("around") or []
    return [seq for seq, rel, _up in around if rel > 0]


@needs_all
@pytest.mark.slow
def test_a_transfer_on_a_bridge_keeps_the_stream_the_connection_and_the_disk(measure):
    o = measure.run_case(QEMU, "tap-bridge", 2.0)
    assert o["observed"] == "completed", o
    net, disk = o["net"], o["disk"]
    assert o["stopped_on"] == "dst" and arrivals_after(o), net.describe()
    assert net.duplicated == 0 and net.tcp.survived, net.describe()
    assert disk.intact and disk.written > 0, disk.describe()
    assert not [n for n in netns.leftovers() if f"-{os.getpid()}-" in n]


@needs_all
@pytest.mark.slow
def test_the_same_tap_by_name_is_refused_and_the_source_carries_on(measure):
    o = measure.run_case(QEMU, "tap-ifname", 1.0)
    assert o["observed"] == "dst-refused", o
    assert "could not configure /dev/net/tun (tap0): Device or resource busy" in o["dst_log"]
    net, disk = o["net"], o["disk"]
    assert o["stopped_on"] == "src" and net.received > 0 and net.tcp.survived, net.describe()
    assert disk.intact and disk.written > 0, disk.describe()
