"""``python -m harness repro ID -o FILE``: a standalone reproducer of one scenario for a QEMU
bug report (docs/repro.md), needing only bash/python3 and its standard library: the QEMUs,
arguments and QMP commands of :func:`harness.run.plan.render_plan`, in the pair driver's
order, with placeholders ({MAIN_FD}, {WD}, {SHM}...) for what it makes at run time."""
from __future__ import annotations

import argparse
import base64
import dataclasses
import fnmatch
import hashlib
import inspect
import json
import os
import pprint
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from harness.core import logs
from harness.core.errors import HarnessError, Unsupported, UsageError
from harness.cpr import channels, dialect
from harness.guest.images import GuestImage, image
from harness.qemu import process
from harness.qemu.probe import probe
from harness.run.config import Timeouts
from harness.run.handover import REFUSE_GRACE_S
from harness.run.plan import render_plan, source_setup_commands
from harness.run.setup import check_supported, resolve_machine
from harness.scenario import catalogue, expectations
from harness.scenario.model import Scenario

PROG = "python -m harness repro"
GUESTS = ("x86-bios", "aarch64-virt")   # the bare-metal guests: small firmware, embedded
TIME_LIMIT_S = 100.0                    # the script's own limit (REPRO_TIMEOUT overrides)
HELPERS = (channels.host_proc_net, channels.unix_listening, channels.free_tcp_port,
           process.describe_exit, logs.tail)  # the harness's own, verbatim (stdlib only)


