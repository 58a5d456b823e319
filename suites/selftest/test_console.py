"""Self-tests of the console heartbeat: the parser and the continuity analysis on
synthetic byte streams, the tail on files a test writes, the bare-metal guests' own
heartbeat in a real QEMU, and one real cpr-transfer whose two serial files must make
one unbroken sequence.

No timed assertion: the tail's bounds are checked against the writer's own clock reads
around its writes (they must bracket), and live guests are waited for, never timed.
"""
import json
import os
import shutil
import time

import pytest

from harness.core.errors import UsageError
from harness.core.wait import wait_until
from harness.evidence.console import (ConsoleFormat, classify, console_continuity,
                                      segment_faults, serial_bytes, serial_size)
from harness.evidence.console_tail import (Arrival, ConsoleArrivals, ConsoleTail,
                                           ConsoleTailError)
from harness.guest.images import image
from harness.qemu.process import QemuProcess

pytestmark = pytest.mark.selftest

FMT = ConsoleFormat(r"^hb (?P<seq>[0-9a-f]{8})$", "CPRGUEST x86 v2 boot", 25)
BOOT = b"CPRGUEST x86 v2 boot\n"
LINE = len(b"hb 00000000\n")


def hb(*seqs):
    return b"".join(b"hb %08x\n" % s for s in seqs)


def plain(text):
    """What a user reads never holds a Python repr or 'None'."""
    for bad in ("None", "b'", "ConsoleLine(", "Arrival(", "[", "{"):
        assert bad not in text, (bad, text)
    return text


SRC = BOOT + hb(*range(42))            # the source printed 0..41 and stopped


# ----------------------------------------------------------------- the format and its lines

def test_the_layouts_are_the_contract():
    for name in ("x86-bios", "aarch64-virt"):
        img = image(name)
        fmt = ConsoleFormat.of(img)
        assert img.heartbeat_period_ms == fmt.period_ms > 0
        assert classify(b"hb 0000002a", fmt).seq == 42
        assert classify(img.boot_marker.encode(), fmt).kind == "boot"


def test_lines_are_classified():
    assert classify(b"hb 0000002a", FMT).seq == 42
    assert classify(b"hb 0000002a\r", FMT).seq == 42
    assert classify(b"CPRGUEST x86 v2 boot", FMT).kind == "boot"
    for other in (b"hb 2a", b"hb 0000002A", b"xhb 0000002a", b"hb 0000002a ", b""):
        assert classify(other, FMT).kind == "other", other
    assert classify(b"hb \x00\xff", FMT).text == "hb \\x00\\xff"


def test_a_format_needs_a_seq_group_and_a_period():
    with pytest.raises(UsageError, match="seq"):
        ConsoleFormat(r"^hb ([0-9a-f]{8})$", "boot", 25)
    with pytest.raises(UsageError, match="period"):
        ConsoleFormat(r"^hb (?P<seq>[0-9a-f]{8})$", "boot", 0)
    with pytest.raises(UsageError, match="compile"):
        ConsoleFormat(r"^hb (?P<seq>[0-9a-f]{8}$", "boot", 25)


def test_segment_faults():
    assert segment_faults([5, 6, 7]) == ([], [], [])
    assert segment_faults([5, 8, 9]) == ([(6, 7)], [], [])
    assert segment_faults([5, 6, 6, 7]) == ([], [6], [])
    assert segment_faults([5, 7, 6, 8]) == ([], [], [6])


# ----------------------------------------------------------------- continuity

def test_an_unbroken_switch_over():
    c = console_continuity(FMT, SRC, hb(*range(42, 80)), len(SRC))
    assert c.unbroken and c.continues and not c.cut
    assert (c.src_first, c.src_last, c.dst_first, c.dst_last) == (0, 41, 42, 79)
    assert (c.src_heartbeats, c.dst_heartbeats) == (42, 38)
    text = plain(c.describe())
    assert "source heartbeats 0..41" in text and "target heartbeats 42..79" in text
    assert "nothing lost, repeated or out of order" in text
    assert "the source printed nothing after the switch-over" in text


@pytest.mark.parametrize("guest, ok", [(80, True), (81, True), (82, True), (83, False),
                                       (200, False), (None, True)])
