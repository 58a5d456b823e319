"""The same arguments plus ``-incoming``: what an option provides carries on to the new
QEMU (docs/same-arguments.md).

cpr-transfer starts the new QEMU with the old one's command line while the old one
still runs, and only memory-backend fds travel on the cpr channel: every file, socket
and port an option names is opened anew by the target. A scenario of area ``args``
adds one option (:attr:`Scenario.extra_args`) and says what must hold afterwards in
:attr:`Scenario.arg_checks`, one probe a string, ``KIND:ARG`` (``{dir}``, ``{name}``
(the target's name), ``{port0}``... templated as in the options; a relative path is in
the case's directory, where a shared console file lives):

===================  =============================================================
``pidfile:PATH``     PATH holds the target's pid
``kept:PATH``        PATH still begins with what the source wrote before the target
                     started (its size and SHA-256 taken then)
``socket:PATH``      a client connecting to the unix socket PATH reaches the target
                     (SO_PEERCRED's pid); ``qmp:PATH`` also gets a QMP greeting and
                     ``running``, ``vnc:PATH`` an RFB greeting
``tcp:PORT``         the socket listening on 127.0.0.1:PORT is the target's
``image:NODE:PATH``  the image PATH (created empty before the source starts) carries
                     a block the source wrote through node NODE before the hand-over,
                     and the target reads it and writes its own through NODE
``name:NAME``        the target answers ``query-name`` with NAME
``user:USER``        the target runs as USER
``src-hmp:CMD => A``  not a probe: a management layer's step, the HMP command CMD sent
                     to the source before the target starts; its answer must hold A
                     (without ``=> A``: answer nothing, as HMP does on success)
===================  =============================================================

Each probe looks at the window's end (both QEMUs alive, the source stopped); then the
family quits the old QEMU, as a management layer does once the update is done, and the
probes of host resources (files, sockets, ports, images) look again: an old QEMU that
removes or rewrites what the new one now owns breaks it only then. Check ids:
``args.<kind>`` and ``args.<kind>.after-quit``, and ``args.quit``.
"""
from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import socket
import struct
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from harness.core.errors import AbnormalShutdown, Check, HarnessError, UsageError
from harness.core.sides import Side
from harness.evidence.console import printable
from harness.run.checks.base import (ArgsContext, Family, PrepareContext, WatchContext,
                                     define)
from harness.run.plan import template
from harness.run.records import AttemptRecord
from harness.run.result import PairResult

#: How long one probe may wait for a socket's answer.
ANSWER_S = 3.0
#: The most events a QMP probe reads past before its reply.
MAX_EVENTS = 64
#: How long the old QEMU gets to quit when asked.
QUIT_S = 10.0
#: An image the scenario names is created this big (sparse zeros).
IMAGE_BYTES = 1 << 20
BLOCK = 4096
#: What the source writes before the hand-over, the target at the window and after the
#: old QEMU quit: (offset, byte).
SRC_BLOCK, DST_BLOCK, LATE_BLOCK = (0, 0xa5), (BLOCK, 0x5a), (2 * BLOCK, 0x3c)

WINDOW, AFTER_QUIT = "at the window's end", "after the old QEMU quit"
BEFORE = "before the target started"


@dataclass(frozen=True)
class Probe:
    """One parsed probe: its kind and argument, as the scenario spells it."""
    kind: str
    arg: str
    spec: str

    @property
    def path(self) -> str:
        return self.arg.split(":", 1)[1] if self.kind == "image" else self.arg


@dataclass(frozen=True)
class Seen:
    """What one probe saw at one stage."""
    spec: str
    kind: str
    stage: str
    ok: bool
    expected: str
    observed: str


@dataclass(frozen=True)
class ArgsRecord:
    """One window's probes: each at the window's end, then after the old QEMU quit."""
    seen: Tuple[Seen, ...]
    quit_ok: bool
    quit_text: str


@dataclass(frozen=True)
class Snapshot:
    """A file as the source left it before the target started."""
    path: str
    size: int
    sha256: str
    head: str


@dataclass
class Prepared:
    """What :meth:`Args.prepare` took before the target started."""
    probes: Tuple[Probe, ...]
    snapshots: Dict[str, Snapshot]
    source_writes: Dict[str, str]
    #: The management layer's steps on the source (``src-hmp``), as they went.
    steps: Tuple[Seen, ...] = ()


# --------------------------------------------------------------------------- parsing

KINDS = ("pidfile", "kept", "socket", "qmp", "vnc", "tcp", "image", "name", "user",
         "src-hmp")
