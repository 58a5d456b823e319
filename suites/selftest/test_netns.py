"""Self-tests of the run's own network namespaces (harness.core.netns): made and removed,
everything a network case needs inside them, a process and a socket inside, and
nothing left after a ``kill -9`` of the runner (the janitor deletes the namespace)."""
import array
import fcntl
import os
import signal
import struct
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.core import netns
from harness.core.errors import Unsupported
from harness.cpr.channels import unix_listening

pytestmark = pytest.mark.selftest

TUNSETVNETHDRSZ, TUNGETVNETHDRSZ = 0x400454D8, 0x800454D7

ROOT = Path(__file__).resolve().parents[2]
REASON = netns.unsupported_reason(tap=True)
needs_netns = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def listed():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.strip()]


@needs_netns
def test_a_namespace_is_made_with_its_devices_and_removed():
    ns = netns.Namespace.create("st")
    try:
        assert ns.name.startswith("cprh-st-") and ns.name in listed()
        assert ns in netns.active()
        ns.add_tap("tap0", multi_queue=True)
        ns.add_tap("tap1")
        ns.add_bridge("br0", ["tap1"])
        ns.add_address("br0", "10.77.0.1/24")
        assert set(ns.links()) == {"lo", "tap0", "tap1", "br0"}
        # none of it is on the host
        host = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        assert "tap0" not in host and "br0" not in host
        assert "10.77.0.1/24" in ns.run(["ip", "-o", "addr", "show", "dev", "br0"])
    finally:
        ns.remove()
    assert ns.name not in listed() and ns not in netns.active()
    ns.remove()  # idempotent


@needs_netns
def test_sockets_tap_fds_and_processes_live_inside():
    with netns.Namespace.create("st") as ns:
        ns.add_tap("tap0", multi_queue=True)
        ns.add_address("tap0", "10.77.0.1/24")
        # a socket of the namespace, used from this (host) thread
        s = ns.socket()
        try:
            s.bind(("10.77.0.1", 0))
            port = s.getsockname()[1]
            assert any(f":{port:04X}" in ln for ln in ns.proc_net("udp").splitlines())
        finally:
            s.close()
        with pytest.raises(OSError):  # the address does not exist on the host
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM).bind(("10.77.0.1", 0))
        # a detached queue (the harness's watch: no packet is steered to it), then two
        # queues of the multi-queue tap, as two QEMUs would open it; the device's vnet
        # header size, set through one of them, reads the same through the detached one
        watch = ns.open_tap("tap0", multi_queue=True, detached=True)
        fds = [ns.open_tap("tap0", multi_queue=True) for _ in range(2)]
        fcntl.ioctl(fds[1], TUNSETVNETHDRSZ, struct.pack("i", 12))
        size = array.array("i", [0])
        fcntl.ioctl(watch, TUNGETVNETHDRSZ, size, True)
        assert size[0] == 12
        for fd in fds + [watch]:
            os.close(fd)
        # a process started through the wrapper keeps its pid and is inside
        wrapper = ns.wrapper("/bin/sleep", "/tmp", name=f"{ns.name}-sleep")
        try:
            p = subprocess.Popen([wrapper, "5"])
            try:
                wait_until(lambda: os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"), 5,
                           "the wrapper to exec sleep in place")
                assert os.stat(f"/proc/{p.pid}/ns/net").st_ino == os.stat(ns.path).st_ino
            finally:
                p.kill()
                p.wait(5)
        finally:
            os.unlink(wrapper)


@needs_netns
def test_a_listener_inside_a_namespace_is_seen_listening(tmp_path):
    """The cpr channel's listener check reads /proc/net/unix: a target QEMU inside a
    namespace listens where the host's own view does not show it."""
    path = str(tmp_path / "l.sock")
    with netns.Namespace.create("st") as ns:
        s = ns.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(path)
            assert not unix_listening(path)
            s.listen(1)
            assert unix_listening(path)
            with open("/proc/net/unix") as f:
                assert path not in f.read()  # the host's view alone would miss it
        finally:
            s.close()


RUNNER = textwrap.dedent("""
    import subprocess, sys, time
    sys.path.insert(0, {root!r})
    from harness.core.cleanup import popen_guarded
    from harness.core.netns import Namespace
    ns = Namespace.create("k9")
    ns.add_tap("tap0")
    # a process inside, as a QEMU on the namespace's tap would be
    p = popen_guarded(ns.exec_prefix() + ["sleep", "120"], stdin=subprocess.DEVNULL)
    print(ns.name, p.pid, flush=True)
    time.sleep(120)
""")


@needs_netns
def test_kill9_of_the_runner_removes_its_namespace():
    runner = subprocess.Popen([sys.executable, "-c", RUNNER.format(root=str(ROOT))],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        name, pid = runner.stdout.readline().split()
        assert name.startswith("cprh-k9-") and name in listed()
        inside = os.stat(f"/run/netns/{name}").st_ino
        wait_until(lambda: os.stat(f"/proc/{pid}/ns/net").st_ino == inside, 15,
                   "the process to enter the namespace (nsenter)")
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(10)
    wait_until(lambda: name not in listed(), 15, f"namespace {name} to be removed")
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 15, "the process inside to die")


def test_no_root_is_a_reason_not_a_failure(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    reason = netns.unsupported_reason()
    assert reason and "root" in reason and "1000" in reason
    with pytest.raises(Unsupported, match="root"):
        netns.Namespace.create("st")


def test_a_missing_tool_is_named(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "nsenter" else
                        "/usr/bin/" + tool)
    reason = netns.unsupported_reason(tap=False)
    assert reason == "'nsenter' is not installed (Debian: apt-get install util-linux)"


def test_vhost_net_says_why_it_cannot_be_tried():
    reason = netns.vhost_net_reason()
    if os.path.exists("/dev/vhost-net"):
        pytest.skip("this host has /dev/vhost-net")
    assert reason and "/dev/vhost-net" in reason
