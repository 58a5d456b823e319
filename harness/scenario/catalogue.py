"""Every scenario the suite knows, by id.

Ids read like a path: the part before the slash is the area a report groups by
(``transfer``, ``channel``, ``memory``, ``capability``), the rest names the case.
The positive matrix is a base case varied along one axis at a time (main channel x
incoming mode x cpr channel are crossed in full, since they interact in the
handshake); the error paths each break one documented rule.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

from harness.core.errors import UsageError
from harness.cpr.faults import FAULTS
from harness.cpr.netdevs import ARRANGEMENTS
from harness.scenario.model import Expect, Outcome, Scenario

SRC_REFUSES, DST_REFUSES = Expect.SRC_REFUSES, Expect.DST_REFUSES

# QEMU 10.0's own words for each rule (migration/cpr-transfer.c, migration.c, cpr.c).
MSG_STREAMABLE = "Migration requires streamable transport"
MSG_MISSING_CPR = "missing 'cpr' migration channel"
MSG_SRC_CPR_UNIX = "bad cpr channel address; must be unix"
MSG_DST_CPR_UNIX = "bad cpr channel socket type; must be unix"
MSG_NOT_CPR_COMPATIBLE = "is not compatible with CPR"
MSG_SHARE_REQUIRED = "share=on is required for memory-backend objects"
MSG_MACHINE_TYPE = "Machine type received is"

def _transfer(main: str = "unix", cpr: str = "unix", backend: str = "memfd",
              incoming: str = "immediate", machine: str = "q35", tag: str = "",
              **kw: object) -> Scenario:
    sid = f"transfer/{main}-{cpr}-{backend}-{incoming}-{machine}" + (f"-{tag}" if tag else "")
    title = (f"main {main}, cpr {cpr}, {backend}, incoming {incoming}, {machine}"
             + (f", {tag}" if tag else ""))
    return Scenario(id=sid, title=title, main=main, cpr=cpr, backend=backend,
                    incoming=incoming, machine=machine, area="transfer",
                    requires=("cpr-incoming-fd",) if cpr == "fd" else (),
                    **kw)  # type: ignore[arg-type]


def _refusal(area: str, name: str, title: str, kind: Expect, message: str,
             retry: bool = True, **kw: object) -> Scenario:
    return Scenario(id=f"{area}/{name}", title=title, area=area,
                    expect=Outcome(kind, message), retry=retry, **kw)  # type: ignore[arg-type]


def _positive() -> List[Scenario]:
    out: List[Scenario] = []
    # Channels and incoming modes, crossed.
    for main in ("unix", "tcp", "fd", "exec"):
        for incoming in ("immediate", "defer"):
            for cpr in ("unix", "fd"):
                out.append(_transfer(main, cpr, incoming=incoming))
    # Memory back-ends, with and without prealloc.
    for backend in ("file-shm", "ram-share", "shm", "memfd-hugetlb"):
        out.append(_transfer(backend=backend))
    for backend in ("memfd", "file-shm", "ram-share"):
        out.append(_transfer(backend=backend, tag="prealloc", prealloc=True))
    # cpr-exec (QEMU >= 10.2): the source exec's the new QEMU in place, state via a file.
    for backend, incoming in (("memfd", "immediate"), ("memfd", "defer"),
                              ("file-shm", "immediate")):
        out.append(Scenario(
            id=f"transfer/cpr-exec-file-{backend}-{incoming}-q35",
            title=f"cpr-exec: the source exec's the new QEMU, state file, {backend}, "
                  f"incoming {incoming}", mode="cpr-exec", main="file", cpr="none",
            backend=backend, incoming=incoming, area="transfer"))
    # Machines, accelerators, vCPUs, run state.
    out += [
        _transfer(machine="pc"),
        _transfer(incoming="defer", machine="pc"),
        _transfer(tag="tcg", accel="tcg"),
        _transfer(machine="pc", tag="tcg", accel="tcg"),
        _transfer(tag="smp4", smp=4),
        _transfer(tag="tcg-smp4", accel="tcg", smp=4),
        _transfer(tag="paused", paused=True),
        _transfer(incoming="defer", tag="paused", paused=True),
    ]

    return out


def _refusals() -> List[Scenario]:
    # Error paths: the documented refusal, at the right side, with QEMU's message.
    return [
        _refusal("channel", "main-file-src",
                 "main channel 'file' on the source: migrate is refused",
                 SRC_REFUSES, MSG_STREAMABLE, src_main="file"),
        _refusal("channel", "main-file-dst",
                 "-incoming file: on the target: it exits after reading CPR state",
                 DST_REFUSES, MSG_STREAMABLE, dst_main="file"),
        _refusal("channel", "cpr-missing",
                 "no cpr channel in migrate (the released form of a missing cpr-uri)",
                 SRC_REFUSES, MSG_MISSING_CPR, src_cpr="none"),
        _refusal("channel", "cpr-inet-src", "cpr channel inet on the source",
                 SRC_REFUSES, MSG_SRC_CPR_UNIX, src_cpr="tcp"),
        _refusal("channel", "cpr-file-src", "cpr channel file on the source",
                 SRC_REFUSES, MSG_SRC_CPR_UNIX, src_cpr="file"),
        _refusal("channel", "cpr-inet-dst", "cpr channel inet on the target",
                 DST_REFUSES, MSG_DST_CPR_UNIX, dst_cpr="tcp"),
        _refusal("channel", "cpr-file-dst", "cpr channel file on the target",
                 DST_REFUSES, MSG_DST_CPR_UNIX, dst_cpr="file"),
        # The CPR doc: "if the port type is tcp, then the port cannot be 0". QEMU has
        # no message for it to check, so only the refusal itself is required.
        _refusal("channel", "main-inet-port0-dst",
                 "target main channel tcp port 0 (documented as not allowed)",
                 DST_REFUSES, "", main="tcp", dst_main="tcp0"),
        _refusal("memory", "ram-noshare", "memory-backend-ram,share=off",
                 SRC_REFUSES, MSG_SHARE_REQUIRED, backend="ram-noshare", retry=False),
        _refusal("memory", "file-noshare", "memory-backend-file,share=off",
                 SRC_REFUSES, MSG_SHARE_REQUIRED, backend="file-noshare", retry=False),
        _refusal("memory", "no-aux-ram-share", "-machine without aux-ram-share=on",
                 SRC_REFUSES, MSG_NOT_CPR_COMPATIBLE, aux_ram_share=False, retry=False),
        _refusal("memory", "no-memory-backend", "-m with no memory backend",
                 SRC_REFUSES, "pc.ram", backend="none", retry=False),
        _refusal("memory", "epc", "memory-backend-epc (SGX enclave memory)",
                 SRC_REFUSES, MSG_NOT_CPR_COMPATIBLE, backend="epc", retry=False),
        _refusal("capability", "postcopy-ram", "cpr-transfer with postcopy-ram",
                 SRC_REFUSES, "", capabilities=("postcopy-ram",)),
        _refusal("capability", "background-snapshot",
                 "cpr-transfer with background-snapshot",
                 SRC_REFUSES, "", capabilities=("background-snapshot",)),
    ]


def _aarch64() -> List[Scenario]:
    # aarch64 (TCG, -machine virt, our own bare-metal guest): the core cases.
    out: List[Scenario] = []
    arm = dict(machine="virt", guest="aarch64-virt", accel="tcg")
    for incoming in ("immediate", "defer"):
        out.append(_transfer(incoming=incoming, tag="aarch64", **arm))
    out.append(_transfer(backend="file-shm", tag="aarch64", **arm))
    out.append(_transfer(backend="ram-share", tag="aarch64", **arm))
    out.append(_transfer(tag="aarch64-smp2", smp=2, **arm))
    out += [
        _refusal("channel", "cpr-missing-aarch64", "no cpr channel in migrate (aarch64)",
                 SRC_REFUSES, MSG_MISSING_CPR, src_cpr="none", **arm),
        _refusal("channel", "main-file-dst-aarch64", "-incoming file: on the target (aarch64)",
                 DST_REFUSES, MSG_STREAMABLE, dst_main="file", **arm),
        _refusal("memory", "ram-noshare-aarch64", "memory-backend-ram,share=off (aarch64)",
                 SRC_REFUSES, MSG_SHARE_REQUIRED, backend="ram-noshare", retry=False, **arm),
        _refusal("memory", "no-aux-ram-share-aarch64", "no aux-ram-share=on (aarch64)",
                 SRC_REFUSES, MSG_NOT_CPR_COMPATIBLE, aux_ram_share=False, retry=False, **arm),
    ]
    return out


def _linux() -> List[Scenario]:
    # A real Linux guest (Debian kernel, busybox workload, virtio-net and virtio-blk),
    # under TCG: this host's KVM (kvm-pvm) emulates every instruction and cannot boot
    # it in reasonable time (docs/guest.md).
    lnx = dict(guest="linux-x86", accel="tcg", ram_mb=512)
    return [
        _transfer(tag="linux", **lnx),
        _transfer(incoming="defer", tag="linux", slow=True, **lnx),
        _transfer(tag="linux-smp2", smp=2, slow=True, **lnx),
        _transfer(backend="file-shm", tag="linux", slow=True, **lnx),
    ]



def _faults() -> List[Scenario]:
    # Faults at each stage of the handshake: no hang, the source (where it lives) carries
    # on with its RAM intact, and a fresh target then completes the transfer.
    out: List[Scenario] = []
    for name, fault in FAULTS.items():
        out.append(Scenario(
            id=f"fault/{name}", title=fault.title, area="fault", fault=fault,
            incoming="defer" if name == "dst-killed-after-cpr" else "immediate",
            expect=Outcome(Expect.SRC_LOST if fault.src_dies else Expect.FAILS),
            retry=not fault.src_dies))
    # With the return-path capability the target acknowledges the end of the stream, so
    # the source can tell that a target died after the last byte was written.
    out.append(Scenario(
        id="fault/dst-killed-during-main-return-path",
        title=FAULTS["dst-killed-during-main"].title + ", with the return-path capability",
        area="fault", fault=FAULTS["dst-killed-during-main"], capabilities=("return-path",),
        expect=Outcome(Expect.FAILS)))
    return out


def _versions() -> List[Scenario]:
    # Across QEMU versions. Both sides normally run the older side's versioned machine
    # type (pc-q35-10.0), as libvirt pins it; run plainly as "q35" the target refuses
    # the machine it receives (a documented migration rule: the machine type must match)
    # and the source must carry on. return-path makes the refusal reach the source:
    # without it the source may call the migration completed before the target refuses.
    return [_refusal("version", "unpinned-machine-q35",
                     "across versions, both sides run plain q35 (no pinned machine type)",
                     DST_REFUSES, MSG_MACHINE_TYPE, pin_machine=False, cross_version=True,
                     capabilities=("return-path",))]


#: What a management layer must do about each option, in words (the report's last column).
ADVICE = {
    "-pidfile": "give the new QEMU a pid file of its own: the old QEMU holds a lock on its "
                "file until it exits (and removes the file then); rename the new one into "
                "place after the old QEMU quit if tools look there",
    "-serial file:": "open the console file with append=on (-chardev file,path=P,append=on; "
                     "-serial file:P has no such option) or give the new QEMU a file of its "
                     "own: without append=on the new QEMU truncates it",
    "-chardev socket": "give the new QEMU's socket servers paths of their own and move "
                       "clients over: the old QEMU unlinks its paths when it quits, and by "
                       "then they are the new QEMU's",
    "-D": "give the new QEMU a log file of its own: QEMU truncates the log it opens (no "
          "append option)",
    "-trace": "give the new QEMU a trace file of its own: QEMU truncates the log it opens "
              "(no append option)",
    "-vnc": "give the new QEMU a VNC socket path of its own: an 11.1.3 old QEMU unlinks its "
            "path when it quits (10.0.2 leaves it)",
    "-netdev user,hostfwd=": "the old QEMU holds the host port until it quits: give the new "
                             "QEMU another port (clients must follow), or drop the forward "
                             "from the old QEMU first (HMP hostfwd_remove; new connections "
                             "are refused until the new QEMU runs)",
    "-blockdev": "nothing on the command line: the new QEMU opens the image inactive and "
                 "takes it over at the switch-over; nothing else may write it meanwhile "
                 "(CPR.rst)",
    "-name": "nothing",
    "-run-with user=": "the new QEMU binds its migration sockets as root, before it drops to "
                       "the user, with the umask it was started with, and the old QEMU "
                       "runs as that user already: make the sockets' directory searchable "
                       "and the sockets writable for the user (a 0755 directory and umask 0 "
                       "let it complete, by hand), or start QEMU as that user instead",
    "-daemonize": "do not wait for the new QEMU's -daemonize parent to return before the "
                  "migrate: it returns only once the old QEMU's migrate has sent CPR state "
                  "(by hand, 10.0.2 and 11.1.3); find the daemon by its own -pidfile",
}


def _args(name: str, option: str, title: str, extra: tuple = (), dst: object = None,
          checks: tuple = (), kind: Expect = Expect.COMPLETES, message: str = "",
          **kw: object) -> Scenario:
    """One option a user puts on a QEMU command line, the same on both sides unless
    ``dst`` says what a management layer gives the target instead. The default run holds
    the refusals and the two silent breaks the others are fixes or variants of; the rest
    are ``slow`` (nightly): the suite would add about a minute to the default run."""
    # 64 MiB: the options are the subject here, not the RAM (its evidence still runs).
    return Scenario(id=f"args/{name}", title=title, area="args", option=option,
                    extra_args=tuple(extra), dst_extra_args=dst, arg_checks=tuple(checks),
                    advice=ADVICE[option], expect=Outcome(kind, message), ram_mb=64,
                    retry=False, **kw)  # type: ignore[arg-type]


def _per_side(args: tuple, old: str = "{dir}/", new: str = "{dir}/{name}-") -> tuple:
    """The target's own paths: ``{dir}/x`` becomes ``{dir}/dst-x``."""
    return tuple(a.replace(old, new) for a in args)


