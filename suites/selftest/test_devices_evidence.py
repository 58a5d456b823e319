"""Self-tests of the device evidence, on synthetic inputs: the network stream's analysis
(harness.evidence.netstream), its receiver and echo client on the loopback, and the
disk stream's verification in an image (harness.evidence.diskseq). No clocks judged:
times are given, not measured."""
import json
import os
import re
import socket
import threading

import pytest

from harness.evidence import diskseq, netstream
from harness.evidence.netstream import Arrival, analyse, tcp_record
from harness.guest.images import IMAGES_DIR

pytestmark = pytest.mark.selftest

MS = 1_000_000
LAYOUT = json.loads((IMAGES_DIR / "linux" / "layout.json").read_text())
NO_REPR = re.compile(r"None|\b[A-Z]\w*\(|\w+=\w|<\w+ object|\{'|\['")


def stream(seqs, period_ms=50, start=10_000 * MS, gaps=None):
    """Arrivals of ``seqs`` every period, ``gaps`` {index: extra ms before it}."""
    out, t = [], start
    for i, s in enumerate(seqs):
        t += (gaps or {}).get(i, 0) * MS
        out.append(Arrival(t, s, 5.0 + s * period_ms / 1000, 44))  # the guest's clock
        t += period_ms * MS
    return out


def plain(text):
    assert not NO_REPR.search(text), text
    return text


# -- the stream's analysis ------------------------------------------------------------

def test_a_clean_stream_has_no_loss_and_its_period_as_longest_gap():
    rec = analyse(stream(range(1, 101)), sent=100)
    assert (rec.received, rec.lost, rec.duplicated, rec.reordered) == (100, 0, 0, 0)
    assert rec.period_ms == 50.0 and rec.longest_gap.ms == 50.0 and rec.bytes == 4400
    assert "100 of 100 datagrams received (0 lost" in plain(rec.describe())


def test_the_switch_over_gap_losses_and_their_place_are_told():
    arr = stream([s for s in range(1, 101) if not 40 <= s <= 44], gaps={39: 300})
    switch = arr[38].t_ns + 20 * MS  # 20 ms after seq 39 arrived
    rec = analyse(arr, sent=100, switch_ns=switch)
    assert rec.lost == 5 and rec.lost_seqs == ((40, 44),)
    g = rec.longest_gap
    assert (g.after_seq, g.before_seq, g.ms) == (39, 45, 350.0)
    assert g.start_s == -0.02 and g.end_s == 0.33
    text = plain(rec.describe())
    assert "5 lost: seq 40-44" in text
    assert rec.switch_gap == g  # the longest gap is the switch-over's: said once
    assert g.guest_ms == 300.0  # six periods of the guest's clock: it ran, packets lost
    assert "across the switch-over 350 ms (the guest's own clock moved 300 ms of it), from " \
        "0.02 s before the switch-over to 0.33 s after the switch-over (seq 39, then seq 45)" \
        in text
    assert "longest gap" not in text
    # a longer gap elsewhere is said beside the switch-over's
    arr2 = stream(range(1, 101), gaps={39: 100, 70: 900})
    rec2 = analyse(arr2, sent=100, switch_ns=arr2[39].t_ns - 10 * MS)
    assert rec2.switch_gap.ms == 150.0 and rec2.longest_gap.ms == 950.0
    text2 = plain(rec2.describe())
    assert "across the switch-over 150 ms" in text2 and "longest gap 950 ms" in text2


def test_duplicates_reordering_and_an_unknown_count():
    rec = analyse(stream([1, 2, 3, 3, 5, 4, 6, 2, 8]))
    assert rec.duplicated == 2 and rec.reordered == 1
    assert rec.sent is None and rec.lost == 1 and rec.lost_seqs == ((7, 7),)
    assert "(the guest's count unknown)" in plain(rec.describe())


def test_a_stream_that_stops_ends_in_a_gap_at_the_end():
    arr = stream(range(1, 21))
    rec = analyse(arr, sent=60, switch_ns=arr[-1].t_ns, stopped_ns=arr[-1].t_ns + 3000 * MS)
    assert rec.lost == 40 and rec.longest_gap.before_seq == 0
    assert "nothing after seq 20" in plain(rec.describe())


def test_nothing_received_is_said_plainly():
    rec = analyse([], sent=30)
    assert rec.received == 0 and rec.lost == 30
    assert plain(rec.describe()).startswith("no datagram received of 30 the guest sent")


