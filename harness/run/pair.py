"""The two sides of one case and what they share: the QEMU processes, their command
lines, the channels and relays, the evidence collector, the result being filled, the
phases and marks, and their teardown whatever happens.

:class:`Pair` is what the hand-overs (:mod:`harness.run.handover`), the outcome
helpers (:mod:`harness.run.outcomes`) and the pair driver (:mod:`harness.run.driver`,
which adds the phases of a case) all work on; nothing here knows of a phase order.
"""
from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from harness.core.cleanup import private_tmpdir, remove_tmpdir, reserved_hugepages
from harness.core.errors import AbnormalShutdown, HarnessError
from harness.core.observe import NULL_OBSERVER, Observer
from harness.core.sides import Side
from harness.cpr import backends
from harness.cpr.channels import Channel
from harness.cpr.faults import Fault
from harness.cpr.relay import Relay
from harness.evidence.collector import FULL, EvidencePlan, RamEvidence
from harness.evidence.memory import RamFd
from harness.guest import driver as guest_driver
from harness.guest.driver import WorkArea
from harness.qemu.crash import Crash
from harness.qemu.process import QemuProcess
from harness.run.aftermath import Aftermath
from harness.run.attempt import Attempt
from harness.run.checks import (FAMILIES, ArgsContext, Family, SetupContext,
                                TeardownContext)
from harness.run.plan import ports_wanted, render_extra_args, render_vm_args
from harness.run.result import PairResult
from harness.run.setup import CaseSetup


def free_loopback_ports(n: int) -> Tuple[int, ...]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago: all bound at
    once (so the kernel hands out distinct ones), then let go."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


@dataclass(frozen=True)
class Hooks:
    """Interventions for tools and self-tests; conformance runs use none.

    ``before_verify(ramfd)``: after the target resumed, before the RAM pattern is
    verified through ``ramfd`` (the target's RAM file). ``before_stop_samplers(pair)``:
    when the guest runs on the target, before the pause samplers stop (the bench's
    precopy places marks in the target's sampler here). ``after_transfer(pair,
    attempt)``: after a transfer completed and was verified, before teardown (the bench
    takes its measurements here).
    """
    before_verify: Optional[Callable[[RamFd], None]] = None
    before_stop_samplers: Optional[Callable[["Pair"], None]] = None
    after_transfer: Optional[Callable[["Pair", Attempt], None]] = None