def _channels(cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every MigrationChannel in the rendered commands and the target's -incoming."""
    return [ch for c in cfg["src_handover"] + cfg["dst_commands"]
            for ch in c.get("arguments", {}).get("channels", [])] + \
        [a for a in cfg["incoming"] if isinstance(a, dict)]


def _placeholders(cfg: Dict[str, Any], wd: str) -> List[Dict[str, Any]]:
    """Placeholders where run-time values go (fd numbers, ports); the resources to make."""
    res: List[Dict[str, Any]] = []
    fds: Dict[str, Optional[str]] = {}
    for ch in _channels(cfg):
        kind, addr = ch["channel-type"].upper(), ch["addr"]
        if addr.get("type") == "fd" and str(addr.get("str")).isdigit():
            addr["str"] = f"{{{kind}_FD}}"             # the target's end, by number
            fds.setdefault(kind, None)
        elif addr.get("type") == "fd":
            fds[kind] = addr["str"]                  # the source's end, by getfd name
        elif addr.get("type") == "inet" and str(addr.get("port")) != "0":
            addr["port"] = f"{{{kind}_PORT}}"
            res.append({"kind": "port", "name": f"{kind}_PORT"})
    for i, a in enumerate(cfg["incoming"]):  # -incoming tcp:HOST:PORT (not port 0)
        if isinstance(a, str) and a.startswith("tcp:") and not a.endswith(":0"):
            cfg["incoming"][i] = a.rsplit(":", 1)[0] + ":{MAIN_PORT}"
            res.append({"kind": "port", "name": "MAIN_PORT"})
    cpr = next((c["addr"]["path"] for c in _channels(cfg) if c["channel-type"] == "cpr"
                and c["addr"].get("type") == "unix"), os.path.join(wd, "cpr.sock"))
    res += [{"kind": "socketpair", "name": k, "fdname": n} if k == "MAIN" else
            {"kind": "listener", "name": k, "path": cpr} for k, n in fds.items()]
    res += [{"kind": "fifo", "path": str(p)} for p in sorted(Path(wd).rglob("*")) if p.is_fifo()]
    return list({json.dumps(r, sort_keys=True): r for r in res}.values())


def _dst_ready(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """As the hand-over: the target listens on its unix cpr socket, or gets a grace to refuse."""
    return next(({"unix": ch["addr"]["path"]} for ch in cfg["incoming"] if isinstance(ch, dict)
                 and ch["channel-type"] == "cpr" and ch["addr"].get("type") == "unix"),
                {"grace": REFUSE_GRACE_S})


def _monitor(side: str, args: List[str]) -> tuple:
    """(args plus the monitor QemuProcess adds, its exit-with-parent args, the QMP path)."""
    plain = process.QemuProcess(side, "QEMU", args, "{WD}", "/nonexistent")
    ewp = process.QemuProcess(side, "QEMU", args, "{WD}", "/nonexistent", exit_with_parent=True)
    return plain.cmdline[1:], ewp.cmdline[len(plain.cmdline) - 2:-2], plain.qmp_path


def render_config(sc: Scenario, guest: GuestImage, accel: str, machine: str) -> Dict[str, Any]:
    """What the script runs, as plain data with placeholders."""
    with tempfile.TemporaryDirectory(prefix="cprh-repro-", dir="/tmp") as wd:
        plan = render_plan(sc.with_(machine=machine), dialect.get(dialect.RELEASED), wd,
                           accel=accel, guest_args=dataclasses.replace(
                               guest, path="{BIOS}").qemu_args("{SERIAL}"))
        cmds, n = json.loads(json.dumps(plan.src_commands)), len(source_setup_commands(sc))
        if sc.parameters:  # the scenario's parameters follow the mode (prepare_source)
            cmds.insert(1, {"execute": "migrate-set-parameters", "arguments": dict(sc.parameters)})
            n += 1
        shared = len(plan.src_args)
        cfg: Dict[str, Any] = {"src_setup": cmds[:n], "src_handover": cmds[n:],
                               "dst_commands": json.loads(json.dumps(plan.dst_commands)),
                               "incoming": [json.loads(a) if a.startswith("{") else a
                                            for a in plan.dst_args[shared:]]}
        cfg["resources"], cfg["dst_ready"] = _placeholders(cfg, wd), _dst_ready(cfg)
        incoming = [json.dumps(a) if isinstance(a, dict) else a for a in cfg.pop("incoming")]
        args = {s: [("{ACCEL}" if i and a[i - 1] == "-accel" else x) for i, x in enumerate(a)]
                for s, a in (("src", plan.src_args), ("dst", plan.dst_args[:shared] + incoming))}
        cfg["src_args"], cfg["ewp_args"], cfg["src_qmp"] = _monitor("src", args["src"])
        cfg["dst_args"], _, cfg["dst_qmp"] = _monitor("dst", args["dst"])
        text = json.dumps(cfg).replace(wd, "{WD}")  # a plain /tmp path: nothing to escape
    mem = next((p[9:] for a in plan.src_args for p in a.split(",") if p.startswith("mem-path=")),
               None)  # a file backend's file: its dir becomes the script's own on /dev/shm
    return json.loads(text.replace(os.path.dirname(mem), "{SHM}") if mem else text)


def _notes(sc: Scenario, bins: tuple, accel: str, arch: str) -> List[str]:
    """Its known deviations (the versions they were seen on); whether the harness skips it."""
    info = expectations.RunInfo(*(".".join(map(str, b.version)) for b in bins), accel,
                                sc.machine, arch)
    out = []
    for d in expectations.load():
        hits = [p for p in d.case if fnmatch.fnmatchcase(sc.id, p)]
        if hits and (d.matches(sc.id, info) or not all(p.endswith("/*") for p in hits)):
            when = "; ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}"
                             for k, v in d.when.items())
            tag = "" if d.matches(sc.id, info) else " (not of these binaries)"
            out.append(f"known deviation{tag}: {d.reason} [{d.link}]; observed on: {when}")
    for caps, side in zip(bins, ("src", "dst")):
        try:
            check_supported(caps, sc, dialect.get(dialect.RELEASED), side)
        except Unsupported as exc:
            out.append(f"the harness skips this case with these binaries: {exc}")
    return out or ["no known deviation of this case"]


def _header(sc: Scenario, out: str, bins: tuple, names: tuple, notes: List[str],
            cfg: Dict[str, Any], guest: str) -> str:
    lines = [f"Reproducer of QEMU cpr-transfer scenario {sc.id}", f"  {sc.title}",
             f"Expected (what QEMU documents): {sc.expect}", "What the harness saw:"]
    lines += [w for n in notes for w in textwrap.wrap(n, 86, initial_indent="- ",
                                                      subsequent_indent="  ")]
    lines += [f"Generated {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} by "
              f"'{PROG} {sc.id}'", f"  source {names[0]} ({bins[0].version_str})",
              f"  target {names[1]} ({bins[1].version_str})",
              f"  accel {cfg['accel']}, guest {guest} (embedded, sha256 {cfg['guest_sha256']})",
              f"Run: bash {os.path.basename(out)} (or python3 ...). No harness or pip package: "
              "bash and python3 >= 3.9 only.", "  Environment: QEMU_SRC, QEMU_DST (binaries), "
              "ACCEL (kvm|tcg), REPRO_TIMEOUT (seconds).",
              "The target starts first; the source's migrate once it listens on its cpr socket;",
              "then the target's monitor. Prints every QMP command, reply and event, each QEMU's",
              "exit status, its log's and serial console's tails. Exit 0: completed and both",
              "QEMUs behaved; 1: not; 2: cannot run; 3: a wait timed out; 130: Ctrl-C. Both QEMUs",
              "are killed and the temp dir is removed whatever happens."]
    return "\n".join(["#!/usr/bin/env python3"] + [f"# {x}".rstrip() for x in lines]
                     + ['""":"', 'exec python3 "$0" "$@"', '":"""']) + "\n"


def script(sc: Scenario, out: str, qemu_src: Optional[str], qemu_dst: Optional[str],
           accel_opt: Optional[str]) -> str:
    """The script's text. :raise HarnessError: a scenario it cannot reproduce, a probe."""
    if sc.mode != "cpr-transfer" or sc.fault is not None or sc.guest not in GUESTS:
        raise UsageError(f"repro reproduces cpr-transfer scenarios without a fault on the "
                         f"bare-metal guests ({', '.join(GUESTS)}); {sc.id} is {sc.mode}, "
                         f"guest {sc.guest}" + (f", fault {sc.fault.name}" if sc.fault else ""))
    guest = image(sc.guest)
    names = (qemu_src or guest.binary, qemu_dst or guest.binary)
    bins = (probe(names[0]), probe(names[1]))
    if sc.cross_version and bins[0].version == bins[1].version:
        raise UsageError(f"{sc.id} needs two QEMU versions (both are {bins[0].version_str})")
    accel = sc.accel if sc.accel != "auto" else accel_opt or _default_accel()
    blob, lay = Path(guest.path).read_bytes(), guest.layout
    cfg = render_config(sc, guest, accel, resolve_machine(sc, *bins)[0])
    cfg.update(id=sc.id, expect=str(sc.expect), paused=sc.paused, accel=accel,
               qemu_src=names[0], qemu_dst=names[1], time_limit=TIME_LIMIT_S,
               timeouts=dataclasses.asdict(Timeouts()),
               guest_sha256=hashlib.sha256(blob).hexdigest(), guest={
                   "base": lay.base, "words": (max(lay.off_heartbeats, lay.off_counter + 4)
                                               + 4) // 4, "off_magic": lay.off_magic,
                   "off_counter": lay.off_counter, "magic": lay.magic})
    b64 = base64.b64encode(zlib.compress(blob, 9)).decode()
    body = TEMPLATE.replace("@@CONFIG@@", pprint.pformat(cfg, width=96, compact=True,
                                                         sort_dicts=False))
    body = body.replace("@@HARNESS@@", "\n\n".join(inspect.getsource(f).strip()
                                                   for f in HELPERS))
    return _header(sc, out, bins, names, _notes(sc, bins, accel, guest.arch), cfg, guest.name) \
        + body.replace("@@GUEST@@", "\n" + "\n".join(textwrap.wrap(b64, 88)) + "\n")


def _default_accel() -> str:
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
        return "kvm"
    except OSError:
        return "tcg"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="write a standalone script that "
                                "reproduces one scenario, for a QEMU bug report")
    p.add_argument("id", help="scenario id (python -m harness list)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the script to write")
    p.add_argument("--qemu-src", metavar="P", help="source QEMU (QEMU_SRC overrides)")
    p.add_argument("--qemu-dst", metavar="P", help="target QEMU (QEMU_DST overrides)")
    p.add_argument("--accel", choices=("kvm", "tcg"), help="default: kvm if /dev/kvm opens")
    args = p.parse_args(argv)
    try:
        sc = catalogue.get(args.id)
        text = script(sc, args.output, args.qemu_src, args.qemu_dst, args.accel)
        with open(args.output, "w") as f:
            f.write(text)
        os.chmod(args.output, 0o755)
    except (HarnessError, OSError) as exc:
        print(f"cpr-harness repro: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({len(text)} bytes, {text.count(chr(10))} lines): {sc.id}; "
          f"run it: bash {args.output}")
    return 0