def test_the_guest_gap_is_its_own_clock_between_consecutive_seqs():
    arr = stream(range(1, 6))
    arr[3] = Arrival(arr[3].t_ns, 4, arr[2].uptime + 0.9, 44)
    rec = analyse(arr)
    assert (rec.guest_gap_ms, rec.guest_gap_after_seq) == (900.0, 3)


def test_tcp_records_say_whether_the_connection_survived():
    sent = [i * 100 * MS for i in range(10)]
    echoes = {i: t + 5 * MS for i, t in enumerate(sent)}
    echoes[4] = sent[4] + 700 * MS
    ok = tcp_record(sent, echoes, True, "", 0, 2000 * MS, switch_ns=450 * MS)
    assert ok.survived and ok.echoed == 10 and ok.longest_wait_ms == 700.0
    assert ok.longest_wait_from_s == -0.05
    assert "survived (10 of 10 line(s) echoed" in plain(ok.describe())
    del echoes[9]
    broke = tcp_record(sent, echoes, False, "Connection reset by peer", 950 * MS,
                       2000 * MS, switch_ns=450 * MS)
    assert not broke.survived and broke.broke_at_s == 0.5
    text = plain(broke.describe())
    assert "did not survive: it broke 0.50 s after the switch-over: Connection reset" in text
    rec = analyse(stream(range(1, 4)), sent=3, tcp=broke)
    assert "did not survive" in plain(rec.describe())
    assert "no TCP connection measured" in plain(analyse(stream([1]), sent=1).describe())


# -- receiver and echo client on the loopback ------------------------------------------

def test_the_receiver_records_each_datagram_and_stops_cleanly():
    rx = netstream.StreamReceiver.bind("127.0.0.1").start()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for s in (1, 2, 2, 4):
            tx.sendto(b"<13>Dec  3 09:32:18 cprnet: seq=%d t=1.50\n" % s, ("127.0.0.1", rx.port))
        tx.sendto(b"something else", ("127.0.0.1", rx.port))
        deadline = 100
        while len(rx.arrivals) < 4 and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
    finally:
        tx.close()
        got = rx.stop()
    assert [a.seq for a in got] == [1, 2, 2, 4] and rx.unparsed == 1
    assert all(a.uptime == 1.5 for a in got)
    assert not rx._thread.is_alive() and rx.sock.fileno() == -1
    rec = analyse(got, sent=4)
    assert (rec.lost, rec.duplicated) == (1, 1)


def echo_server():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    state = {}

    def serve():
        conn, _ = srv.accept()
        state["conn"] = conn
        with conn:
            while True:
                data = conn.recv(4096)
                if not data or state.get("drop"):
                    break
                conn.sendall(data)
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, state, t


def test_the_echo_client_survives_a_connection_that_stays():
    srv, state, t = echo_server()
    try:
        c = netstream.EchoClient.connect("127.0.0.1", srv.getsockname()[1],
                                         period_s=0.02).start()
        while len(c.echo_ns) < 5:
            threading.Event().wait(0.02)
        rec = c.finish(timeout=10)
    finally:
        srv.close()
    t.join(5)
    assert rec.survived and rec.echoed == rec.sent and rec.sent >= 5
    assert not c._thread.is_alive()


def test_the_echo_client_says_how_a_connection_broke():
    srv, state, t = echo_server()
    try:
        c = netstream.EchoClient.connect("127.0.0.1", srv.getsockname()[1],
                                         period_s=0.02).start()
        while len(c.echo_ns) < 3:
            threading.Event().wait(0.02)
        state["drop"] = True  # the server closes at its next read
        t.join(10)
        rec = c.finish(timeout=5)
    finally:
        srv.close()
    assert not rec.survived and rec.broke_how
    assert rec.echoed < rec.sent


def test_connecting_to_nothing_is_a_bounded_wait():
    from harness.core.errors import WaitTimeout

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(WaitTimeout, match="echo server"):
        netstream.EchoClient.connect("127.0.0.1", port, timeout=0.5)


# -- the disk stream in an image --------------------------------------------------------

@pytest.fixture
def disk(tmp_path):
    lay = diskseq.DiskLayout.from_layout(LAYOUT)
    path = str(tmp_path / "disk.raw")
    with open(path, "wb") as f:
        f.truncate(8 << 20)
    diskseq.prepare(path, lay, seed=7)
    return path, lay


def write(path, lay, seqs):
    with open(path, "r+b") as f:
        for s in seqs:
            f.seek(lay.start + ((s - 1) % lay.slots) * lay.block)
            f.write(lay.block_of(s))