# The options of the args/ cases ({dir}: the directory both sides share, {name} the
# QEMU's own name, {port0}...: loopback ports the case picks free).
_MON = ("-chardev", "socket,id=mon1,path={dir}/mon.sock,server=on,wait=off",
        "-mon", "chardev=mon1,mode=control")
_CON = ("-chardev", "socket,id=con1,path={dir}/console.sock,server=on,wait=off",
        "-serial", "chardev:con1")
_DISK = ("-blockdev", "driver=file,filename={dir}/disk.img,node-name=file0",
         "-blockdev", "driver=raw,file=file0,node-name=disk0",
         "-device", "virtio-blk-pci,drive=disk0,id=vd0,share-rw=on")
_FWD = ("-netdev", "user,id=n1,hostfwd=tcp:127.0.0.1:{port0}-:22",
        "-device", "virtio-net-pci,netdev=n1,romfile=")
# -msg timestamp=on stamps each trace line with its time: the two QEMUs' lines differ,
# so a rewritten log cannot pass for the source's.
_LOG = ("-D", "{dir}/qemu.log", "-d", "trace:vm_state_notify", "-msg", "timestamp=on")
_VNC = ("-vnc", "unix:{dir}/vnc.sock")


def _same_args_files() -> List[Scenario]:
    # "The same arguments plus -incoming" (docs/same-arguments.md), option by option.
    # Only memory-backend fds travel on the cpr channel: every file, socket and port an
    # option names is opened anew by the target while the old QEMU still holds it.
    return [
        _args("pidfile", "-pidfile", "-pidfile, the same file on both sides",
              ("-pidfile", "{dir}/qemu.pid"), kind=DST_REFUSES,
              message="Cannot lock pid file"),
        _args("pidfile-per-side", "-pidfile", "-pidfile, the target a file of its own",
              ("-pidfile", "{dir}/qemu.pid"), ("-pidfile", "{dir}/qemu.pid.{name}"),
              ("pidfile:{dir}/qemu.pid.{name}",), slow=True),
        # -serial file:P is -chardev file,path=P (chardev/char.c): the same open(2).
        _args("serial-file", "-serial file:", "the guest's console in one file (-chardev "
              "file, which -serial file: makes), the same on both sides",
              checks=("kept:console.log",), console="file"),
        _args("serial-file-append", "-serial file:", "the guest's console in one file with "
              "append=on, the same on both sides", checks=("kept:console.log",),
              console="file-append", slow=True),
        _args("log-file", "-D", "-D log file (-d trace:vm_state_notify), the same file on "
              "both sides", _LOG, checks=("kept:{dir}/qemu.log",), slow=True),
        _args("log-file-per-side", "-D", "-D log file, the target a file of its own", _LOG,
              _per_side(_LOG, "qemu.log", "qemu.log.{name}"), ("kept:{dir}/qemu.log",), slow=True),
        _args("trace-file", "-trace", "-trace enable=vm_state_notify,file=, the same file on "
              "both sides", ("-trace", "enable=vm_state_notify,file={dir}/trace.log",
                             "-msg", "timestamp=on"), checks=("kept:{dir}/trace.log",), slow=True),
        _args("blockdev", "-blockdev", "a raw image through -blockdev on a virtio-blk disk, "
              "the same image on both sides", _DISK, checks=("image:disk0:{dir}/disk.img",), slow=True),
    ]