def test_a_console_that_stops_reaching_the_host_is_seen_by_the_guests_own_count(guest, ok):
    """The target's sequence has no hole, it only ends too early: the guest's own count
    (read before the files) names what never arrived; one heartbeat going out while it is
    read, and the next, are not a loss."""
    c = console_continuity(FMT, SRC, hb(*range(42, 80)), len(SRC), guest_heartbeats=guest)
    assert c.unbroken is ok, c.describe()
    assert c.lost_count == 0 and c.continues
    if not ok:
        assert f"the guest had printed up to heartbeat {guest - 1}: {guest - 80} never " \
               "reached the console file" in plain(c.describe())


def test_a_silent_target_is_seen_from_the_source_end():
    c = console_continuity(FMT, SRC, b"", len(SRC), guest_heartbeats=60)
    assert not c.unbroken and c.unseen == 18
    assert "18 never reached the console file" in plain(c.describe())


@pytest.mark.parametrize("at", range(1, LINE))
def test_a_line_cut_across_the_files_is_joined(at):
    line = hb(42)
    src = SRC + line[:at]
    c = console_continuity(FMT, src, line[at:] + hb(43, 44), len(src))
    assert c.unbroken, c.describe()
    assert c.cut and c.cut_seq == 42 and c.dst_first == 42 and c.src_last == 41
    assert "line 42 began on the source and ended on the target" in plain(c.describe())


def test_a_cut_line_the_target_has_not_finished():
    src = SRC + b"hb 000"
    c = console_continuity(FMT, src, b"", len(src))
    assert c.cut and c.cut_seq is None and not c.continues and not c.garbled
    assert "the target printed no heartbeat" in plain(c.describe())


def test_a_lost_number():
    c = console_continuity(FMT, SRC, hb(42, 43, 45, 46), len(SRC))
    assert not c.unbroken and c.continues
    assert c.lost == ((44, 44),) and c.lost_count == 1
    assert "lost 1: 44" in plain(c.describe())


def test_numbers_lost_at_the_switch_over():
    c = console_continuity(FMT, SRC, hb(45, 46), len(SRC))
    assert not c.continues and c.lost == ((42, 44),) and c.lost_count == 3
    text = plain(c.describe())
    assert "the target began at 45 after the source's 41" in text and "lost 3: 42..44" in text


def test_a_repeat_at_the_switch_over():
    c = console_continuity(FMT, SRC, hb(41, 42, 43), len(SRC))
    assert not c.unbroken and not c.continues
    assert c.repeated == (41,) and c.repeated_count == 1 and c.lost_count == 0
    assert "repeated 1: 41" in plain(c.describe())


def test_out_of_order():
    c = console_continuity(FMT, SRC, hb(42, 44, 43, 45), len(SRC))
    assert c.out_of_order == (43,) and c.lost_count == 0 and not c.unbroken
    assert "out of order 1: 43" in plain(c.describe())


def test_a_reset_on_the_target():
    c = console_continuity(FMT, SRC, hb(42) + BOOT + hb(0, 1, 2), len(SRC))
    assert c.reset and c.reset_side == "target" and not c.continues and not c.unbroken
    assert c.lost_count == c.repeated_count == c.out_of_order_count == 0
    assert (c.dst_first, c.dst_last) == (42, 2)
    text = plain(c.describe())
    assert "the target rebooted" in text and "started again at 0" in text
    assert "the first 42, the last 2" in text


def test_the_boot_at_the_start_is_no_reset():
    c = console_continuity(FMT, BOOT + hb(0, 1), hb(2), None)
    assert not c.reset and c.unbroken


def test_source_bytes_after_the_switch_over():
    src = SRC + hb(42, 43)
    c = console_continuity(FMT, src, hb(42, 43, 44), len(SRC))
    assert c.continues and not c.unbroken
    assert c.src_bytes_after_switch == 2 * LINE and c.src_heartbeats_after_switch == (42, 43)
    assert f"the source printed {2 * LINE} byte(s) after the switch-over (heartbeats 42, 43)" \
        in plain(c.describe())