def test_the_block_format_is_the_guests(disk):
    _path, lay = disk
    blk = lay.block_of(42)
    assert len(blk) == 4096 and blk.count(b"\n") == 64
    assert blk[:64] == b"CPRDISK seq=0000000042 ck=4112131907" + b" " * 27 + b"\n"


def test_an_intact_stream_is_found_whole(disk):
    path, lay = disk
    write(path, lay, range(1, 301))
    rec = diskseq.verify(path, lay, 300, seed=7, guest_read=(300, 0, 0, 0))
    assert rec.intact and (rec.found, rec.filled, rec.lost, rec.torn) == (300, 300, 0, 0)
    text = plain(rec.describe())
    assert "300 of the 300 block(s) they fill hold their last write" in text
    assert "nothing changed where the guest never writes" in text


def test_lost_torn_reordered_beyond_and_changed_are_each_named(disk):
    path, lay = disk
    write(path, lay, range(1, 1101))   # wrapped: slots 0..75 hold 1025..1100
    with open(path, "r+b") as f:
        f.seek(lay.start + 200 * lay.block + 512)      # torn: a sector of another write
        f.write(lay.block_of(7)[:512])
        f.seek(lay.start + 3 * lay.block)              # reordered: write 4 over 1028
        f.write(lay.block_of(4))
        f.seek(lay.start + 300 * lay.block)            # beyond? no: 301 is older than
        f.write(bytes(lay.block))                      # 301 was acknowledged: lost
        f.seek(5000)                                   # outside: the guest never writes
        f.write(b"\xff\xfe")
    rec = diskseq.verify(path, lay, 1100, seed=7)
    assert (rec.lost, rec.torn, rec.reordered, rec.beyond) == (1, 1, 1, 0)
    assert rec.filled == 1024 and rec.found == 1021
    assert rec.changed_bytes >= 1 and rec.changed_at[0] in (5000, 5001)
    text = plain(rec.describe())
    for words in ("1 lost", "1 torn", "1 reordered", "changed where the guest never writes"):
        assert words in text
    # fewer writes than acknowledged blocks found: the extra ones are "beyond"
    rec = diskseq.verify(path, lay, 1099, seed=7)
    assert rec.beyond == 1


def test_the_commands_range_may_change(disk):
    path, lay = disk
    with open(path, "r+b") as f:
        f.seek(lay.other_writes[0][0])
        f.write(os.urandom(4096))
    assert diskseq.verify(path, lay, 0, seed=7).intact


def test_lock_bytes_read_from_fdinfo_and_said_in_words(tmp_path):
    import fcntl
    import struct

    img = tmp_path / "img"
    img.write_bytes(bytes(4096))
    fd = os.open(img, os.O_RDWR)
    try:
        for byte in (100, 101, 201):  # F_OFD_SETLK, a read lock on one byte, as QEMU does
            fcntl.fcntl(fd, 37, struct.pack("hhqqi", fcntl.F_RDLCK, 0, byte, 1, 0))
        held = diskseq.image_locks(os.getpid(), str(img))
    finally:
        os.close(fd)
    assert held == (100, 101, 201)
    assert diskseq.describe_locks(held) == \
        "uses consistent-read, write; does not share write"
    assert diskseq.describe_locks(()) == "has the image open and holds no lock on it"
    assert diskseq.image_locks(os.getpid(), str(img)) is None  # closed now
    assert diskseq.describe_locks(None) == "does not have the image open"


def test_the_lock_watch_records_each_change_in_words(tmp_path):
    import fcntl
    import struct

    from harness.evidence.devices import LockWatch

    img = tmp_path / "img"
    img.write_bytes(bytes(4096))
    watch = LockWatch(str(img), lambda: {"src": os.getpid()})
    watch.sample()                      # not open yet
    fd = os.open(img, os.O_RDWR)
    try:
        watch.sample()                  # open, no lock
        fcntl.fcntl(fd, 37, struct.pack("hhqqi", fcntl.F_RDLCK, 0, 101, 1, 0))
        watch.sample()
        watch.sample()                  # no change: not recorded again
    finally:
        os.close(fd)
    assert [held for _t, _side, held in watch.changes] == [None, (), (101,)]
    lines = watch.describe(switch_ns=watch.changes[0][0])
    assert lines[0] == "+0.000 s: src does not have the image open"
    assert lines[1].endswith("src has the image open and holds no lock on it")
    assert lines[2].endswith("src uses write")