def _same_args_sockets() -> List[Scenario]:
    return [
        _args("chardev-socket", "-chardev socket", "a QMP monitor and a second console on "
              "unix socket servers, the same paths on both sides", _MON + _CON,
              checks=("qmp:{dir}/mon.sock", "socket:{dir}/console.sock")),
        _args("chardev-socket-per-side", "-chardev socket", "a QMP monitor and a second "
              "console on unix socket servers, the target's at paths of its own",
              _MON + _CON, _per_side(_MON + _CON),
              ("qmp:{dir}/{name}-mon.sock", "socket:{dir}/{name}-console.sock"), slow=True),
        _args("vnc", "-vnc", "-vnc on a unix socket, the same path on both sides", _VNC,
              checks=("vnc:{dir}/vnc.sock",), slow=True),
        _args("vnc-per-side", "-vnc", "-vnc on a unix socket, the target's at a path of its "
              "own", _VNC, _per_side(_VNC), ("vnc:{dir}/{name}-vnc.sock",), slow=True),
        _args("hostfwd", "-netdev user,hostfwd=", "user networking forwarding a loopback "
              "host port, the same port on both sides", _FWD, kind=DST_REFUSES,
              message="Could not set up host forwarding rule"),
        _args("hostfwd-per-side", "-netdev user,hostfwd=", "user networking forwarding a "
              "loopback host port, the target another port", _FWD,
              _per_side(_FWD, "{port0}", "{port1}"), ("tcp:{port1}",), slow=True),
        _args("hostfwd-handover", "-netdev user,hostfwd=", "user networking forwarding a "
              "loopback host port, the same on both sides; the old QEMU drops its forward "
              "(HMP hostfwd_remove) before the new one starts", _FWD,
              checks=("src-hmp:hostfwd_remove n1 tcp:127.0.0.1:{port0} => removed",
                      "tcp:{port0}"), slow=True),
        _args("name", "-name", "-name, the same on both sides", ("-name", "guest-under-test"),
              checks=("name:guest-under-test",), slow=True),
        # The target binds its cpr socket as root, before it drops to the user; the
        # source, running as the user already, may not connect to it.
        _args("run-with-user", "-run-with user=", "-run-with user=nobody, the same on both "
              "sides", ("-run-with", "user=nobody"), kind=SRC_REFUSES,
              message="Permission denied", requires=("run-with-user",)),
        _args("daemonize", "-daemonize", "-daemonize, the same on both sides",
              ("-daemonize",), requires=("harness-daemonize",)),
    ]


