"""Self-tests of the device check families (harness/run/checks/net.py, disk.py) and of
the case-wide check protocol they use (checks/base.py: setup, launch, conclude,
after_teardown, judge_case):

- the judges on records made here: each check fails on what it exists for, with its
  words, and passes a healthy record (no QEMU);
- the protocol on real QEMU pairs (the bare-metal guest, seconds): a family's case is set
  up before the source starts, each QEMU is started through its launch prefix (exec'd in
  place: the pid is QEMU's) with its fd, the case concludes on the QEMU that runs the
  guest (the target; the source after a refusal), after_teardown sees no QEMU alive,
  the case is closed, and its check is in the verdict;
- the catalogue: the devices suite, its expectations.

The Linux-guest cases with broken QEMUs are in test_broken_devices.py.
"""
import os
import shutil
from dataclasses import dataclass, field
from typing import List

import pytest

from harness.core.errors import Check
from harness.evidence import netstream
from harness.evidence.diskseq import DiskRecord
from harness.run import driver as driver_mod
from harness.run import pair as pair_mod
from harness.run import verdict as verdict_mod
from harness.run.checks import FAMILIES, Family, Launch, define
from harness.run.checks.disk import DiskCaseRecord, judge_intact, judge_locks
from harness.run.checks.net import NetRecord, judge_header, judge_stream, judge_tcp
from harness.run.config import RunConfig
from harness.run.driver import run_scenario
from harness.run.verdict import failed, judge
from harness.scenario import catalogue

pytestmark = pytest.mark.selftest

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not on PATH")

# ----------------------------------------------------------------------------- judges


def arrivals(seqs, t0=0, step_ms=50):
    return [netstream.Arrival(t0 + int(i * step_ms * 1e6), s, 1.0 + i * step_ms / 1000, 40)
            for i, s in enumerate(seqs)]


def stream(seqs, sent, switch_at=None, tcp=None):
    arr = arrivals(seqs)
    switch = arr[switch_at].t_ns + 1 if switch_at is not None else None
    return netstream.analyse(arr, sent=sent, switch_ns=switch,
                             stopped_ns=arr[-1].t_ns + 10_000_000, tcp=tcp)


def net_record(st, completed=True, **kw):
    return NetRecord("tap-bridge", "a bridge with two taps", "dst" if completed else "src",
                     completed, st, 12.5 if completed else None, **kw)


SURVIVED = netstream.tcp_record([0, 100], {0: 10, 1: 110}, True, "", 0, 200)
HUNG = netstream.tcp_record([0, 100], {0: 10}, False, "no echo of the last line within 5 s",
                            300, 400)


def test_a_stream_with_nothing_lost_passes_and_reads_in_words():
    c = judge_stream(net_record(stream(range(1, 21), 20, switch_at=9)), None)
    assert c.ok, c
    assert "20 of 20 datagrams received (0 lost" in c.observed
    assert "across the switch-over" in c.observed and "QEMU's STOP to RESUME 12.5 ms" in c.observed
    assert "through the switch-over" in c.expected


@pytest.mark.parametrize("seqs, sent, switch_at, words", [
    ([1, 2, 3, 6, 7, 8], 8, 2, "2 datagram(s) lost"),           # a hole across it
    ([1, 2, 3, 4, 5], 9, 2, "4 datagram(s) lost"),              # the tail never came
    ([1, 2, 3, 3, 4, 5], 5, 2, "1 duplicated"),
    ([1, 2, 4, 3, 5], 5, 1, "1 out of order"),
    ([1, 2, 3, 4, 5], None, 2, "count of datagrams sent is unknown"),
    ([1, 2, 3, 4, 5], 5, 4, "nothing arrived after the switch-over"),
])
def test_a_broken_stream_fails_net_stream_saying_how(seqs, sent, switch_at, words):
    c = judge_stream(net_record(stream(seqs, sent, switch_at)), None)
    assert not c.ok and c.id == "net.stream"
    assert words in c.detail, c.detail


def test_on_a_refusal_the_stream_is_judged_on_the_source():
    c = judge_stream(net_record(stream(range(1, 11), 10), completed=False), None)
    assert c.ok and "on the source, which carried on" in c.expected
    assert "switch-over" not in c.observed


def test_tcp_held_through_the_transfer():
    ok = judge_tcp(net_record(stream(range(1, 6), 5, 2, tcp=SURVIVED)))
    bad = judge_tcp(net_record(stream(range(1, 6), 5, 2, tcp=HUNG)))
    assert ok.ok and not bad.ok and bad.id == "net.tcp"
    assert "did not survive" in bad.observed
    assert judge_tcp(net_record(stream(range(1, 6), 5, 2))) is None  # no way in: no check


