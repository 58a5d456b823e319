"""Run one scenario on a real pair of QEMU processes.

``run_scenario`` starts the source, starts the target, transfers, observes, and
always tears down both sides, whatever happens. It returns a :class:`PairResult`:
what was observed (outcome, states, query-migrate, guest counters, timings, paths of
the logs). Judging the result against the scenario is :mod:`harness.verdict`'s job.
"""
from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager

import psutil
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from harness import backends, channels, features, ram
from harness import dialect as dialects
from harness.dialect import Dialect
from harness.capabilities import Capabilities, probe
from harness.cleanup import check_tmp_base, private_tmpdir, remove_tmpdir
from harness.errors import (HarnessError, QMPCommandFailed, QMPConnectionLost, Unsupported,
                            UsageError, VMLaunchFailure, WaitTimeout)
from harness.observe import NULL_OBSERVER, Observer
from harness.relay import Relay
from harness.evidence import M_RESUMED, M_TRANSFER, RamEvidence
from harness.guest import GuestImage, image
from harness.guest import driver as guest_driver
from harness.scenario import COMPLETES, DST_REFUSES, FAILS, SRC_LOST, SRC_REFUSES, Scenario
from harness.vmm import QemuProcess, tail

ACCELS = ("auto", "kvm", "tcg")
SRC_CRASHED = "src-crashed"
DST_CRASHED = "dst-crashed"