#: QEMU's words when the target cannot open a back-end the source still holds.
MSG_HOSTFWD = "Could not set up host forwarding rule"
MSG_TAP_BUSY = "could not configure /dev/net/tun (tap0): Device or resource busy"


def _device(area: str, name: str, title: str, kind: Expect = Expect.COMPLETES,
            message: str = "", **kw: object) -> Scenario:
    # The Linux guest (TCG: docs/guest.md) drives the NIC and the disk; a minute a case
    # or more on two loaded cores, so these are slow cases (tox -e nightly, --slow).
    return Scenario(id=f"{area}/{name}", title=title, area=area, guest="linux-x86",
                    accel="tcg", ram_mb=512, slow=True, expect=Outcome(kind, message),
                    **kw)  # type: ignore[arg-type]


def _devices() -> List[Scenario]:
    # The guest's network and disk across cpr-transfer, measured from the host
    # (docs/same-arguments.md): one network arrangement each, as a management layer
    # makes it (harness.cpr.netdevs), and a disk written through the transfer. A target
    # that cannot open a back-end the source holds must refuse it clearly, and the
    # source carry on with its network; the same arguments would be refused again, so
    # these refusals have no retry: the passing way is a scenario of its own.
    out = [_device("net", "user", "-netdev user on both sides, no forwarded port",
                   net="user"),
           _device("net", "hostfwd", "-netdev user with the same hostfwd host port on "
                   "both sides: the target cannot bind it while the source holds it",
                   DST_REFUSES, MSG_HOSTFWD, net="user-hostfwd", retry=False),
           _device("net", "hostfwd-per-side", "-netdev user forwarding a host port, the "
                   "target another port than the source (clients reconnect there)",
                   net="user-hostfwd-dst-port"),
           _device("net", "tap-ifname", "the same tap by name (ifname=tap0) on both sides",
                   DST_REFUSES, MSG_TAP_BUSY, net="tap-ifname", retry=False)]
    for arr in ("tap-mq", "tap-fd", "tap-bridge", "vhost-net"):
        out.append(_device("net", arr, ARRANGEMENTS[arr].title, net=arr))
    out.append(_device("disk", "io-in-flight", "the guest writes its virtio-blk disk "
                       "through the transfer (O_DIRECT, a block every 100 ms)", disk=True))
    return out