#: Kinds whose resource lives on the host: looked at again after the old QEMU quit.
HOST_KINDS = ("pidfile", "kept", "socket", "qmp", "vnc", "tcp", "image")
_CHECK_KIND = {"qmp": "socket", "vnc": "socket"}


def parse(spec: str) -> Probe:
    """``KIND:ARG`` -> a :class:`Probe`. :raise UsageError: an unknown kind or no ARG."""
    kind, sep, arg = spec.partition(":")
    if not sep or not arg or kind not in KINDS:
        raise UsageError(f"arg check {spec!r}: expected KIND:ARG with KIND one of "
                         f"{', '.join(KINDS)}")
    if kind == "image" and ":" not in arg:
        raise UsageError(f"arg check {spec!r}: expected image:NODE:PATH")
    if kind == "tcp" and not arg.strip("{}").replace("port", "").isdigit():
        raise UsageError(f"arg check {spec!r}: expected tcp:PORT")
    return Probe(kind, arg, spec)


def resolve(spec: str, shared: str, name: str, ports: Sequence[int], base: str) -> Probe:
    """The probe templated like the options; a relative path lies in ``base``."""
    p = parse(template(spec, shared, name, ports))
    if p.kind in ("name", "user", "tcp", "src-hmp"):
        return p
    path = p.path if os.path.isabs(p.path) else os.path.join(base, p.path)
    arg = f"{p.arg.split(':', 1)[0]}:{path}" if p.kind == "image" else path
    return Probe(p.kind, arg, spec)


# --------------------------------------------------------------------------- pure parts

def snapshot(path: str, data: Optional[bytes]) -> Snapshot:
    """A file's size, hash and first line as the source left it (``data`` None: absent)."""
    data = data or b""
    return Snapshot(path, len(data), hashlib.sha256(data).hexdigest(),
                    printable(data.split(b"\n", 1)[0]))


def judge_kept(snap: Snapshot, data: Optional[bytes]) -> Tuple[bool, str]:
    """Does ``data`` (the file now; None: gone) still begin with ``snap``?"""
    name = os.path.basename(snap.path)
    if snap.size == 0:
        return False, (f"the source had written nothing to {name} before the target "
                       f"started: nothing to keep, so nothing to judge")
    if data is None:
        return False, f"{name} is gone: the {snap.size} byte(s) the source wrote with it"
    if len(data) >= snap.size and \
            hashlib.sha256(data[:snap.size]).hexdigest() == snap.sha256:
        return True, (f"{name} begins with the {snap.size} byte(s) the source wrote "
                      f"before the target started ({len(data)} byte(s) now)")
    return False, (f"the {snap.size} byte(s) the source wrote to {name} are gone: it "
                   f"holds {len(data)} byte(s) now, beginning "
                   f"'{printable(data.split(chr(10).encode(), 1)[0])}' (it began "
                   f"'{snap.head}')")


def judge_pidfile(text: Optional[str], dst_pid: int, src_pid: int) -> Tuple[bool, str]:
    """Does the pid file (its text; None: absent) hold the target's pid?"""
    if text is None:
        return False, "no such file"
    value = text.strip()
    if value == str(dst_pid):
        return True, f"holds {value}, the target's pid"
    if value == str(src_pid):
        return False, f"holds {value}, the old QEMU's pid"
    return False, f"holds '{printable(value.encode())}', neither QEMU's pid " \
                  f"(target {dst_pid}, source {src_pid})"


def whose(pid: Optional[int], dst_pid: int, src_pid: int) -> str:
    if pid is None:
        return "nobody"
    if pid == dst_pid:
        return f"the target (pid {pid})"
    if pid == src_pid:
        return f"the old QEMU (pid {pid})"
    return f"another process (pid {pid})"


_TCP_LINE = re.compile(r"^\s*\d+:\s+([0-9A-F]{8}):([0-9A-F]{4})\s+[0-9A-F]{8}:[0-9A-F]{4}"
                       r"\s+([0-9A-F]{2})\s+\S+\s+\S+\s+\S+\s+\d+\s+\d+\s+(\d+)")
_LISTEN = "0A"
_LOOPBACK_HEX = "0100007F"


def listening_inode(proc_net_tcp: str, port: int) -> Optional[int]:
    """The inode of the socket listening on 127.0.0.1:``port`` (or any address) in the
    text of /proc/net/tcp; None: nobody listens."""
    for line in proc_net_tcp.splitlines():
        m = _TCP_LINE.match(line)
        if m and int(m.group(2), 16) == port and m.group(3) == _LISTEN \
                and m.group(1) in (_LOOPBACK_HEX, "00000000"):
            return int(m.group(4))
    return None