def test_garbage_is_counted_and_quoted():
    c = console_continuity(FMT, SRC, hb(42) + b"\x00junk\n" + hb(43), len(SRC))
    assert c.garbled == 1 and c.garbled_example == "\\x00junk" and not c.unbroken
    assert "1 line(s) neither heartbeat nor boot marker, e.g. '\\x00junk'" in plain(c.describe())


def test_a_garbage_fragment_before_a_whole_target_line():
    src = SRC + b"zz"
    c = console_continuity(FMT, src, hb(42, 43), len(src))
    assert c.cut and c.cut_seq is None and c.garbled == 1 and c.dst_first == 42


def test_sides_that_printed_nothing():
    c = console_continuity(FMT, b"", b"", 0)
    assert not c.continues and not c.unbroken
    assert "the source printed no heartbeat; the target printed no heartbeat" in plain(c.describe())
    c = console_continuity(FMT, SRC, b"", None)
    assert "the switch-over" not in plain(c.describe())


def test_a_switch_offset_outside_the_file_is_a_usage_error():
    with pytest.raises(UsageError, match="outside"):
        console_continuity(FMT, SRC, b"", len(SRC) + 1)
    with pytest.raises(UsageError, match="outside"):
        console_continuity(FMT, SRC, b"", -1)


def test_the_record_is_plain_data():
    c = console_continuity(FMT, SRC, hb(42, 44), len(SRC))
    d = c.to_dict()
    assert d["lost"] == [[43, 43]] and d["unbroken"] is False and d["continues"] is True
    with pytest.raises(Exception):
        c.lost_count = 0  # frozen


def test_serial_helpers(tmp_path):
    p = tmp_path / "x.serial"
    assert serial_bytes(str(p)) == b"" and serial_size(str(p)) == 0
    p.write_bytes(SRC)
    assert serial_bytes(str(p)) == SRC and serial_size(str(p)) == len(SRC)


# ----------------------------------------------------------------- the tail

def _reaped(tail):
    """The tail's child is gone and reaped: nothing of it outlives the test."""
    return tail._proc is not None and tail._proc.returncode is not None and not tail.running


def test_the_tail_stamps_the_switch_over_and_brackets_the_silence(tmp_path):
    src, dst = tmp_path / "src.serial", tmp_path / "dst.serial"
    src.write_bytes(BOOT + hb(0, 1))                 # there before the tail: backlog
    tail = ConsoleTail(FMT, str(src), str(dst)).start()   # returns after its first poll
    with open(src, "ab", buffering=0) as f:
        for seq in range(2, 20):
            time.sleep(0.005)
            before_19 = time.monotonic_ns()
            f.write(hb(seq))
        after_19 = time.monotonic_ns()
        f.write(b"hb 000")                            # cut: the source stops mid-line
    time.sleep(0.05)
    with open(dst, "ab", buffering=0) as f:
        before_20 = time.monotonic_ns()
        f.write(b"00014\n")                          # line 20 is complete now
        after_20 = time.monotonic_ns()
        for seq in range(21, 30):
            time.sleep(0.005)
            f.write(hb(seq))
    arrivals = tail.stop()
    assert _reaped(tail)
    assert [a.seq for a in arrivals.heartbeats("source")] == list(range(2, 20))
    assert [a.seq for a in arrivals.heartbeats("target")] == list(range(20, 30))
    assert arrivals.backlog == 3 and arrivals.other_lines == 0 and arrivals.ended == "asked"
    gap = arrivals.gap()
    assert (gap.src_seq, gap.dst_seq) == (19, 20)
    # line 19 became complete between before_19 and after_19, line 20 between before_20
    # and after_20: the tail's bounds must hold every silence that allows, whatever the
    # scheduler did to the tail or to this writer
    assert gap.max_ms * 1e6 >= before_20 - after_19
    assert gap.min_ms * 1e6 <= after_20 - before_19
    assert gap.min_ms <= gap.gap_ms <= gap.max_ms
    assert "last source heartbeat 19 -> first target heartbeat 20" in plain(gap.describe())
    assert "console tail: 18 source and 10 target heartbeat(s)" in plain(arrivals.describe())