def test_where_the_target_forwards_another_port_clients_must_reconnect():
    st = stream(range(1, 6), 5, 2, tcp=HUNG)
    ok = judge_tcp(net_record(st, reconnect_to="127.0.0.1:4242", reconnect=SURVIVED))
    assert ok.ok, ok  # the held connection hanging is expected, and said
    assert "clients reconnect to the target's own forwarded port 127.0.0.1:4242" in ok.expected
    assert "the one held through the source's port: the TCP connection did not survive" \
        in ok.observed
    bad = judge_tcp(net_record(st, reconnect_to="127.0.0.1:4242", reconnect=HUNG))
    assert not bad.ok


def test_the_tap_header_must_not_change_under_the_running_source():
    st = stream(range(1, 6), 5, 2)
    assert judge_header(net_record(st)) is None  # no fd held: not judged
    assert judge_header(net_record(st, tap_header=((-3.0, 12),))).ok
    assert judge_header(net_record(st, tap_header=((-3.0, 12), (0.5, 10)))).ok  # after STOP
    bad = judge_header(net_record(st, tap_header=((-3.0, 12), (-0.124, 10), (0.02, 12))))
    assert not bad.ok and bad.id == "net.tap-header"
    assert bad.observed == ("12 at the start, then 10 from 0.124 s before the source's STOP, "
                            "then 12 from 0.020 s after the source's STOP")
    assert not judge_header(net_record(st, tap_header=((None, 12), (None, 10)))).ok
    assert not judge_header(net_record(st, tap_header_error="TUNGETVNETHDRSZ: Bad fd")).ok


def disk(**kw):
    base = dict(written=40, filled=40, found=40, lost=0, torn=0, reordered=0, beyond=0,
                changed_bytes=0, changed_at=(), guest_read=(40, 0, 0, 0))
    return DiskRecord(**{**base, **kw})


DST_WRITES = (100, 101, 200, 201)  # uses consistent-read, write; does not share them


@pytest.mark.parametrize("image, ok, words", [
    (disk(), True, "none lost, torn or reordered"),
    (disk(found=39, lost=1), False, "1 lost"),
    (disk(found=39, torn=1), False, "1 torn"),
    (disk(changed_bytes=4096, changed_at=(0x300000,)), False,
     "4096 byte(s) changed where the guest never writes (first at 0x300000)"),
    (disk(written=0, filled=0, found=0, guest_read=(0, 0, 0, 0)), False, ""),
    (disk(guest_read=(39, 0, 1, 0)), False, "1 torn, 0 stale"),
])
def test_disk_intact(image, ok, words):
    c = judge_intact(DiskCaseRecord("dst", True, image.written, 0, image.guest_read, image))
    assert c.ok is ok and c.id == "disk.intact", c
    assert words in c.observed
    assert not judge_intact(DiskCaseRecord("", True, note="no QEMU ran the guest")).ok


def test_disk_locks_follow_the_guest():
    moved = DiskCaseRecord("dst", True, src_locks=(), dst_locks=DST_WRITES)
    assert judge_locks(moved).ok
    assert judge_locks(moved).observed == ("the source has the image open and holds no lock "
                                           "on it; the target uses consistent-read, write; "
                                           "does not share consistent-read, write")
    assert not judge_locks(DiskCaseRecord("dst", True, src_locks=(101,),
                                          dst_locks=DST_WRITES)).ok
    assert not judge_locks(DiskCaseRecord("dst", True, src_locks=(), dst_locks=())).ok
    assert judge_locks(DiskCaseRecord("src", False, src_locks=DST_WRITES)).ok  # refused
    assert not judge_locks(DiskCaseRecord("", True)).ok


# ---------------------------------------------------------------- the catalogue

def test_the_devices_suite_and_its_expectations():
    ids = {s.id for s in catalogue.suite("devices")}
    assert ids == {"net/user", "net/hostfwd", "net/hostfwd-per-side", "net/tap-ifname",
                   "net/tap-mq", "net/tap-fd", "net/tap-bridge", "net/vhost-net",
                   "disk/io-in-flight"}
    for name in ("transfer", "refusals", "core"):
        assert not ids & {s.id for s in catalogue.suite(name)}, name
    for sid in ids:
        sc = catalogue.get(sid)
        assert sc.guest == "linux-x86" and sc.slow and (sc.net or sc.disk), sid
    assert str(catalogue.get("net/hostfwd").expect) == \
        "dst-refuses: Could not set up host forwarding rule"
    assert not catalogue.get("net/tap-ifname").retry