def describe_quit(code: Optional[int], forced: str) -> Tuple[bool, str]:
    if forced:
        return False, f"the old QEMU ignored quit and was {forced}"
    if code is None:
        return False, "the old QEMU did not exit"
    return code == 0, f"the old QEMU quit (exit status {code})"


# --------------------------------------------------------------------------- looking

def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _fd_owner(inode: int, pids: Iterable[int]) -> Optional[int]:
    link = f"socket:[{inode}]"
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == link:
                    return pid
            except OSError:
                continue
    return None


def _greeting(sock: socket.socket, kind: str) -> Tuple[bool, str]:
    """The protocol's answer on a connected socket: a QMP monitor running the guest, a
    VNC server's RFB version."""
    f = sock.makefile("rwb")
    if kind == "vnc":
        hello = f.read(12)
        return hello.startswith(b"RFB "), f"greets '{printable(hello.strip())}'"
    line = f.readline()
    if b'"QMP"' not in line:
        return False, f"greets '{printable(line.strip()[:40])}', not QMP"
    replies = []
    for cmd in ("qmp_capabilities", "query-status"):
        f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        f.flush()
        for _ in range(MAX_EVENTS):  # events may come first; each line within ANSWER_S
            reply = json.loads(f.readline() or b"{}")
            if "event" not in reply:
                break
        replies.append(reply)
    status = (replies[-1].get("return") or {}).get("status", "no answer")
    return status == "running", f"its QMP monitor says {status}"


def look_socket(path: str, kind: str, dst_pid: int, src_pid: int) -> Tuple[bool, str]:
    if not os.path.exists(path):
        return False, f"{os.path.basename(path)} is gone"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(ANSWER_S)
    try:
        sock.connect(path)
        pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        text = f"answered by {whose(pid, dst_pid, src_pid)}"
        if pid != dst_pid or kind == "socket":
            return pid == dst_pid, text
        ok, said = _greeting(sock, kind)
        return ok, f"{text}; {said}"
    except (OSError, ValueError) as exc:  # refused, timed out, a reply that is no JSON
        return False, f"no answer on {os.path.basename(path)}: " \
                      f"{getattr(exc, 'strerror', None) or exc}"
    finally:
        sock.close()


def look_tcp(port: int, dst_pid: int, src_pid: int) -> Tuple[bool, str]:
    inode = listening_inode((_read("/proc/net/tcp") or b"").decode(), port)
    if inode is None:
        return False, f"nobody listens on 127.0.0.1:{port}"
    owner = _fd_owner(inode, (dst_pid, src_pid))
    return owner == dst_pid, f"127.0.0.1:{port} is listened on by " \
                             f"{whose(owner, dst_pid, src_pid) if owner else 'another process'}"


def qemu_io(qmp: Any, node: str, command: str) -> str:
    """HMP ``qemu-io`` on ``node``; its output, in one line."""
    out = qmp.cmd("human-monitor-command",
                  {"command-line": f'qemu-io {node} "{command}"'})
    return " ".join(str(out).split())


def _image_block(path: str, block: Tuple[int, int]) -> bool:
    data = _read(path) or b""
    off, byte = block
    return data[off:off + BLOCK] == bytes([byte]) * BLOCK


def look_image(qmp: Any, probe: Probe, stage: str) -> Tuple[bool, str]:
    """The block the source wrote before the hand-over is still in the file, and a block
    the target writes (another one after the old QEMU quit) reaches it: read on the
    host (qemu-io prints its own report on QEMU's stdout, not to the monitor, which
    answers only an error)."""
    node, path = probe.arg.split(":", 1)
    off, byte = DST_BLOCK if stage == WINDOW else LATE_BLOCK
    answer = qemu_io(qmp, node, f"write -P {byte:#x} {off} {BLOCK}")
    said = [f"the target's write at offset {off}: " + (f"refused: {answer}" if answer
                                                       else "done")]
    missing = [b for b in (SRC_BLOCK, DST_BLOCK, LATE_BLOCK)[:2 if stage == WINDOW else 3]
               if not _image_block(path, b)]
    said.append("the file holds every block written (source's, target's)" if not missing
                else "the file lacks the block(s) at offset " +
                ", ".join(str(b[0]) for b in missing))
    return not missing and not answer, "; ".join(said)