def _build() -> List[Scenario]:
    return (_positive() + _refusals() + _aarch64() + _linux() + _faults() + _versions()
            + _same_args_files() + _same_args_sockets() + _devices())


SCENARIOS: Dict[str, Scenario] = {}
for _sc in _build():
    if _sc.id in SCENARIOS:
        raise RuntimeError(f"duplicate scenario id {_sc.id}")
    SCENARIOS[_sc.id] = _sc


#: The scenario sets the adapters run: pytest's suites/conformance/test_*.py and the
#: avocado recipe select from these, so the two never disagree on what a suite is.
#: Areas with a suite of their own, kept out of "transfer" and "refusals".
OWN_SUITE_AREAS = ("fault", "args", "net", "disk")

SUITES = {
    "transfer": lambda: [s for s in select(positive=True) if s.area not in OWN_SUITE_AREAS],
    "refusals": lambda: [s for s in select(positive=False)
                         if s.area not in OWN_SUITE_AREAS],
    # The same arguments plus -incoming, option by option (docs/same-arguments.md).
    "args": lambda: select(area="args"),
    "faults": lambda: select(area="fault"),
    # The guest's network and disk across the live update (docs/same-arguments.md).
    "devices": lambda: [s for s in SCENARIOS.values() if s.area in ("net", "disk")],
    # What every QEMU build and pair is judged on: the x86 bare-metal guest's cases (the
    # other guests need their own binaries or minutes of TCG boot).
    "core": lambda: [s for s in SCENARIOS.values() if s.guest == "x86-bios" and not s.slow],
}

SLOW_REASON = "a slow case: set CPRH_SLOW=1 or pass --slow (tox -e nightly) to run it"


def suite(name: str) -> List[Scenario]:
    try:
        return SUITES[name]()
    except KeyError:
        raise UsageError(f"unknown suite {name!r}; use one of: {', '.join(SUITES)}") from None


def get(sid: str) -> Scenario:
    try:
        return SCENARIOS[sid]
    except KeyError:
        close = [k for k in SCENARIOS if sid in k][:5]
        hint = f"; did you mean: {', '.join(close)}" if close else \
            "; list them with: python -m harness list"
        raise UsageError(f"unknown scenario id {sid!r}{hint}") from None


def select(area: str = "", positive: object = None) -> List[Scenario]:
    out: Iterable[Scenario] = SCENARIOS.values()
    if area:
        out = (s for s in out if s.area == area)
    if positive is not None:
        out = (s for s in out if s.positive == positive)
    return list(out)
