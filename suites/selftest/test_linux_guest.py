"""Self-tests of the Linux guest's contract (images/linux/layout.json, build.py's checks
of it) and of the console driver's command matching."""
import copy
import json
import socket
import threading
from pathlib import Path

import pytest

from harness.guest.images import IMAGES_DIR, _build_module

pytestmark = pytest.mark.selftest

LAYOUT = json.loads((IMAGES_DIR / "linux" / "layout.json").read_text())


def check(layout, tmp_path):
    """build.py's validation of ``layout`` (raises its BuildError)."""
    b = _build_module()
    (tmp_path / "layout.json").write_text(json.dumps(layout))
    spec = b.LinuxSpec(name="linux-x86", description="", src_dir=Path(tmp_path),
                       sources=("layout.json",), layout_file="layout.json", init="init")
    return b._load_linux_layout(spec)


def test_the_layout_is_valid_and_the_conf_has_the_workload_constants(tmp_path):
    lay = check(LAYOUT, tmp_path)
    conf = _build_module()._gen_conf(lay)
    for line in ("STREAM_MS=50", "STREAM_TAG=cprnet", "DISK_FIRST_BLOCK=1024",
                 "DISK_SLOTS=1024", "DISK_BLOCK=4096", "DISK_LINE=64",
                 "DISK_CK_MUL=2654435761", "DISK_CK_ADD=12345"):
        assert line in conf.splitlines()


@pytest.mark.parametrize("change, message", [
    ({"DISK_BLOCK": 1000}, "multiple of 512"),
    ({"DISK_LINE": 96}, "power of two"),
    ({"DISK_LINE": 32, "DISK_BLOCK": 512}, "at least 37"),
    ({"DISK_CK_MUL": 2 ** 32}, "DISK_CK_MUL"),
    ({"STREAM_TAG": "a b"}, "STREAM_TAG"),
    ({"STREAM_MS": 0}, "STREAM_MS"),
    ({"DISK_OTHER_WRITES": [{"offset": 4 << 20, "size": 4096, "what": "x"}]}, "overlaps"),
    ({"STREAM_REGEX": "seq=("}, "STREAM_REGEX"),
])
def test_a_bad_workload_constant_is_refused_with_its_name(tmp_path, change, message):
    lay = copy.deepcopy(LAYOUT)
    lay.update(change)
    with pytest.raises(Exception, match=message):
        check(lay, tmp_path)


def test_every_workload_reply_has_its_regex():
    import re
    samples = {
        "net": ["net ok dev=eth1", "net error no NIC with MAC 52:54:00:00:00:09"],
        "nstop": ["nstop sent=312"],
        "dstart": ["dstart ok", "dstart none"],
        "dstop": ["dstop written=77 errors=0"],
        "dread": ["dread written=77 ok=77 lost=0 torn=0 stale=0"],
    }
    for cmd, lines in samples.items():
        for line in lines:
            assert re.match(LAYOUT["COMMANDS"][cmd], line + "\r"), (cmd, line)
    m = re.search(LAYOUT["STREAM_REGEX"], "<13>Dec  3 09:32:18 cprnet: seq=12 t=8.59\n")
    assert m and m["seq"] == "12" and m["uptime"] == "8.59"


class FakeConsole:
    """A console socket that answers a command in two pieces, the second late."""

    def __init__(self, path, pieces):
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(1)
        self.pieces = pieces
        self.got = b""
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        conn, _ = self.srv.accept()
        with conn:
            self.got = conn.recv(100)
            for piece, gate in self.pieces:
                if gate is not None:
                    gate.wait(5)
                conn.sendall(piece)
            conn.recv(1)  # until the client closes


def test_a_reply_is_matched_only_once_its_line_is_whole(tmp_path):
    from harness.guest.linux import LinuxDriver

    gate = threading.Event()
    path = str(tmp_path / "con")
    fake = FakeConsole(path, [(b"CPRLINUX t=1.00 n=1 sum=" + b"a" * 64 + b" err=0\r\n"
                               b"net ok dev=", None), (b"eth1\r\n", gate)])
    drv = LinuxDriver.__new__(LinuxDriver)
    drv.commands = {"net": __import__("re").compile(LAYOUT["COMMANDS"]["net"])}
    drv.console = {"src": path}
    threading.Timer(0.3, gate.set).start()
    reply = drv.command("src", "net 52:54:00:c0:ff:01 10.0.2.15/24 10.0.2.2 5000 7000", 10)
    assert reply == {"result": "ok", "detail": "dev=eth1"}
    assert fake.got == b"net 52:54:00:c0:ff:01 10.0.2.15/24 10.0.2.2 5000 7000\n"
    fake.srv.close()
