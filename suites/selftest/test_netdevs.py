"""Self-tests of the network arrangements (harness.cpr.netdevs): what each side's QEMU
gets, where it runs, where the host measures; everything made is removed again."""
import os

import pytest

from harness.core import netns
from harness.core.errors import Unsupported, UsageError
from harness.cpr import netdevs

pytestmark = pytest.mark.selftest

REASON = netns.unsupported_reason(tap=True)
needs_netns = pytest.mark.skipif(REASON is not None, reason=REASON or "")
NIC = "virtio-net-pci,netdev=cprnet0,mac=52:54:00:c0:ff:01,id=cprnic0"


def netdev(args):
    return args[args.index("-netdev") + 1]


def test_user_arrangements_need_no_namespace():
    with netdevs.opened("user") as s:
        assert s.side_args("src") == s.side_args("dst") == ["-netdev", "user,id=cprnet0",
                                                            "-device", NIC]
        assert s.ns is None and s.prefix() == [] and s.echo_addr is None
        assert s.guest_command(5000) == "net 52:54:00:c0:ff:01 10.0.2.15/24 10.0.2.2 5000 7000"
    with netdevs.opened("user-hostfwd") as s:
        assert netdev(s.side_args("src")) == netdev(s.side_args("dst"))
        port = s.echo_addr[1]
        assert netdev(s.side_args("src")) == f"user,id=cprnet0,hostfwd=tcp:127.0.0.1:{port}-:7000"
    with netdevs.opened("user-hostfwd-dst-port") as s:
        assert netdev(s.side_args("src")) != netdev(s.side_args("dst"))
        assert s.echo_addr == ("127.0.0.1", int(netdev(s.side_args("src")).split(":")[2]
                                                .split("-")[0]))


def test_an_unknown_arrangement_is_a_usage_error():
    with pytest.raises(UsageError, match="known: user"):
        netdevs.open_setup("tap-magic")


def test_vhost_net_without_the_device_is_a_skip_with_its_reason():
    if os.path.exists("/dev/vhost-net"):
        pytest.skip("this host has /dev/vhost-net")
    with pytest.raises(Unsupported, match="/dev/vhost-net"):
        netdevs.open_setup("vhost-net")


@needs_netns
@pytest.mark.parametrize("arr, src, dst, inside, links", [
    ("tap-ifname", "tap,id=cprnet0,ifname=tap0,script=no,downscript=no", None, True,
     {"lo", "tap0"}),
    ("tap-mq", "tap,id=cprnet0,ifname=tap0,queues=2,script=no,downscript=no", None, True,
     {"lo", "tap0"}),
    ("tap-bridge", "tap,id=cprnet0,ifname=tap0,script=no,downscript=no",
     "tap,id=cprnet0,ifname=tap1,script=no,downscript=no", True, {"lo", "tap0", "tap1", "br0"}),
    ("tap-fd", "tap,id=cprnet0,fd={fd}", None, False, {"lo", "tap0"}),
])
def test_tap_arrangements_live_in_their_namespace(arr, src, dst, inside, links):
    s = netdevs.open_setup(arr, tag="st")
    try:
        fd = s.side_fds("src")[0] if s.side_fds("src") else None
        assert netdev(s.side_args("src")) == src.format(fd=fd)
        assert netdev(s.side_args("dst")) == (dst or src).format(fd=fd)
        assert s.side_fds("src") == s.side_fds("dst")
        assert set(s.ns.links()) == links
        assert (s.prefix() == s.ns.exec_prefix()) is inside
        assert s.socket_ns is s.ns and s.bind_ip == "10.77.0.1"
        assert s.echo_addr == ("10.77.0.2", 7000)
        if arr == "tap-mq":
            assert s.side_args("src")[-1] == NIC + ",mq=on,vectors=6"
        host_dev = "br0" if arr == "tap-bridge" else "tap0"
        assert "10.77.0.1/24" in s.ns.ip("-o", "addr", "show", "dev", host_dev)
        # the harness's own fd on a device both QEMUs share: the copy of fd=, a
        # detached queue of the multi-queue tap; none where each has its own or one opener
        watch = s.watch_fd
        assert (watch is not None) is (arr in ("tap-mq", "tap-fd")), watch
        if arr == "tap-fd":
            assert watch == fd
    finally:
        s.close()
    for held in (fd, watch):
        if held is not None:
            with pytest.raises(OSError):
                os.fstat(held)  # the harness's fds on the tap are closed
    s.close()  # idempotent
    assert s.ns.name not in netns.leftovers() and s.fds == {}