def _rss_anon_kib(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def describe_exit(code: Optional[int]) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class Timeouts:
    """Every harness wait is bounded by one of these (seconds)."""
    start: float = 30.0      # QEMU launched and its QMP monitor up
    guest: float = 30.0      # guest booted, counter moving
    listen: float = 15.0     # target listening on its cpr channel
    transfer: float = 60.0   # migrate issued -> completed/failed
    settle: float = 15.0     # target running / source state after the transfer
    exit: float = 15.0       # a refusing target exits

    def scaled(self, factor: float) -> "Timeouts":
        return Timeouts(**{k: v * factor for k, v in asdict(self).items()})


@dataclass(frozen=True)
class RunConfig:
    qemu_src: str = "qemu-system-x86_64"
    qemu_dst: str = "qemu-system-x86_64"
    #: Binaries for guests of other architectures, by arch (default: qemu-system-ARCH).
    other_arch: Dict[str, Tuple[str, str]] = field(default_factory=dict)
    accel: str = "auto"
    #: "auto" (from the probed QMP schema), or a dialect name to force.
    dialect: str = "auto"
    timeouts: Timeouts = field(default_factory=Timeouts)

    def binaries(self, arch: str) -> Tuple[str, str]:
        """(src, dst) QEMU for a guest of ``arch``."""
        if arch == "x86_64":
            return self.qemu_src, self.qemu_dst
        default = f"qemu-system-{arch}"
        return self.other_arch.get(arch, (default, default))

    def for_arch(self, arch: str) -> "RunConfig":
        """This config with qemu_src/qemu_dst set for a guest of ``arch``."""
        src, dst = self.binaries(arch)
        return RunConfig(qemu_src=src, qemu_dst=dst, accel=self.accel, dialect=self.dialect,
                         other_arch=self.other_arch, timeouts=self.timeouts)

    def __post_init__(self) -> None:
        if self.accel not in ACCELS:
            raise UsageError(f"unknown accel {self.accel!r}; use one of: {', '.join(ACCELS)}")
        if self.dialect != "auto":
            dialects.get(self.dialect)  # UsageError for an unknown name
        check_tmp_base()


@dataclass
class PairResult:
    scenario: Scenario
    accel: str = ""
    dialect: str = ""
    qemu_src_version: str = ""
    qemu_dst_version: str = ""
    observed: str = ""                # COMPLETES / SRC_REFUSES / DST_REFUSES / "failed"
    observed_message: str = ""
    src_status_before: str = ""
    src_status_after: str = ""
    dst_status_after: str = ""
    dst_exitcode: Optional[int] = None
    query_migrate: Dict[str, Any] = field(default_factory=dict)
    counter_before: Optional[int] = None
    counter_after: Optional[int] = None
    boots_before: Optional[int] = None
    boots_after: Optional[int] = None
    #: The guest's counter was seen changing on the target after the transfer.
    counter_moved_on_dst: Optional[bool] = None
    #: After a refused transfer: the source's counter kept moving.
    src_counter_after_refusal: Optional[int] = None
    #: After a refusal: the valid transfer retried from the same source.
    retry: Optional[Dict[str, Any]] = None
    timings: Dict[str, float] = field(default_factory=dict)
    evidence: Dict[str, Any] = field(default_factory=dict)
    artifacts: Dict[str, str] = field(default_factory=dict)
    cmdlines: Dict[str, List[str]] = field(default_factory=dict)
    transcripts: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["scenario"] = self.scenario.params()
        d.pop("transcripts")
        return d


def resolve_accel(run_accel: str, sc: Scenario, src: Capabilities, dst: Capabilities) -> str:
    want = sc.accel if sc.accel != "auto" else run_accel
    if want == "auto":
        return "kvm" if (src.kvm_usable and dst.kvm_usable) else "tcg"
    if want == "kvm":
        for caps in (src, dst):
            if not caps.kvm_usable:
                raise Unsupported(f"KVM not usable with {caps.path}: {caps.kvm_reason}")
    elif want == "tcg":
        for caps in (src, dst):
            if "tcg" not in caps.accels:
                raise Unsupported(f"{caps.path} has no TCG")
    else:
        raise UsageError(f"unknown accel {want!r}")
    return want


def check_binaries(cfg: RunConfig) -> None:
    """A missing, foreign or too old QEMU is a usage error up front, not a run of
    cancelled or broken cases. Raises UsageError naming the option to fix."""
    for side, binary in (("src", cfg.qemu_src), ("dst", cfg.qemu_dst)):
        try:
            caps = probe(binary)
        except HarnessError as exc:
            raise UsageError(f"--qemu-{side}: {exc}") from None
        problems = caps.cpr_transfer_problems()
        if problems and not (cfg.dialect == dialects.RFC_V1 and caps.has_cpr_transfer):
            raise UsageError(
                f"--qemu-{side}: {caps.path} ({caps.version_str}) does not support "
                f"cpr-transfer: {'; '.join(problems)}. Install QEMU >= 10.0 "
                f"(scripts/setup-host.sh) or point --qemu-{side} at one.")


def choose_dialect(cfg: RunConfig, src: Capabilities, dst: Capabilities) -> Dialect:
    if cfg.dialect == "auto" and src.dialect != dst.dialect:
        raise Unsupported(f"src speaks the {src.dialect} cpr-transfer dialect, dst speaks "
                          f"{dst.dialect}; pass --dialect to force one")
    return dialects.choose(src.dialect, cfg.dialect)


def check_supported(caps: Capabilities, sc: Scenario, dialect: Optional[Dialect] = None) -> None:
    problems = caps.cpr_transfer_problems()
    if dialect is not None and dialect.name == dialects.RFC_V1:
        problems = [] if caps.has_cpr_transfer else problems
    if problems:
        raise Unsupported(f"{caps.path} ({caps.version_str}) cannot run cpr-transfer: "
                          + "; ".join(problems))
    qom = backends.BACKENDS[sc.backend].qom_type if sc.backend in backends.BACKENDS else None
    if sc.backend == "epc":
        # SGX enclave memory needs both: say which of the two is missing.
        missing = []
        if not caps.has_object_type("memory-backend-epc"):
            missing.append(f"{caps.path} has no object type memory-backend-epc")
        if not os.path.exists("/dev/sgx_enclave"):
            missing.append("the host has no SGX (/dev/sgx_enclave absent)")
        if missing:
            raise Unsupported("memory-backend-epc case not runnable: " + "; ".join(missing))
    elif qom and not caps.has_object_type(qom):
        raise Unsupported(f"{caps.path} has no object type {qom}")
    for feature in sc.requires:
        ok, reason = features.check(feature, caps.path)
        if not ok:
            raise Unsupported(reason)


@dataclass(frozen=True)
class Hooks:
    """Test-only interventions (the harness's self-tests use them; runs do not).

    ``before_verify(ramfd)``: called after the target resumed, before the RAM pattern is
    verified through ``ramfd`` (the target's RAM file).
    """
    before_verify: Optional[Callable[[Any], None]] = None


def render_vm_args(sc: Scenario, dialect: Dialect, mem: backends.MemoryArgs, accel: str,
                   guest_args: List[str], side: str) -> List[str]:
    """The QEMU command line both sides share (the target adds its -incoming)."""
    machine = sc.machine + mem.machine_props + dialect.machine_suffix(sc.aux_ram_share)
    return ["-name", f"cprh-{side},debug-threads=on", "-nodefaults", "-display", "none",
            "-machine", machine, "-accel", accel, "-smp", str(sc.smp),
            "-m", f"{sc.ram_mb}M", *mem.object_args, *guest_args]


def render_channels(src_main: str, dst_main: str, src_cpr: str, dst_cpr: str,
                    wd: str) -> tuple:
    """(src main, dst main, src cpr, dst cpr); one object where both sides agree.

    When the sides differ (error paths), the source's channel lives in ``wd/s``.
    """
    dm = channels.main_channel(dst_main, wd)
    sm = dm if src_main == dst_main else channels.main_channel(src_main, os.path.join(wd, "s"))
    dc = channels.cpr_channel(dst_cpr, wd)
    scpr = dc if src_cpr == dst_cpr else channels.cpr_channel(src_cpr, os.path.join(wd, "s"))
    return sm, dm, scpr, dc


@dataclass
class Plan:
    """What a scenario renders to, without running anything (a dry run)."""
    dialect: str
    src_args: List[str]
    dst_args: List[str]
    src_commands: List[Dict[str, Any]]
    dst_commands: List[Dict[str, Any]]

    def text(self) -> str:
        import shlex as _sh
        lines = [f"# dialect: {self.dialect}", "# source:", _sh.join(self.src_args),
                 "# target:", _sh.join(self.dst_args), "# source QMP, in order:"]
        lines += [json.dumps(c) for c in self.src_commands]
        if self.dst_commands:
            lines += ["# target QMP, after the source's migrate:"]
            lines += [json.dumps(c) for c in self.dst_commands]
        return "\n".join(lines)


def render_plan(sc: Scenario, dialect: Dialect, workdir: str, accel: str = "kvm",
                guest_args: Optional[List[str]] = None) -> Plan:
    """Render ``sc`` in ``dialect`` as the pair runner would (channels are allocated:
    sockets pre-created for fd kinds are closed again before returning)."""
    mem = backends.render(sc.backend, sc.ram_mb, sc.prealloc, "/dev/shm/cprh-PLAN",
                          check_host=False)
    gargs = guest_args if guest_args is not None else ["-bios", "GUEST.bin"]
    os.makedirs(os.path.join(workdir, "s"), exist_ok=True)
    sm, dm, sc_, dc = render_channels(sc.side_main("src"), sc.side_main("dst"),
                                      sc.side_cpr("src"), sc.side_cpr("dst"), workdir)
    try:
        cmds = [{"execute": "migrate-set-parameters", "arguments": {"mode": "cpr-transfer"}}]
        if sc.capabilities:
            cmds.append({"execute": "migrate-set-capabilities", "arguments": {
                "capabilities": [{"capability": c, "state": True} for c in sc.capabilities]}})
        cmds += [{"execute": "getfd", "arguments": {"fdname": n}}
                 for n in {**sm.src_getfd, **sc_.src_getfd}]
        cmds += [{"execute": c.name, "arguments": c.args} for c in dialect.source_prepare(sc_)]
        m = dialect.source_migrate(sm, sc_)
        cmds.append({"execute": m.name, "arguments": m.args})
        dst_cmds = []
        if sc.incoming == "defer":
            c = dialect.target_migrate_incoming(dm)
            dst_cmds.append({"execute": c.name, "arguments": c.args})
        src_args = render_vm_args(sc, dialect, mem, accel, gargs, "src")
        dst_args = render_vm_args(sc, dialect, mem, accel, gargs, "dst") + \
            dialect.target_incoming(dm, dc, sc.incoming == "defer")
        return Plan(dialect.name, src_args, dst_args, cmds, dst_cmds)
    finally:
        for c in {id(x): x for x in (sm, dm, sc_, dc)}.values():
            c.close()


@dataclass(frozen=True)
class _Setup:
    """What a run of ``sc`` speaks and with what, decided once before any QEMU starts."""
    cfg: RunConfig          # with the binaries for the guest's architecture
    guest: GuestImage
    dialect: Dialect
    accel: str
    timeouts: Timeouts
    src: Capabilities
    dst: Capabilities


def _setup(sc: Scenario, cfg: RunConfig, observer: Observer) -> _Setup:
    """Build the guest, probe both binaries, pick dialect and accel (or Unsupported)."""
    guest = image(sc.guest)
    cfg = cfg.for_arch(guest.arch)
    with observer.step("probe QEMU binaries"):
        caps_src = probe(cfg.qemu_src)
        caps_dst = probe(cfg.qemu_dst)
        dialect = choose_dialect(cfg, caps_src, caps_dst)
        check_supported(caps_src, sc, dialect)
        check_supported(caps_dst, sc, dialect)
        accel = resolve_accel(cfg.accel, sc, caps_src, caps_dst)
    timeouts = cfg.timeouts if accel == "kvm" else cfg.timeouts.scaled(2.0)
    return _Setup(cfg, guest, dialect, accel, timeouts, caps_src, caps_dst)


@contextmanager
def _private_dirs(sc: Scenario) -> Iterator[tuple]:
    """(workdir, shm_dir or None): private 0700 dirs, removed whatever happens."""
    workdir = private_tmpdir()
    shm_dir = private_tmpdir_shm() if backends.BACKENDS[sc.backend].qom_type == \
        "memory-backend-file" else None
    try:
        yield workdir, shm_dir
    finally:
        remove_tmpdir(workdir)
        if shm_dir:
            remove_tmpdir(shm_dir)


def run_scenario(sc: Scenario, cfg: RunConfig, artifacts_dir: str,
                 observer: Observer = NULL_OBSERVER, hooks: Hooks = Hooks()) -> PairResult:
    """Run ``sc`` on a fresh QEMU pair; logs and serial output go to ``artifacts_dir``."""
    su = _setup(sc, cfg, observer)
    os.makedirs(artifacts_dir, exist_ok=True)
    result = PairResult(scenario=sc, accel=su.accel, dialect=su.dialect.name,
                        qemu_src_version=su.src.version_str,
                        qemu_dst_version=su.dst.version_str)
    with _private_dirs(sc) as (workdir, shm_dir):
        _Pair(sc, su.cfg, su.accel, su.guest, su.timeouts, workdir, shm_dir, artifacts_dir,
              result, observer, hooks, su.dialect).run()
    return result


def private_tmpdir_shm() -> str:
    """A private dir on /dev/shm for file-backed guest RAM."""
    return private_tmpdir("shm", base="/dev/shm")


@dataclass
class Attempt:
    """One try at a transfer from the (single) source to one target."""
    tag: str
    observed: str = ""
    message: str = ""
    query_migrate: Dict[str, Any] = field(default_factory=dict)
    dst_exitcode: Optional[int] = None
    dst_status_after: str = ""
    src_status_after: str = ""
    counter_after: Optional[int] = None
    boots_after: Optional[int] = None
    #: The guest's counter was seen changing on the target after the transfer.
    counter_moved_on_dst: Optional[bool] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class _Pair:
    def __init__(self, sc: Scenario, cfg: RunConfig, accel: str, guest: GuestImage,
                 timeouts: Timeouts, workdir: str, shm_dir: Optional[str], artifacts: str,
                 result: PairResult, observer: Observer = NULL_OBSERVER,
                 hooks: Hooks = Hooks(), dialect: Optional[Dialect] = None):
        self.sc, self.cfg, self.accel, self.guest = sc, cfg, accel, guest
        self.g = guest_driver(guest, workdir)
        self.dialect = dialect or dialects.get(dialects.RELEASED)
        self.obs = observer
        self.hooks = hooks
        self.mem = backends.render(sc.backend, sc.ram_mb, sc.prealloc, shm_dir)
        self.ev = RamEvidence(sc.backend, sc.machine, sc.ram_mb, guest, artifacts,
                              self.mem.mem_path, pattern=self.g.leaves_ram_alone,
                              sample_pause=sc.positive and not sc.paused
                              and self.g.counter_in_ram,
                              max_seconds=timeouts.transfer + timeouts.settle + 30)
        result.evidence = self.ev.data
        self.t = timeouts
        self.workdir, self.shm_dir, self.artifacts = workdir, shm_dir, artifacts
        self.r = result
        self.src: Optional[QemuProcess] = None
        self.dst: Optional[QemuProcess] = None
        self.old_dsts: List[QemuProcess] = []
        self.chans: List[channels.Channel] = []
        self.relays: List[Relay] = []

    # -- command lines --------------------------------------------------------------

    def vm_args(self, side: str, sockdir: Optional[str] = None) -> List[str]:
        serial = os.path.join(self.artifacts, f"{side}.serial")
        self.r.artifacts[f"{side}.serial"] = serial
        return render_vm_args(self.sc, self.dialect, self.mem, self.accel,
                              self.g.qemu_args(side, serial, sockdir or self.workdir), side)

    def work_area(self, vm: QemuProcess) -> Any:
        """The guest's progress (counter, boot count), whatever the kind of guest."""
        assert vm.qmp is not None
        return self.g.read(vm)

    # -- the run --------------------------------------------------------------------------

    def run(self) -> None:
        try:
            with self.obs.step("start src and boot the guest"):
                self.start_src()
            self.transfer()
        finally:
            with self.obs.step("tear down both sides"):
                self.teardown()

    def _mark(self, name: str, t0: float) -> None:
        self.r.timings[name] = round(time.monotonic() - t0, 4)

    def start_src(self) -> None:
        t0 = time.monotonic()
        self.src = QemuProcess("src", self.cfg.qemu_src, self.vm_args("src"), self.workdir,
                               self.artifacts)
        self.r.cmdlines["src"] = self.src.cmdline
        self.r.artifacts["src.log"] = self.src.log_path
        self.src.launch()
        qmp = self.src.connect_qmp(self.t.start)
        self._mark("src_start", t0)
        boot = self.t.guest * (4 if self.guest.kind == "linux" else 1)
        self.g.wait_moving(self.src, boot)
        self._mark("src_guest_up", t0)
        if self.sc.paused:
            qmp.cmd("stop")
        self.r.src_status_before = qmp.cmd("query-status")["status"]
        with self.obs.step("fill guest RAM with the seeded pattern"):
            self.ev.prepare(self.src.pid)
        if self.ev.sample_pause:
            with self.obs.step("start the pause sampler; noise floor on the idle pair"):
                self.ev.start_sampler()

    def transfer(self) -> None:
        assert self.src is not None and self.src.qmp is not None
        sc, sq = self.sc, self.src.qmp
        before = self.work_area(self.src)
        self.r.counter_before, self.r.boots_before = before.counter, before.boots

        # Source: mode first, read back; then capabilities (some must be refused).
        sq.cmd("migrate-set-parameters", {"mode": "cpr-transfer"})
        mode = sq.cmd("query-migrate-parameters").get("mode")
        if mode != "cpr-transfer":
            raise HarnessError(f"src: mode reads back as {mode!r} after setting cpr-transfer")
        first = Attempt("first")
        refused_early = False
        if sc.capabilities:
            try:
                sq.cmd("migrate-set-capabilities", {"capabilities": [
                    {"capability": c, "state": True} for c in sc.capabilities]})
            except QMPCommandFailed as exc:
                first.observed, first.message = SRC_REFUSES, exc.desc
                refused_early = True
        if not refused_early:
            with self.obs.step("transfer"):
                self._attempt(first, sc.side_main("src"), sc.side_main("dst"),
                              sc.side_cpr("src"), sc.side_cpr("dst"), sc.incoming)
        if sc.fault and first.observed in (SRC_REFUSES, DST_REFUSES, "failed"):
            first.observed = FAILS  # whoever noticed, the transfer failed as it must
        self._record(first)
        if first.observed in (COMPLETES, SRC_CRASHED, SRC_LOST):
            return
        with self.obs.step("check the source survived the refusal"):
            self._check_src_survived()
        if sc.retry and self.r.src_status_after in ("running", "paused"):
            with self.obs.step("retry a valid transfer from the same source"):
                self._retry()

    def _record(self, a: Attempt) -> None:
        self.r.observed, self.r.observed_message = a.observed, a.message
        self.r.query_migrate = a.query_migrate
        self.r.dst_exitcode = a.dst_exitcode
        self.r.dst_status_after, self.r.src_status_after = a.dst_status_after, a.src_status_after
        self.r.counter_after, self.r.boots_after = a.counter_after, a.boots_after
        self.r.counter_moved_on_dst = a.counter_moved_on_dst

    def _retry(self) -> None:
        """After a refusal: a valid transfer from the same source must still work."""
        assert self.src is not None and self.src.qmp is not None
        sq = self.src.qmp
        if self.sc.capabilities:
            sq.try_cmd("migrate-set-capabilities", {"capabilities": [
                {"capability": c, "state": False} for c in self.sc.capabilities]})
        if self.dst is not None:
            self.dst.shutdown()
            self.old_dsts.append(self.dst)
            self.dst = None
        retry = Attempt("retry")
        self._attempt(retry, "unix", "unix", "unix", "unix", "immediate")
        self.r.retry = retry.to_dict()

    def _attempt(self, a: Attempt, src_main_kind: str, dst_main_kind: str,
                 src_cpr_kind: str, dst_cpr_kind: str, incoming: str) -> None:
        """Start a target and transfer to it; fill ``a`` with what was observed."""
        assert self.src is not None and self.src.qmp is not None
        sq = self.src.qmp
        fault = self.sc.fault if a.tag == "first" else ""  # faults hit the first attempt
        wd = os.path.join(self.workdir, a.tag)
        os.makedirs(wd, mode=0o700)
        src_main, dst_main, src_cpr, dst_cpr = render_channels(
            src_main_kind, dst_main_kind, src_cpr_kind, dst_cpr_kind, wd)
        relay = None
        if fault.endswith("during-main"):
            # The source talks to our relay, which holds the stream after a few KiB.
            assert dst_main.kind == "unix", "mid-stream faults relay a unix main channel"
            relay_path = os.path.join(wd, "relay.sock")
            relay = Relay(relay_path, dst_main.src_addr["path"])
            self.relays.append(relay)
            src_main = channels.Channel("main", "unix", {"transport": "socket", "type": "unix",
                                                         "path": relay_path}, None)
        self.chans += list({id(c): c for c in (dst_main, src_main, dst_cpr, src_cpr)}.values())

        extra = ["-device", "cprh-no-such-device"] if fault == "dst-fails-after-cpr" else []
        t0 = time.monotonic()
        with self.obs.step(f"start dst ({a.tag})"):
            if not self._start_dst(a, dst_main, dst_cpr, incoming, extra):
                return
        if fault == "dst-killed-before-cpr":
            with self.obs.step("fault: kill the target before it reads the cpr channel"):
                self.dst.kill()

        self._mark(f"{a.tag}_dst_listening", t0)
        t0 = time.monotonic()
        try:
            for name, fd in {**src_main.src_getfd, **src_cpr.src_getfd}.items():
                sq.send_fd(name, fd)
            for c in self.dialect.source_prepare(src_cpr):
                sq.cmd(c.name, c.args)
            migrate = self.dialect.source_migrate(src_main, src_cpr)
            self.ev.mark(M_TRANSFER)
            sq.cmd(migrate.name, migrate.args)
        except QMPCommandFailed as exc:
            a.observed, a.message = SRC_REFUSES, exc.desc
            a.query_migrate = sq.cmd("query-migrate")
            return
        self._mark(f"{a.tag}_migrate_issued", t0)
        if fault == "dst-killed-before-cpr":
            self._after_fault(a, t0, "dst", fault)
            return

        # The target creates its monitor only once it has read CPR state.
        assert self.dst is not None
        try:
            dq = self.dst.connect_qmp(self.t.start)
        except VMLaunchFailure:
            self._dst_exited(a)
            return
        self._mark(f"{a.tag}_dst_monitor_up", t0)
        if fault == "dst-killed-after-cpr":
            with self.obs.step("fault: kill the target after it read CPR state"):
                self.dst.kill()
            self._after_fault(a, t0, "dst", fault)
            return
        if incoming == "defer":
            try:
                c = self.dialect.target_migrate_incoming(dst_main)
                dq.cmd(c.name, c.args)
            except QMPCommandFailed as exc:
                a.observed, a.message = DST_REFUSES, exc.desc
                a.query_migrate = sq.cmd("query-migrate")
                return

        if fault.endswith("during-main"):
            victim = self.src if fault.startswith("src") else self.dst
            with self.obs.step(f"fault: kill the {victim.side} while the main channel streams"):
                assert relay is not None
                relay.wait_held(self.t.transfer)
                victim.kill()
                relay.close()
            self._after_fault(a, t0, victim.side, fault)
            return
        try:
            status = self._wait_migration(sq, t0)
            a.query_migrate = sq.cmd("query-migrate")
        except QMPConnectionLost:
            self._crashed(a, self.src)
            return
        if status != "completed":
            if not self.dst.is_running():
                self._dst_exited(a)
            else:
                a.observed = "failed"
                a.message = a.query_migrate.get("error-desc", status)
                a.dst_status_after = dq.cmd("query-status")["status"]
            return
        self._mark(f"{a.tag}_completed", t0)
        a.observed = COMPLETES
        self._settle_after_completion(a, t0)
        self.ev.mark(M_RESUMED)
        time.sleep(0.05)  # a short tail so the sampler sees the counter move on
        self.ev.stop_sampler(a.query_migrate)
        with self.obs.step("verify RAM in place and intact (through the target)"):
            self.ev.check_stream(a.query_migrate)
            self.ev.verify_after(self.src.pid, self.dst.pid, self.hooks.before_verify)
        extra = self.g.after_transfer(self.dst, self.t.settle)
        if extra:
            with self.obs.step("check the guest on the target's console"):
                self.r.evidence["guest" if a.tag == "first" else f"guest_{a.tag}"] = extra

    def _start_dst(self, a: Attempt, main: channels.Channel, cpr: channels.Channel,
                   incoming: str, extra: List[str]) -> bool:
        """Launch the target; False if it exited before it was ready (a refusal)."""
        args = extra + self.dialect.target_incoming(main, cpr, incoming == "defer")
        fds = main.dst_pass_fds + cpr.dst_pass_fds
        # Each attempt's target gets its own monitor socket in its own directory.
        self.dst = QemuProcess("dst", self.cfg.qemu_dst,
                               self.vm_args("dst", os.path.join(self.workdir, a.tag)) + args,
                               os.path.join(self.workdir, a.tag), self.artifacts, pass_fds=fds)
        if a.tag != "first":
            self.dst.log_path = os.path.join(self.artifacts, f"dst-{a.tag}.log")
        self.r.cmdlines["dst" if a.tag == "first" else f"dst-{a.tag}"] = self.dst.cmdline
        self.r.artifacts["dst.log" if a.tag == "first" else f"dst-{a.tag}.log"] = \
            self.dst.log_path
        self.dst.launch()
        for c in (main, cpr):  # our copies of fds handed over now live in the target
            if c.dst_pass_fds and not c.src_getfd:
                c.close()
        alive = lambda: self.dst.check_alive("before it was ready for the transfer")  # noqa
        try:
            if cpr.listen_path is None and cpr.listen_port is None:
                # Nothing to watch for (a cpr channel the target should refuse, or
                # none): give a refusing target the time to exit.
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    alive()
                    time.sleep(0.02)
            else:
                cpr.wait_listening(self.t.listen, alive)
        except VMLaunchFailure:
            self._dst_exited(a)
            return False
        return True

    def _after_fault(self, a: Attempt, t0: float, victim: str, fault: str) -> None:
        """Observe the survivor after a fault: it must notice, in bounded time."""
        if victim == "dst":
            sq = self.src.qmp
            try:
                status = self._wait_migration(sq, t0)
            except WaitTimeout as exc:
                # The RFC's own comment: "will loop forever if the target dies". Name the
                # stage, cancel, and let the survival checks run.
                a.observed = "hang"
                a.message = f"source still migrating after the target died ({fault}): {exc}"
                sq.try_cmd("migrate_cancel")
                return
            a.query_migrate = sq.cmd("query-migrate")
            a.observed = FAILS if status != "completed" else COMPLETES
            a.message = f"{fault}: source migration {status}: " + \
                str(a.query_migrate.get("error-desc", ""))
        else:
            try:
                code = self.dst.wait_exit(self.t.exit)
            except WaitTimeout as exc:
                a.observed = "hang"
                a.message = f"target still alive after its source died ({fault}): {exc}"
                return
            a.dst_exitcode = code
            a.observed = SRC_LOST
            a.message = f"{fault}: target {describe_exit(code)}; " + tail(self.dst.log_path, 5)
            a.src_status_after = "dead"

    def _wait_migration(self, sq: Any, t0: float) -> str:
        """Poll the source until its migration ends; fail fast on terminal states."""
        deadline = t0 + self.t.transfer
        while True:
            status = sq.cmd("query-migrate").get("status", "")
            if status in ("completed", "failed", "cancelled"):
                return status
            if time.monotonic() > deadline:
                dst = "target exited" if self.dst and not self.dst.is_running() else "target alive"
                raise WaitTimeout("migration to complete", self.t.transfer,
                                  time.monotonic() - t0, f"{status} ({dst})", "src",
                                  self.src.log_path if self.src else None)
            time.sleep(0.01)

    def _settle_after_completion(self, a: Attempt, t0: float) -> None:
        assert self.src is not None and self.dst is not None
        dq, sq = self.dst.qmp, self.src.qmp
        assert dq is not None and sq is not None
        want = "paused" if self.sc.paused else "running"
        status = _wait_status(dq, want, self.t.settle)
        self._mark(f"{a.tag}_dst_{want}", t0)
        a.dst_status_after = status
        a.src_status_after = sq.cmd("query-status")["status"]
        self.r.evidence.setdefault("dst_query_migrate", dq.cmd("query-migrate"))
        if self.sc.paused:
            wa = self.work_area(self.dst)
            time.sleep(0.2)
            again = self.work_area(self.dst)
            a.counter_moved_on_dst = again.counter != wa.counter
            wa = again
        else:
            # Moving on the target, after the switch-over: a value above the one read
            # before the transfer is not enough (the source ran on until it stopped).
            try:
                wa = self.g.wait_moving(self.dst, self.t.settle, above=self.r.counter_before)
                a.counter_moved_on_dst = True
            except WaitTimeout as exc:
                a.counter_moved_on_dst = False
                wa = exc.last_state if hasattr(exc.last_state, "counter") else \
                    self.work_area(self.dst)
        a.counter_after, a.boots_after = wa.counter, wa.boots

    def _crashed(self, a: Attempt, vm: QemuProcess) -> None:
        """A QEMU died under us (not on purpose): say which, how, and show its log."""
        try:
            code = vm.wait_exit(self.t.exit)
        except WaitTimeout:
            code = None
        how = describe_exit(code)
        a.observed = SRC_CRASHED if vm.side == "src" else DST_CRASHED
        a.message = f"{vm.side} QEMU {how} during the transfer; log {vm.log_path}: " + \
            tail(vm.log_path, 5)
        if vm.side == "src":
            a.src_status_after = "dead"

    def _dst_exited(self, a: Attempt) -> None:
        assert self.dst is not None
        try:
            a.dst_exitcode = self.dst.wait_exit(self.t.exit)
        except WaitTimeout:
            a.dst_exitcode = None
        a.observed = DST_REFUSES
        a.message = tail(self.dst.log_path, 10)
        # The source sees its migration fail (if it had started one) and carries on.
        if self.src is not None and self.src.qmp is not None:
            sq = self.src.qmp
            deadline = time.monotonic() + self.t.settle
            while time.monotonic() < deadline:
                st = sq.cmd("query-migrate").get("status")
                if st in (None, "none", "failed", "cancelled", "completed"):
                    break
                time.sleep(0.02)
            a.query_migrate = sq.cmd("query-migrate")

    def _check_src_survived(self) -> None:
        """After a refusal the source must still run its guest, in its prior state."""
        assert self.src is not None and self.src.qmp is not None
        sq = self.src.qmp
        status = _wait_status(sq, "paused" if self.sc.paused else "running", self.t.settle)
        self.r.src_status_after = status
        self.ev.verify_after(self.src.pid, None)
        if status == "running":
            try:
                wa = self.g.wait_moving(self.src, self.t.settle, above=self.r.counter_before)
                self.r.src_counter_after_refusal = wa.counter
            except WaitTimeout:
                self.r.src_counter_after_refusal = None

    def chain(self, c: ChainResult) -> None:
        assert self.src is not None and self.src.qmp is not None
        inode0 = ram.find_ram_fd(self.src.pid, self.ev.size, self.ev.hint).inode \
            if self.ev.applicable else None
        c.ram_inode = inode0
        last = self.work_area(self.src)
        boots0 = last.boots
        for i in range(1, c.hops_wanted + 1):
            tag = f"hop{i:03d}"
            self.src.qmp.cmd("migrate-set-parameters", {"mode": "cpr-transfer"})
            self.r.counter_before = last.counter
            a = Attempt(tag)
            with self.obs.step(f"hop {i}: transfer to a new QEMU"):
                self._attempt(a, "unix", "unix", "unix", "unix", "immediate")
            hop: Dict[str, Any] = {"hop": i, "observed": a.observed,
                                   "downtime_ms": a.query_migrate.get("downtime"),
                                   "counter_after": a.counter_after, "boots": a.boots_after,
                                   "counter_moved": a.counter_moved_on_dst}
            problem = ""
            if a.observed != COMPLETES:
                problem = f"transfer {a.observed}: {a.message[-300:]}"
            elif a.dst_status_after != "running" or a.src_status_after != "postmigrate":
                problem = f"states: dst {a.dst_status_after}, src {a.src_status_after}"
            elif not a.counter_moved_on_dst or (a.counter_after or 0) <= last.counter:
                problem = f"guest counter did not move on: {last.counter} -> {a.counter_after}"
            elif a.boots_after != boots0:
                problem = f"guest was reset: boot count {boots0} -> {a.boots_after}"
            assert self.dst is not None
            if not problem and inode0 is not None:
                inode = ram.find_ram_fd(self.dst.pid, self.ev.size, self.ev.hint).inode
                hop["ram_inode"] = inode
                if inode != inode0:
                    problem = f"RAM file changed: inode {inode0} -> {inode}"
            # The old source is done: quit it, the target becomes the source.
            old = self.src
            self.src, self.dst = self.dst, None
            old.shutdown()
            if not problem:
                proc = psutil.Process(self.src.pid)
                hop["open_fds"] = len(os.listdir(f"/proc/{self.src.pid}/fd"))
                hop["rss_anon_kib"] = _rss_anon_kib(self.src.pid)
                hop["threads"] = proc.num_threads()
                last = self.work_area(self.src)
            c.hops.append(hop)
            if problem:
                c.failed_hop, c.failure = i, problem
                return
        if self.ev.applicable:
            fd = ram.find_ram_fd(self.src.pid, self.ev.size, self.ev.hint)
            with ram.open_ram(fd, False, machine=self.sc.machine, work=self.ev.work) as g:
                c.pattern = ram.verify_pattern(g, self.ev.seed, self.ev.exclude,
                                               self.sc.machine, self.ev.size).to_dict()

    def teardown(self) -> None:
        """Stop every QEMU; each teardown runs even if an earlier one raises."""
        self.ev.close()
        for relay in self.relays:
            relay.close()
        vms = [("dst", self.dst)] + [(f"dst-{i}", v) for i, v in enumerate(self.old_dsts)] + \
            [("src", self.src)]
        for side, vm in vms:
            if vm is not None and vm.qmp is not None and side in ("src", "dst"):
                self.r.transcripts[side] = vm.qmp.transcript_text()
        try:
            _shutdown_all([vm for _, vm in vms if vm is not None])
        finally:
            for c in self.chans:
                c.close()
        for side in ("src", "dst"):
            if side in self.r.transcripts:
                path = os.path.join(self.artifacts, f"{side}.qmp.jsonl")
                with open(path, "w") as f:
                    f.write(self.r.transcripts[side])
                self.r.artifacts[f"{side}.qmp"] = path


@dataclass
class ChainResult:
    """A chain of live updates of one guest: A -> B -> C -> ..."""
    hops_wanted: int
    hops: List[Dict[str, Any]] = field(default_factory=list)
    failed_hop: Optional[int] = None
    failure: str = ""
    pattern: Dict[str, Any] = field(default_factory=dict)
    ram_inode: Optional[int] = None
    artifacts: Dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def run_chain(sc: Scenario, cfg: RunConfig, artifacts_dir: str, hops: int,
              observer: Observer = NULL_OBSERVER) -> ChainResult:
    """Live-update one guest ``hops`` times in a row, each target becoming the next source.

    Records per hop what a leak or a copy would show: the RAM file's inode (must stay the
    same), the live QEMU's open fds and anonymous RSS, the guest's counter and boot count,
    QEMU's downtime; verifies the RAM pattern through the last QEMU at the end.
    """
    su = _setup(sc, cfg, observer)
    os.makedirs(artifacts_dir, exist_ok=True)
    result = PairResult(scenario=sc.with_(id=sc.id + f"-chain{hops}"), accel=su.accel,
                        dialect=su.dialect.name, qemu_src_version=su.src.version_str,
                        qemu_dst_version=su.dst.version_str)
    chain = ChainResult(hops_wanted=hops)
    with _private_dirs(sc) as (workdir, shm_dir):
        pair = _Pair(sc, su.cfg, su.accel, su.guest, su.timeouts, workdir, shm_dir,
                     artifacts_dir, result, observer, Hooks(), su.dialect)
        pair.ev.sample_pause = False
        try:
            pair.start_src()
            pair.chain(chain)
        finally:
            pair.teardown()
            chain.artifacts = dict(result.artifacts)
    return chain


def _wait_status(qmp: Any, want: str, timeout: float) -> str:
    """Poll ``query-status`` until it says ``want`` or ``timeout`` passes; return the
    last status seen (the caller judges it: a wrong state is a verdict, not an error)."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = qmp.cmd("query-status")["status"]
        if status == want:
            break
        time.sleep(0.01)
    return status


def _shutdown_all(vms: List[QemuProcess]) -> None:
    if not vms:
        return
    try:
        vms[0].shutdown()
    finally:
        _shutdown_all(vms[1:])