def _arrivals(stamps):
    """Arrivals from (side, seq, after_ms, t_ms)."""
    ms = 1_000_000
    return ConsoleArrivals(
        period_ms=25, started_ns=0, stopped_ns=10**9,
        arrivals=tuple(Arrival(side, "heartbeat", seq, int(a * ms), int(t * ms))
                       for side, seq, a, t in stamps),
        backlog=0, other_lines=0, dropped=0, polls=100, interval_ms=1.0, relaxed_ns=0,
        longest_fast_gap_ms=1.0, cpu_s=0.01, ended="asked")


def test_the_gap_from_stamped_arrivals():
    arr = _arrivals([("source", 7, 99, 100), ("source", 8, 124, 125), ("source", 9, 149, 150),
                     ("target", 10, 189, 190.5), ("target", 11, 215, 216)])
    gap = arr.gap()
    assert (gap.src_seq, gap.dst_seq) == (9, 10)
    assert gap.gap_ms == pytest.approx(40.5) and gap.spacing_ms == pytest.approx(25)
    assert gap.min_ms == pytest.approx(39) and gap.max_ms == pytest.approx(41.5)
    assert plain(gap.describe()) == ("last source heartbeat 9 -> first target heartbeat 10: "
                                     "40.5 ms (39.0..41.5), 15.5 ms beyond the source's "
                                     "spacing of 25.0 ms")
    short = _arrivals([("source", 1, 0, 1), ("target", 2, 10, 11)]).gap()
    assert "15.0 ms short of the period of 25 ms" in plain(short.describe())
    assert ConsoleArrivals.from_dict(json.loads(json.dumps(arr.to_dict()))) == arr
    assert _arrivals([("source", 1, 0, 1)]).gap() is None


def test_the_tail_stops_by_itself_and_cleanly(tmp_path):
    tail = ConsoleTail(FMT, str(tmp_path / "a"), str(tmp_path / "b"), max_seconds=0.2).start()
    wait_until(lambda: not tail.running, what="the tail to stop by itself", timeout=30)
    arrivals = tail.stop()
    assert arrivals.ended == "max_seconds" and arrivals.arrivals == () and arrivals.gap() is None
    assert "stopped by its time limit" in plain(arrivals.describe())
    assert tail.stop() is arrivals                       # once more is fine
    with pytest.raises(UsageError):
        tail.start()


def test_the_tail_as_a_context_manager_stops_on_an_error(tmp_path):
    with pytest.raises(RuntimeError):
        with ConsoleTail(FMT, str(tmp_path / "a"), str(tmp_path / "b")) as tail:
            raise RuntimeError("the case failed")
    assert _reaped(tail) and tail.result is not None


def test_the_tail_ends_with_its_parent(tmp_path):
    tail = ConsoleTail(FMT, str(tmp_path / "a"), str(tmp_path / "b")).start()
    try:
        tail._proc.stdin.close()                    # what the parent's death does
        wait_until(lambda: not tail.running, what="the child to notice", timeout=30)
        assert tail._proc.returncode == 3
    finally:
        tail.close()
    assert _reaped(tail)


def test_the_tail_starts_over_on_a_file_opened_anew(tmp_path):
    src, dst = tmp_path / "src.serial", tmp_path / "dst.serial"
    dst.write_bytes(hb(*range(100, 140)))            # a stale file from before
    with ConsoleTail(FMT, str(src), str(dst)) as tail:
        dst.unlink()
        with open(dst, "wb", buffering=0) as f:      # the target opens it anew
            for seq in range(5):
                f.write(hb(seq))
        wait_until(lambda: tail.progress()["target"], what="the tail to read the new file",
                   timeout=30, goal=lambda n: n >= 5)
    arrivals = tail.stop()
    assert [a.seq for a in arrivals.heartbeats("target")] == list(range(5))
    assert arrivals.backlog == 40                    # the stale file: read, not stamped


def test_bad_tail_arguments(tmp_path):
    for kw in ({"max_seconds": 0}, {"interval_s": 0}, {"relaxed_s": 2}):
        with pytest.raises(UsageError):
            ConsoleTail(FMT, "a", "b", **kw)
    with pytest.raises(UsageError, match="never started"):
        ConsoleTail(FMT, "a", "b").stop()