# ---------------------------------------------------------------- the protocol, live

PROBE = define("selftest.probe", "the probe family's case (self-test only)", "harness")


@dataclass
class ProbeCase:
    read_fd: int
    write_fd: int
    calls: List[str] = field(default_factory=list)
    pids: dict = field(default_factory=dict)

    def close(self):
        self.calls.append("close")
        for fd in (self.read_fd, self.write_fd):
            os.close(fd)


class Probe(Family):
    """A family that uses every case-wide hook and records what it saw."""
    name = "probe"

    def __init__(self):
        self.case = None

    def setup(self, ctx):
        r, w = os.pipe()
        self.case = ProbeCase(r, w, ["setup"])
        return self.case

    def qemu_args(self, ctx, side):
        if ctx.case is not None:
            ctx.case.calls.append(f"args {side}")
        return []

    def launch(self, ctx, side):
        # `env` execs its command in place, as nsenter does: the pid stays QEMU's.
        return Launch(("env", f"CPRH_PROBE={side}"), (ctx.case.read_fd,))

    def prepare(self, ctx):
        ctx.case.calls.append(f"prepare {ctx.tag}")

    def conclude(self, ctx):
        case = ctx.case
        case.calls.append(f"conclude on {ctx.running.side if ctx.running else 'none'}")
        seen = {}
        for vm in (ctx.source, ctx.target):
            if vm is not None and vm.is_running():
                case.pids[vm.side] = vm.pid
                with open(f"/proc/{vm.pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                fd = os.readlink(f"/proc/{vm.pid}/fd/{case.read_fd}")
                seen[vm.side] = (os.readlink(f"/proc/{vm.pid}/exe"),
                                 f"CPRH_PROBE={vm.side}".encode() in env,
                                 fd == os.readlink(f"/proc/self/fd/{case.read_fd}"))
        return {"seen": seen, "completed": ctx.completed,
                "switch": ctx.switch_ns is not None}

    def after_teardown(self, ctx):
        ctx.case.calls.append("after teardown")
        alive = [p for p in ctx.case.pids.values() if os.path.exists(f"/proc/{p}")]
        return {**ctx.record, "alive after teardown": alive}

    def judge_case(self, r):
        rec = r.devices.get(self.name)
        return [PROBE(True, "a record", "one")] if rec is not None else []


@pytest.fixture
def probe(monkeypatch):
    fam = Probe()
    for mod in (pair_mod, driver_mod, verdict_mod):
        monkeypatch.setattr(mod, "FAMILIES", FAMILIES + (fam,))
    return fam


@needs_qemu
def test_the_case_protocol_on_a_completed_transfer(tmp_path, probe):
    r = run_scenario(catalogue.get("transfer/unix-unix-memfd-immediate-q35"), RunConfig(),
                     str(tmp_path / "a"))
    calls = probe.case.calls
    assert calls[:2] == ["setup", "args src"], calls
    assert calls[2:] == ["prepare first", "args dst", "conclude on dst", "after teardown",
                         "close"], calls
    rec = r.devices["probe"]
    assert rec["completed"] and rec["switch"] and rec["alive after teardown"] == []
    for side in ("src", "dst"):
        exe, env, fd = rec["seen"][side]
        assert os.path.basename(exe).startswith("qemu-system"), exe  # exec'd in place
        assert env and fd, (side, rec)
        assert r.cmdlines[side][:2] == ["env", f"CPRH_PROBE={side}"]
    assert "selftest.probe" in {c.id for c in judge(r)}
    with pytest.raises(OSError):
        os.fstat(probe.case.read_fd)  # closed


@needs_qemu
def test_the_case_protocol_concludes_on_the_source_after_a_refusal(tmp_path, probe):
    sc = catalogue.get("channel/cpr-inet-dst").with_(retry=False)
    r = run_scenario(sc, RunConfig(), str(tmp_path / "a"))
    assert str(r.observed) == "dst-refused", r.observed_message
    calls = probe.case.calls
    assert "conclude on src" in calls and calls[-2:] == ["after teardown", "close"], calls
    assert not r.devices["probe"]["completed"]
    checks = judge(r)
    assert "selftest.probe" in {c.id for c in checks}
    assert not [c.id for c in failed(checks) if not c.id.startswith("pause.")]


def test_checks_of_the_families_read_as_words():
    """What the families put into their checks never reads like Python (Check refuses)."""
    for c in (judge_stream(net_record(None, note="no QEMU ran the guest"), None),
              judge_intact(DiskCaseRecord("", False))):
        assert isinstance(c, Check) and not c.ok