def look_user(pid: int, user: str) -> Tuple[bool, str]:
    try:
        want = pwd.getpwnam(user).pw_uid
    except KeyError:
        return False, f"no user {user} on this host"
    status = (_read(f"/proc/{pid}/status") or b"").decode()
    m = re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M)
    if not m:
        return False, "its /proc status is unreadable"
    uid = int(m.group(2))
    return uid == want, f"runs as uid {uid}" + (f" ({user})" if uid == want else
                                                 f", not {user}'s {want}")


def look(p: Probe, stage: str, ctx: WatchContext, prep: Prepared) -> Seen:
    """One probe at one stage."""
    dst, src = ctx.target.pid, ctx.source.pid
    name = os.path.basename(p.path)
    try:
        ok, seen, want = _look(p, stage, ctx, prep, dst, src, name)
    except HarnessError as exc:  # the target's monitor failed us: that is the answer
        ok, seen, want = False, f"no answer from the target: {exc}", EXPECTED[p.kind](p, name)
    return Seen(p.spec, _CHECK_KIND.get(p.kind, p.kind), stage, ok, want, seen)


EXPECTED: Dict[str, Callable[[Probe, str], str]] = {
    "pidfile": lambda p, n: f"{n} holds the target's pid",
    "kept": lambda p, n: f"{n} begins with what the source wrote before the target started",
    "socket": lambda p, n: f"{n} answered by the target",
    "qmp": lambda p, n: f"{n} answered by the target's QMP monitor, running",
    "vnc": lambda p, n: f"{n} answered by the target's VNC server",
    "tcp": lambda p, n: f"127.0.0.1:{p.arg} listened on by the target",
    "image": lambda p, n: f"{n} keeps the source's block and takes the target's writes",
    "name": lambda p, n: f"query-name says {p.arg}",
    "user": lambda p, n: f"runs as {p.arg}",
}


def _look(p: Probe, stage: str, ctx: WatchContext, prep: Prepared, dst: int, src: int,
          name: str) -> Tuple[bool, str, str]:
    want = EXPECTED[p.kind](p, name)
    if p.kind == "pidfile":
        data = _read(p.path)
        ok, seen = judge_pidfile(data.decode(errors="replace") if data is not None else None,
                                 dst, src)
    elif p.kind == "kept":
        ok, seen = judge_kept(prep.snapshots[p.spec], _read(p.path))
    elif p.kind in ("socket", "qmp", "vnc"):
        ok, seen = look_socket(p.path, p.kind, dst, src)
    elif p.kind == "tcp":
        ok, seen = look_tcp(int(p.arg), dst, src)
    elif p.kind == "image":
        ok, seen = look_image(ctx.target.qmp, p, stage)
        seen = f"{prep.source_writes.get(p.spec, '')}; {seen}"
    elif p.kind == "name":
        got = (ctx.target.qmp.cmd("query-name") or {}).get("name")  # type: ignore[union-attr]
        ok, seen = got == p.arg, f"query-name says {got}" if got else "query-name has no name"
    else:
        ok, seen = look_user(dst, p.arg)
    return ok, seen, want


# --------------------------------------------------------------------------- the family

def _define(kind: str, title: str) -> Dict[str, Any]:
    return {WINDOW: define(f"args.{kind}", title, "arguments"),
            AFTER_QUIT: define(f"args.{kind}.after-quit", f"{title}, after the old QEMU quit",
                               "arguments")}


CHECKS = {
    "pidfile": _define("pidfile", "the pid file names the new QEMU"),
    "kept": _define("kept", "the file keeps what the old QEMU wrote"),
    "socket": _define("socket", "the socket path reaches the new QEMU"),
    "tcp": _define("tcp", "the forwarded host port is the new QEMU's"),
    "image": _define("image", "the new QEMU reads and writes the image"),
    "name": {WINDOW: define("args.name", "the new QEMU has the name", "arguments")},
    "user": {WINDOW: define("args.user", "the new QEMU runs as the user", "arguments")},
    "src-hmp": {BEFORE: define("args.src-hmp", "the management layer's step on the old "
                               "QEMU before the new one starts", "arguments")},
}
QUIT = define("args.quit", "the old QEMU quits when asked after the update", "arguments")