class Pair(Aftermath):
    """The two sides of one case and every resource between them."""

    def __init__(self, setup: CaseSetup, artifacts: str, workdir: str,
                 shm_dir: Optional[str], observer: Observer = NULL_OBSERVER,
                 hooks: Hooks = Hooks(), plan: EvidencePlan = FULL):
        sc = setup.scenario
        self.setup, self.sc, self.cfg, self.t = setup, sc, setup.cfg, setup.timeouts
        self.bins = setup.bins
        self.dialect = setup.bins.dialect
        self.obs, self.hooks, self.plan = observer, hooks, plan
        self.g = guest_driver(setup.guest, workdir)
        self.mem = backends.render(sc.backend, sc.ram_mb, sc.prealloc, shm_dir)
        self.ev = RamEvidence(sc.backend, sc.machine, sc.ram_mb, setup.guest, artifacts,
                              self.mem.mem_path, pattern=self.g.leaves_ram_alone,
                              sample_pause=sc.positive and not sc.paused
                              and self.g.counter_in_ram,
                              max_seconds=self.t.transfer + self.t.settle + 30, plan=plan)
        self.r = PairResult(scenario=sc, accel=self.bins.accel, dialect=self.dialect.name,
                            qemu_src_version=self.bins.src.version_str,
                            qemu_dst_version=self.bins.dst.version_str,
                            machine_type=self.bins.src.resolve_machine(self.bins.machine),
                            machine_pinned=self.bins.pinned)
        self.workdir, self.artifacts = workdir, artifacts
        self.epoch = time.monotonic()
        self.src: Optional[QemuProcess] = None
        self.dst: Optional[QemuProcess] = None
        self.old_dsts: List[QemuProcess] = []
        self.chans: List[Channel] = []
        self.relays: List[Relay] = []
        #: The main channels of the attempt in flight (let go when its target dies).
        self.in_flight: List[Channel] = []
        self._phase_stack: List[List[float]] = []
        #: When the first target was seen in its final run state (monotonic seconds).
        self.resumed_at: Optional[float] = None
        self.window_deaths: set = set()
        self._diagnosed: Dict[int, Optional[Crash]] = {}
        self._ports: Optional[Tuple[int, ...]] = None
        #: What each check family set up for the case (:meth:`set_up_cases`), by name.
        self.cases: Dict[str, Any] = {}

    @classmethod
    @contextmanager
    def session(cls, setup: CaseSetup, artifacts: str, observer: Observer = NULL_OBSERVER,
                hooks: Hooks = Hooks(), plan: EvidencePlan = FULL) -> Iterator[Any]:
        """A pair with its private 0700 dirs, torn down and removed whatever happens."""
        os.makedirs(artifacts, exist_ok=True)
        sc = setup.scenario
        kind = backends.BACKENDS[sc.backend]
        huge = reserved_hugepages(sc.ram_mb // 2) if kind.hugetlb else nullcontext()
        workdir = private_tmpdir()
        shm_dir = private_tmpdir("shm", base="/dev/shm") \
            if kind.qom_type == "memory-backend-file" else None
        try:
            with huge:
                p = cls(setup, artifacts, workdir, shm_dir, observer, hooks, plan)
                try:
                    yield p
                finally:
                    try:
                        with p.phase("teardown", "tear down both sides"):
                            p.teardown()
                    finally:
                        p.close_cases()
        finally:
            remove_tmpdir(workdir)
            if shm_dir:
                remove_tmpdir(shm_dir)

    # -- time -----------------------------------------------------------------------

    @contextmanager
    def phase(self, name: str, title: str = "") -> Iterator[None]:
        """An observer step, timed into ``result.phases[name]``: its own time, without
        the phases nested in it, so the phases add up to the case's time."""
        frame = [0.0]  # time spent in nested phases
        self._phase_stack.append(frame)
        t = time.monotonic()
        try:
            with self.obs.step(title or name):
                yield
        finally:
            elapsed = time.monotonic() - t
            self._phase_stack.pop()
            if self._phase_stack:
                self._phase_stack[-1][0] += elapsed
            self.r.phases[name] = round(self.r.phases.get(name, 0.0) + elapsed - frame[0], 4)

    def mark(self, name: str) -> None:
        """A named point in time, seconds since the case started."""
        self.r.timings[name] = round(time.monotonic() - self.epoch, 4)

    # -- sides ----------------------------------------------------------------------

    @property
    def source(self) -> QemuProcess:
        assert self.src is not None, "the source is not running"
        return self.src

    @property
    def target(self) -> QemuProcess:
        assert self.dst is not None, "no target"
        return self.dst

    @staticmethod
    def name_of(side: str, tag: str = "first") -> str:
        """A QEMU's artifact name: ``src``, ``dst``, ``dst-retry``, ``dst-hop002``."""
        return side if tag == "first" else f"{side}-{tag}"

    def serial_of(self, vm: QemuProcess) -> Optional[str]:
        """The guest's console file of ``vm`` (each QEMU writes its own: QEMU truncates a
        chardev file it opens, so a shared one would lose the previous QEMU's output)."""
        return self.r.artifacts.get(f"{vm.name}.serial")

    def vm_args(self, side: str, sockdir: Optional[str] = None,
                machine: Optional[str] = None, tag: str = "first") -> List[str]:
        """One side's command line without its ``-incoming``: the scenario's, the
        guest's, and what each registered check family adds (the same on both sides)."""
        name = self.name_of(side, tag)
        serial = os.path.join(self.artifacts, f"{name}.serial")
        if self.sc.console:  # both sides on one file, as a user's command line has it
            serial = os.path.join(self.artifacts, "console.log")
        self.r.artifacts[f"{name}.serial"] = serial
        extra = [a for fam in FAMILIES for a in fam.qemu_args(self.args_context(fam, sockdir),
                                                              Side(side))]
        return render_vm_args(self.sc, self.dialect, self.mem, self.bins.accel,
                              self.g.qemu_args(side, serial, sockdir or self.workdir,
                                               self.sc.console == "file-append") + extra,
                              side, machine=machine or self.bins.machine,
                              extra=render_extra_args(self.sc, side, self.shared_dir, name,
                                                      self.ports))

    def args_context(self, fam: Family, sockdir: Optional[str] = None) -> ArgsContext:
        return ArgsContext(self.sc, sockdir or self.workdir, self.artifacts, self.shared_dir,
                           self.ports, self.cases.get(fam.name))

    @property
    def shared_dir(self) -> str:
        """The directory both sides' extra options may name (``{dir}``)."""
        path = os.path.join(self.workdir, "shared")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    @property
    def ports(self) -> Tuple[int, ...]:
        """The loopback ports the scenario's ``{port0}``, ``{port1}``... name: picked free
        once per case (a port the kernel just handed out and took back)."""
        if self._ports is None:
            self._ports = free_loopback_ports(ports_wanted(self.sc))
        return self._ports

    def launch(self, side: str, args: List[str], tag: str = "first",
               pass_fds: tuple = (), sockdir: Optional[str] = None) -> QemuProcess:
        """Start one side's QEMU; its command line and log are recorded under its name."""
        name = self.name_of(side, tag)
        binary = self.cfg.qemu_src if side == "src" else self.cfg.qemu_dst
        caps = self.bins.src if side == "src" else self.bins.dst
        # What the check families add to the launch: a prefix that execs QEMU in place
        # (a namespace), fds it inherits (a tap's).
        how = [fam.launch(self.args_context(fam, sockdir), Side(side)) for fam in FAMILIES]
        # Where the binary has it, QEMU exits with its parent by itself (PDEATHSIG and
        # the janitor cover the rest).
        vm = QemuProcess(side, binary, args, sockdir or self.workdir, self.artifacts,
                         pass_fds=tuple(pass_fds) + tuple(fd for h in how for fd in h.fds),
                         log_name=f"{name}.log", epoch=self.epoch,
                         exit_with_parent=caps.has_exit_with_parent,
                         prefix=[a for h in how for a in h.prefix])
        self.r.cmdlines[name] = vm.cmdline
        self.r.artifacts[f"{name}.log"] = vm.log_path
        if side == "src":
            self.src = vm
        else:
            self.dst = vm
        vm.launch()
        return vm

    def prepare_exec_target(self, a: Attempt, sockdir: str, incoming: List[str]) -> QemuProcess:
        """The QEMU a cpr-exec source will exec into: its command line (the dst binary,
        the shared arguments, its own monitor), not launched: the source becomes it."""
        machine = self.bins.target_machine(retry=not a.first)
        name = self.name_of("dst", a.tag)
        vm = QemuProcess("dst", self.cfg.qemu_dst, self.vm_args("dst", sockdir, machine, a.tag)
                         + incoming, sockdir, self.artifacts, log_name=f"{name}.log",
                         epoch=self.epoch, exit_with_parent=self.bins.dst.has_exit_with_parent)
        self.r.cmdlines[name] = vm.cmdline
        return vm

    def release_channels(self) -> None:
        """Let a source go that is blocked on a channel of the attempt in flight whose
        other end died with the target."""
        for c in self.in_flight:
            c.release()

    def retire_dst(self) -> None:
        """Stop the current target (a refused one) before the next attempt."""
        if self.dst is not None:
            self.shutdown_quietly(self.dst)
            self.old_dsts.append(self.dst)
            self.dst = None

    def work_area(self, vm: QemuProcess) -> WorkArea:
        """The guest's progress (counter, boot count), whatever the kind of guest."""
        return self.g.read(vm)

    def fault_for(self, a: Attempt) -> Optional[Fault]:
        """Faults hit the first attempt only."""
        return self.sc.fault if a.first else None

    # -- the check families' case ----------------------------------------------------

    def set_up_cases(self) -> None:
        """Each family's set-up of the case, before the source starts (kept in
        :attr:`cases`; closed by :meth:`close_cases` after teardown)."""
        ctx = SetupContext(self.sc, self.g, self.workdir, self.artifacts)
        for fam in FAMILIES:
            case = fam.setup(ctx)
            if case is not None:
                self.cases[fam.name] = case

    def close_cases(self) -> None:
        """After teardown (no QEMU holds anything): the ``after_teardown`` of each family
        that concluded the case (its result replaces the case record), then its case
        closed; each runs even if an earlier one raises, the first error raised at the
        end."""
        errors: List[BaseException] = []
        for fam in FAMILIES:
            case = self.cases.pop(fam.name, None)
            try:
                if case is not None and fam.name in self.r.devices:
                    rec = fam.after_teardown(TeardownContext(self.sc, self.artifacts, case,
                                                             self.r.devices.get(fam.name)))
                    if rec is not None:
                        self.r.devices[fam.name] = rec
            except BaseException as exc:  # noqa: BLE001 - the others still close
                errors.append(exc)
            finally:
                if hasattr(case, "close"):
                    try:
                        case.close()
                    except BaseException as exc:  # noqa: BLE001
                        errors.append(exc)
        if errors:
            raise errors[0]

    # -- teardown -------------------------------------------------------------------

    def teardown(self) -> None:
        """Stop every QEMU; each teardown runs even if an earlier one raises."""
        self.ev.close()
        for relay in self.relays:
            relay.close()
        vms = [vm for vm in [self.dst, *self.old_dsts, self.src] if vm is not None]
        self.record_deaths(vms)
        try:
            for vm in vms:
                self.shutdown_quietly(vm)
        finally:
            for c in self.chans:
                c.close()
            self.write_transcripts(vms)

    def shutdown_quietly(self, vm: QemuProcess) -> None:
        """Shut ``vm`` down; a QEMU that had to be killed is recorded, not raised."""
        try:
            vm.shutdown()
        except AbnormalShutdown as exc:
            self.r.abnormal_shutdowns.append(str(exc))
        except HarnessError as exc:  # teardown goes on with the other side
            self.r.abnormal_shutdowns.append(f"{vm.side}: shutdown failed: {exc}")