def test_a_failing_read_is_a_typed_error(tmp_path):
    src, dst = tmp_path / "src.serial", tmp_path / "dst.serial"
    src.mkdir()                                        # opens, but read() fails: EISDIR
    tail = ConsoleTail(FMT, str(src), str(dst))
    with pytest.raises(ConsoleTailError, match="IsADirectoryError"):
        tail.start()
    assert _reaped(tail)
    src.rmdir()
    tail = ConsoleTail(FMT, str(src), str(dst)).start()
    dst.mkdir()                                        # a target "file" it cannot read
    with pytest.raises(ConsoleTailError, match="IsADirectoryError"):
        wait_until(tail.progress, what="the tail to fail", timeout=30, goal=lambda _p: False)
    with pytest.raises(ConsoleTailError, match="IsADirectoryError") as info:
        tail.stop()
    assert info.value.arrivals is not None and info.value.arrivals.ended == "failed"
    assert _reaped(tail)


# ----------------------------------------------------------------- live guests

def _accel():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        return "kvm"
    except OSError:
        return "tcg"


def _boot_and_read(tmp_path, name, binary, machine_args, want=8):
    img = image(name)
    fmt = ConsoleFormat.of(img)
    serial = str(tmp_path / f"{name}.serial")
    args = machine_args + ["-m", "64M", "-nodefaults", "-display", "none",
                           *img.qemu_args(serial)]
    with QemuProcess("src", binary, args, str(tmp_path), str(tmp_path)) as vm:
        vm.launch()
        vm.connect_qmp(60.0)

        def lines():
            vm.check_alive("while the guest runs")
            return [classify(x, fmt) for x in serial_bytes(serial).split(b"\n")[:-1]]
        got = wait_until(lines, what=f"{want} heartbeat lines from {name}", timeout=60,
                         goal=lambda ls: sum(x.kind == "heartbeat" for x in ls) >= want,
                         side="src", log_path=vm.log_path, interval=0.05,
                         show=lambda ls: f"{len(ls)} line(s)").value
    assert got[0].kind == "boot", got[:2]
    seqs = [x.seq for x in got[1:]]
    assert seqs == list(range(len(seqs))) and len(seqs) >= want, seqs[:20]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 not on PATH")
def test_the_x86_guest_prints_consecutive_heartbeats(tmp_path):
    _boot_and_read(tmp_path, "x86-bios", "qemu-system-x86_64",
                   ["-machine", "q35", "-accel", _accel()])


@pytest.mark.skipif(shutil.which("qemu-system-aarch64") is None,
                    reason="qemu-system-aarch64 not on PATH (Debian: qemu-system-arm)")
def test_the_aarch64_guest_prints_consecutive_heartbeats(tmp_path):
    img = image("aarch64-virt")
    _boot_and_read(tmp_path, "aarch64-virt", "qemu-system-aarch64",
                   ["-machine", img.machine, "-accel", "tcg"])


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                    reason="qemu-system-x86_64 not on PATH")
def test_a_real_cpr_transfer_keeps_the_console_sequence(tmp_path):
    from harness.run.config import RunConfig
    from harness.run.driver import run_scenario
    from harness.scenario import catalogue

    r = run_scenario(catalogue.get("transfer/unix-unix-memfd-immediate-q35"), RunConfig(),
                     str(tmp_path / "a"))
    assert r.first.dst_state == "running", (r.observed, r.observed_message)
    # The harness's own console check saw the same, in the window.
    seen = r.window.devices["heartbeat"]
    assert seen.unbroken, seen.describe()
    src, dst = r.artifacts["src.serial"], r.artifacts["dst.serial"]
    # the run is over: the source was stopped at the switch-over and then quit, so its
    # file's size now is its size at the switch-over
    c = console_continuity(ConsoleFormat.of(image("x86-bios")), serial_bytes(src),
                           serial_bytes(dst), serial_size(src))
    assert c.unbroken, c.describe()
    assert c.src_heartbeats > 0 and c.dst_heartbeats > 0
    assert "the target continued the source's sequence" in plain(c.describe())