class ArgsWatch:
    """One window's probes: at its end, then once more after the old QEMU quit."""

    def __init__(self, ctx: WatchContext, prep: Prepared):
        self.ctx, self.prep = ctx, prep

    def poll(self) -> None:
        pass

    def finish(self) -> ArgsRecord:
        seen = list(self.prep.steps)
        seen += [look(p, WINDOW, self.ctx, self.prep) for p in self.prep.probes
                 if p.kind != "src-hmp"]
        code, forced = None, ""
        try:
            code = self.ctx.source.shutdown(QUIT_S)
        except AbnormalShutdown as exc:
            forced = exc.how
        except HarnessError as exc:
            forced = f"not stopped: {exc}"
        quit_ok, quit_text = describe_quit(code, forced)
        seen += [look(p, AFTER_QUIT, self.ctx, self.prep) for p in self.prep.probes
                 if p.kind in HOST_KINDS]
        return ArgsRecord(tuple(seen), quit_ok, quit_text)


class Args(Family):
    name = "args"

    def qemu_args(self, ctx: ArgsContext, side: Side) -> List[str]:
        """Nothing on the command line (the scenario's options are there); the images
        the probes name are created, empty, before the source starts."""
        if side is Side.SRC:
            for spec in ctx.scenario.arg_checks:
                p = resolve(spec, ctx.shared, "src", ctx.ports, ctx.artifacts)
                if p.kind == "image" and not os.path.exists(p.path):
                    with open(p.path, "wb") as f:
                        f.truncate(IMAGE_BYTES)
        return []

    def prepare(self, ctx: PrepareContext) -> Optional[Prepared]:
        if not ctx.scenario.arg_checks:
            return None
        probes = tuple(resolve(s, ctx.shared, ctx.target_name, ctx.ports, ctx.artifacts)
                       for s in ctx.scenario.arg_checks)
        snaps = {p.spec: snapshot(p.path, _read(p.path)) for p in probes if p.kind == "kept"}
        writes = {p.spec: self.source_write(ctx, p) for p in probes if p.kind == "image"}
        steps = tuple(self.source_step(ctx, p) for p in probes if p.kind == "src-hmp")
        return Prepared(probes, snaps, writes, steps)

    @staticmethod
    def source_step(ctx: PrepareContext, p: Probe) -> Seen:
        """A management layer's HMP command to the source; HMP answers only errors."""
        command, _, want = (x.strip() for x in p.arg.partition("=>"))
        try:
            answer = " ".join(str(ctx.source.qmp.cmd(  # type: ignore[union-attr]
                "human-monitor-command", {"command-line": command})).split())
            ok = want in answer if want else not answer
        except HarnessError as exc:
            answer, ok = f"failed: {exc}", False
        expected = f"'{command}' answers " + (f"'{want}'" if want else "nothing (done)")
        return Seen(p.spec, p.kind, BEFORE, ok, expected,
                    f"'{command}' answered " + (f"'{answer}'" if answer else "nothing"))

    @staticmethod
    def source_write(ctx: PrepareContext, p: Probe) -> str:
        """The source writes its block before the hand-over; what the file shows then."""
        node, path = p.arg.split(":", 1)
        answer = qemu_io(ctx.source.qmp, node,
                         f"write -P {SRC_BLOCK[1]:#x} {SRC_BLOCK[0]} {BLOCK}")
        if answer:
            return f"the source's write before the hand-over was refused: {answer}"
        return "the source's block " + ("reached the file before the hand-over"
                                        if _image_block(path, SRC_BLOCK)
                                        else "is not in the file before the hand-over")

    def watcher(self, ctx: WatchContext) -> Optional[ArgsWatch]:
        if not isinstance(ctx.prepared, Prepared):
            return None
        return ArgsWatch(ctx, ctx.prepared)

    def judge(self, r: PairResult, a: AttemptRecord) -> Iterable[Check]:
        rec = a.window.devices.get(self.name) if a.window is not None else None
        if not isinstance(rec, ArgsRecord):
            return []
        out = [CHECKS[s.kind][s.stage](s.ok, s.expected, f"{s.observed} ({s.stage})",
                                       _why(s), a.label) for s in rec.seen]
        out.append(QUIT(rec.quit_ok, "exit status 0", rec.quit_text,
                        "the old QEMU must go when the management layer is done with it",
                        a.label))
        return out


def _why(s: Seen) -> str:
    if s.stage == BEFORE:
        return "the old QEMU refused the management layer's step before the hand-over"
    if s.stage == AFTER_QUIT:
        return ("the old QEMU, quitting after the update, took away what the new one "
                "owns now")
    return "the new QEMU, started with the same arguments, did not take over what the " \
           "option provides"