#: The script after its header: CONFIG, the harness's helpers and the guest go in.
TEMPLATE = r'''from __future__ import annotations

import atexit, base64, contextlib, hashlib, json, os, shlex, shutil, signal, socket
import subprocess, sys, tempfile, time, zlib

CONFIG = @@CONFIG@@

T0 = time.monotonic()
LIMIT = float(os.environ.get("REPRO_TIMEOUT") or CONFIG["time_limit"])
LIVE = {"vms": [], "socks": [], "dirs": [], "migrated": None}
TO = dict(CONFIG["timeouts"])

class Timeout(Exception):  # a bounded wait ran out
    """Raised by wait_for and QMP reads."""

class Ended(Exception):  # the outcome: observed (completed, src-crashed, ...) and why
    def __init__(self, observed, detail="", ok=False):
        super().__init__(f"{observed}: {detail}" if detail else observed)
        self.observed, self.ok = observed, ok

class Gone(Exception):  # a QEMU exited, or its QMP connection closed, as we waited
    def __init__(self, vm, when):
        super().__init__(when)
        self.vm, self.when = vm, when

def say(msg):
    print(f"[{time.monotonic() - T0:7.3f}] {msg}", flush=True)

def left(seconds):  # what is left of a wait, within the script's time limit
    return max(0.0, min(seconds, T0 + LIMIT - time.monotonic()))

def wait_for(what, probe, seconds, interval=0.01):
    """probe() until it returns a true value; bounded, and by the script's time limit."""
    end = time.monotonic() + left(seconds)
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() >= end:
            raise Timeout(f"{what} (not after {seconds:.0f} s, or the time limit is up)")
        time.sleep(interval)

def fill(obj, subs):
    """The placeholders ({WD}, {MAIN_FD}, ...) replaced by this run's values."""
    text = json.dumps(obj)
    for key, val in subs.items():
        text = text.replace("{" + key + "}", json.dumps(val)[1:-1])
    return json.loads(text)

# The harness's own helpers, verbatim (harness/cpr/channels.py, qemu/process.py, core/logs.py)

@@HARNESS@@
_proc_net = host_proc_net  # the script starts no network namespace: the host's view is all

def _die_with_parent():  # in the child before exec: SIGKILL when this script dies
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG

class VM:
    def __init__(self, side, binary, args, wd, qmp_path, pass_fds=()):
        self.side, self.pass_fds, self.qmp_path, self.wd = side, tuple(pass_fds), qmp_path, wd
        self.name = {"src": "source", "dst": "target"}[side]
        self.cmdline, self.log = [binary, *args], os.path.join(wd, f"{side}.log")
        self.serial, self.proc, self.qmp = os.path.join(wd, f"{side}.serial"), None, None
    def launch(self):
        fds = f" (passing fds {list(self.pass_fds)})" if self.pass_fds else ""
        say(f"{self.side}: launch{fds}: {shlex.join(self.cmdline)}")
        with open(self.log, "ab") as log:  # its own log, its own process group
            self.proc = subprocess.Popen(
                self.cmdline, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                pass_fds=self.pass_fds, start_new_session=True, preexec_fn=_die_with_parent,
                cwd=self.wd)
        LIVE["vms"].append(self)
        say(f"{self.side}: pid {self.proc.pid}, log {self.log}")
        return self
    def code(self):
        return None if self.proc is None else self.proc.poll()
    def alive(self, when):
        if self.code() is not None:
            raise Gone(self, when)
        return True
    def wait_exit(self, seconds):
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=seconds)
        return self.code()
    def kill(self):
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # the group: a wrapper's child too
            self.wait_exit(5)

class QMP:
    def __init__(self, vm):
        self.vm, self.side, self.sock, self.buf = vm, vm.side, None, b""
    def connect(self, seconds, also=None):
        def attempt():
            self.vm.alive("before its QMP monitor came up")
            if also is not None:
                also.alive(f"while the script waited for the {self.vm.name}'s QMP monitor")
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if s.connect_ex(self.vm.qmp_path) == 0:
                return s
            s.close()
        self.sock = wait_for(f"the {self.vm.name}'s QMP monitor", attempt, seconds, 0.02)
        self.vm.qmp = self
        say(f"{self.side} <- {json.dumps(self.read(10))}")
        self.cmd({"execute": "qmp_capabilities"})
    def read(self, seconds):
        while b"\n" not in self.buf:
            self.sock.settimeout(left(seconds) or 0.001)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout(f"a reply from the {self.vm.name}'s QMP monitor") from None
            except OSError as exc:
                raise Gone(self.vm, f"its QMP connection failed: {exc.strerror}") from None
            if not data:
                raise Gone(self.vm, "its QMP connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)
    def cmd(self, msg, fds=(), quiet=False, seconds=10):
        """Send one command (fds attached with SCM_RIGHTS); print it, its reply, events."""
        data = json.dumps(msg).encode() + b"\n"
        if not quiet:
            via = f"   [fd {fds[0]} attached with SCM_RIGHTS]" if fds else ""
            say(f"{self.side} -> {json.dumps(msg)}{via}")
        try:
            socket.send_fds(self.sock, [data], list(fds)) if fds else self.sock.sendall(data)
        except OSError as exc:
            raise Gone(self.vm, f"a QMP send failed: {exc.strerror}") from None
        while True:
            r = self.read(seconds)
            if "event" in r:
                say(f"{self.side} event {r['event']} {json.dumps(r.get('data', {}))}")
            elif "return" in r or "error" in r:
                if not quiet or "error" in r:
                    say(f"{self.side} <- {json.dumps(r)}")
                return r
    def ok(self, msg, fds=(), observed="src-refused"):
        r = self.cmd(msg, fds)
        if "error" in r:
            raise Ended(observed, f"{msg['execute']}: {r['error'].get('desc')}")
        return r["return"]

def counter(q):
    """The guest's progress counter, from its work area in RAM (HMP xp), or None."""
    g = CONFIG["guest"]
    out = q.cmd({"execute": "human-monitor-command", "arguments": {
        "command-line": f"xp /{g['words']}wx {g['base']:#x}"}}, quiet=True).get("return", "")
    vals = [int(v, 16) for line in str(out).splitlines() if ": 0x" in line  # ADDR: 0x.. 0x..
            for v in line.split(":", 1)[1].split()]
    if len(vals) < g["words"] or vals[g["off_magic"] // 4] != g["magic"]:
        return None
    return vals[g["off_counter"] // 4] | vals[g["off_counter"] // 4 + 1] << 32

def wait_moving(q, seconds, above=-1):
    first = wait_for(f"the guest's counter on the {q.vm.name} (HMP xp)",
                     lambda: q.vm.alive("while the guest ran") and counter(q), seconds, 0.02)
    now = wait_for(f"the guest's counter to move on the {q.vm.name}", lambda: (
        lambda c: c if c is not None and c > max(first, above) else None)(counter(q)),
        seconds, 0.02)
    say(f"{q.side}: guest counter {first} -> {now} (read with HMP xp: the guest runs)")
    return now

def make_channels(subs):
    """What the target gets by fd number (dst_fds) and the source by getfd, made now."""
    dst_fds, getfd, close_after_launch = [], {}, []
    for r in CONFIG["resources"]:
        path, kind = fill(r.get("path", ""), subs), r["kind"]
        if kind == "fifo":
            os.mkfifo(path, 0o600)
        elif kind == "port":
            subs[r["name"]] = str(free_tcp_port())
        elif kind == "socketpair":
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            LIVE["socks"] += [a, b]
            subs[r["name"] + "_FD"], getfd[r["fdname"]] = str(b.fileno()), a.fileno()
            dst_fds.append(b.fileno())
            say(f"main channel: a socket pair, fd {a.fileno()} for the source (getfd "
                f"{r['fdname']!r}), fd {b.fileno()} for the target")
        elif kind == "listener":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            LIVE["socks"].append(s)
            s.bind(path)
            s.listen(1)
            subs[r["name"] + "_FD"] = str(s.fileno())
            dst_fds.append(s.fileno())
            close_after_launch.append(s)
            say(f"cpr channel: listening socket {path}, fd {s.fileno()} for the target")
    return dst_fds, getfd, close_after_launch

def wait_ready(dst, subs):
    """As the harness: the target listens on its cpr socket (/proc/net/unix: no connection
    made to find out), or, with nothing to watch, gets a grace to refuse (exit)."""
    ready = fill(CONFIG["dst_ready"], subs)
    alive = lambda: dst.alive("before it was ready for the transfer")  # noqa: E731
    if "unix" in ready:
        wait_for(f"the target to listen on {ready['unix']}",
                 lambda: alive() and unix_listening(ready["unix"]), TO["listen"], 0.005)
    else:
        with contextlib.suppress(Timeout):
            wait_for("a refusing target to exit", lambda: alive() and False, ready["grace"])
    say("dst: ready for the source's migrate")

def launch(side, binary, subs, ewp, fds=()):  # -run-with exit-with-parent=on before -qmp
    args = CONFIG[side + "_args"]
    args = fill(args[:-2] + ewp + args[-2:], {**subs, "SERIAL": f"{subs['WD']}/{side}.serial"})
    return VM(side, binary, args, subs["WD"], fill(CONFIG[side + "_qmp"], subs), fds).launch()

def transfer(subs, qemu_src, qemu_dst, ewp):
    src = launch("src", qemu_src, subs, ewp[0])
    sq = QMP(src)
    sq.connect(TO["start"])
    before = wait_moving(sq, TO["guest"])
    if CONFIG["paused"]:
        sq.ok({"execute": "stop"})
    sq.cmd({"execute": "query-status"})
    for c in CONFIG["src_setup"]:
        sq.ok(fill(c, subs))
    sq.cmd({"execute": "query-migrate-parameters"}, quiet=True)
    dst_fds, getfd, close_after_launch = make_channels(subs)
    dst = launch("dst", qemu_dst, subs, ewp[1], dst_fds)
    for s in close_after_launch:  # the target's own now
        s.close()
    wait_ready(dst, subs)
    for c in CONFIG["src_handover"]:
        fd = getfd.get(c.get("arguments", {}).get("fdname"))
        sq.ok(fill(c, subs), fds=(fd,) if c["execute"] == "getfd" and fd else ())
    LIVE["migrated"] = time.monotonic()
    dq = QMP(dst)
    dq.connect(TO["start"], also=src)
    for c in CONFIG["dst_commands"]:
        dq.ok(fill(c, subs), observed="dst-refused")
    outcome(sq, dq, before)

def outcome(sq, dq, before):
    """The source's migration ends; then both states, and the guest on the target."""
    seen = {}

    def status():
        r = sq.cmd({"execute": "query-migrate"}, quiet=True).get("return", {})
        if r.get("status") != seen.get("status"):
            say(f"src <- query-migrate: {json.dumps(r)}")
        seen.update(r)
        return r.get("status") in ("completed", "failed", "cancelled") and r["status"]
    st = wait_for("the source's migration to end (query-migrate)", status, TO["transfer"])
    dq.vm.alive("after the transfer")
    if st != "completed":
        dq.cmd({"execute": "query-status"})
        raise Ended("failed", seen.get("error-desc", st))
    want, wrong = "paused" if CONFIG["paused"] else "running", []
    s_st = sq.cmd({"execute": "query-status"})["return"]["status"]
    with contextlib.suppress(Timeout):
        wait_for(f"the target to be {want}", lambda: dq.cmd({"execute": "query-status"},
                 quiet=True)["return"]["status"] == want, TO["settle"])
    d_st = dq.cmd({"execute": "query-status"})["return"]["status"]
    if s_st != "postmigrate":
        wrong.append(f"the source is {s_st!r}, not 'postmigrate'")
    if d_st != want:
        wrong.append(f"the target is {d_st!r}, not {want!r}")
    elif not CONFIG["paused"]:
        try:
            wait_moving(dq, TO["settle"], above=before)
        except Timeout:
            wrong.append(f"the guest's counter does not move past {before} on the target")
    if wrong:
        raise Ended("misbehaved", "completed, but " + "; ".join(wrong))
    raise Ended("completed", f"the source is postmigrate, the target {want}", ok=True)

def ended_by_exit(exc):
    vm, code = exc.vm, exc.vm.wait_exit(3)
    after = "" if LIVE["migrated"] is None else \
        f", noticed {(time.monotonic() - LIVE['migrated']) * 1000:.0f} ms after migrate"
    how = f"the {vm.name} QEMU {describe_exit(code)} ({exc.when}{after})"
    if code is not None and code >= 0:
        return Ended("dst-refused" if vm.side == "dst" else "src-exited", how)
    return Ended(f"{vm.side}-crashed" if code is not None else f"{vm.side}-lost", how)

def report(result, rc):
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # the report and the clean-up are bounded
    for vm in LIVE["vms"]:  # the last state, and the events still pending
        if vm.qmp is not None and vm.code() is None:
            with contextlib.suppress(Gone, Timeout, OSError, ValueError):
                vm.qmp.cmd({"execute": "query-status"}, seconds=2)
    print(f"\n== outcome\nscenario:  {CONFIG['id']}\nexpected:  {CONFIG['expect']}\n"
          f"observed:  {result}", flush=True)
    for vm in LIVE["vms"]:
        code = vm.code()
        print(f"{vm.name} QEMU (pid {vm.proc.pid}) " + ("is still running (killed now by "
              "this script)" if code is None else describe_exit(code)), flush=True)
        vm.kill()
    for vm in LIVE["vms"]:
        print(f"\n== {vm.name} log, last lines ({vm.log})\n{tail(vm.log, 15) or '(empty)'}")
        print(f"== {vm.name} serial console, last lines\n{tail(vm.serial, 5) or '(empty)'}")
    print(f"\nexit {rc}", flush=True)

def cleanup():
    for vm in LIVE["vms"]:
        vm.kill()
    for s in LIVE["socks"]:
        s.close()
    for d in LIVE["dirs"]:
        shutil.rmtree(d, ignore_errors=True)

def probe_binary(side, binary):
    """Its path and version, and -run-with exit-with-parent=on if it has that."""
    if (path := shutil.which(binary)) is None:
        raise Ended("cannot-run", f"{side} QEMU {binary!r} not found (set QEMU_{side.upper()})")
    try:
        out = [subprocess.run([path, *a], capture_output=True, text=True, timeout=15,
                              stdin=subprocess.DEVNULL).stdout
               for a in (["--version"], ["-run-with", "help"])]
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Ended("cannot-run", f"{side} QEMU {path}: {exc}") from None
    ewp = CONFIG["ewp_args"] if "exit-with-parent" in out[1] else []
    say(f"{side} QEMU: {path}: {(out[0].splitlines() or ['?'])[0]}"
        + (" (has -run-with exit-with-parent)" if ewp else ""))
    return path, ewp

def prepare():
    """(placeholders, source and target binary, each's exit-with-parent arguments)."""
    qemu_src, ewp_src = probe_binary("src", os.environ.get("QEMU_SRC") or CONFIG["qemu_src"])
    qemu_dst, ewp_dst = probe_binary("dst", os.environ.get("QEMU_DST") or CONFIG["qemu_dst"])
    accel = os.environ.get("ACCEL") or CONFIG["accel"]
    if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        raise Ended("cannot-run", "ACCEL=kvm, but /dev/kvm does not open; try ACCEL=tcg")
    if accel != "kvm":
        TO.update({k: v * 2 for k, v in TO.items()})  # as the harness: TCG gets twice as long
    wd = tempfile.mkdtemp(prefix="cprr-", dir="/tmp")  # short: unix socket paths < 108 bytes
    LIVE["dirs"].append(wd)
    os.makedirs(os.path.join(wd, "s"))
    subs = {"WD": wd, "ACCEL": accel, "BIOS": os.path.join(wd, "guest.bin")}
    say(f"workdir: {wd}, accel {accel}")
    blob = zlib.decompress(base64.b64decode("".join(GUEST.split())))
    if hashlib.sha256(blob).hexdigest() != CONFIG["guest_sha256"]:
        raise Ended("cannot-run", "the embedded guest image is corrupt (sha256 mismatch)")
    with open(subs["BIOS"], "wb") as f:
        f.write(blob)
    if any("{SHM}" in a for a in CONFIG["src_args"]):  # a file backend's private dir
        subs["SHM"] = tempfile.mkdtemp(prefix="cprr-", dir="/dev/shm")
        LIVE["dirs"].append(subs["SHM"])
    return subs, qemu_src, qemu_dst, (ewp_src, ewp_dst)

def main():
    for sig in (signal.SIGTERM, signal.SIGHUP):  # as Ctrl-C: report, then clean up
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    atexit.register(cleanup)
    say(f"reproducing {CONFIG['id']} (expected: {CONFIG['expect']})")
    try:
        try:
            transfer(*prepare())
        except Gone as exc:
            raise ended_by_exit(exc) from None
    except Ended as exc:
        rc, result = (0 if exc.ok else 2 if exc.observed == "cannot-run" else 1), str(exc)
    except Timeout as exc:
        rc, result = 3, f"timeout: the script waited for {exc}"
    except KeyboardInterrupt:
        rc, result = 130, "interrupted (Ctrl-C)"
    except SystemExit as exc:
        rc, result = exc.code, f"terminated by signal {exc.code - 128}"
    try:
        report(result, rc)
    finally:
        cleanup()
    return rc

GUEST = """@@GUEST@@"""

if __name__ == "__main__":
    sys.exit(main())
'''

if __name__ == "__main__":
    sys.exit(main())
