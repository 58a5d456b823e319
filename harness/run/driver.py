"""Run one scenario on a real pair of QEMU processes, in phases.

:func:`run_scenario` resolves the case (:mod:`harness.run.setup`), then the
:class:`PairDriver` starts the source and boots the guest, hands the guest over to a
target (:mod:`harness.run.handover`: launch target, hand over, connect target, await
outcome), verifies what a completed transfer must show, checks that a refusing source
survived and retries, and always tears down every QEMU, whatever happens. Every wait
is inside the case's deadline. The result is a :class:`~harness.run.result.PairResult`
of plain values; judging it is :mod:`harness.run.verdict`'s job.

Faults are data (:class:`harness.cpr.faults.Fault`): the hand-over passes each named
stage through :meth:`PairDriver.fault_at`, which fires the scenario's fault there.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional

from harness.core import hugepages
from harness.core.cleanup import private_tmpdir, remove_tmpdir
from harness.core.errors import (AbnormalShutdown, HarnessError, QMPCommandFailed,
                                 QMPConnectionLost, WaitTimeout)
from harness.core.logs import essential, tail
from harness.core.observe import NULL_OBSERVER, Observer
from harness.core.wait import case_deadline, wait_until
from harness.cpr import backends
from harness.cpr.channels import Channel
from harness.cpr.faults import Fault
from harness.cpr.relay import Relay
from harness.evidence.collector import FULL, M_RESUMED, M_WINDOW_END, EvidencePlan, RamEvidence
from harness.evidence.memory import RamFd
from harness.guest import driver as guest_driver
from harness.guest.driver import WorkArea
from harness.qemu.process import EXECED, QemuProcess, describe_exit
from harness.run.config import RunConfig
from harness.run.plan import VALID_KINDS, render_vm_args, side_kinds
from harness.run.observe import Window
from harness.run.aftermath import Aftermath
from harness.run.result import Attempt, PairResult
from harness.run.setup import CaseSetup, prepare
from harness.scenario.model import Observed, Scenario

#: Migration states that end a wait for the outcome.
MIGRATION_ENDS = ("completed", "failed", "cancelled")
#: Run states a QEMU passes through on its way to its final one.
TRANSIENT_STATES = ("inmigrate", "finish-migrate")
#: A wrong run state held this long is where the QEMU stays.
STATE_SETTLED_S = 1.0


@dataclass(frozen=True)
class Hooks:
    """Interventions for tools and self-tests; conformance runs use none.

    ``before_verify(ramfd)``: after the target resumed, before the RAM pattern is
    verified through ``ramfd`` (the target's RAM file). ``before_stop_samplers(driver)``:
    when the guest runs on the target, before the pause samplers stop (the bench's
    precopy places marks in the target's sampler here). ``after_transfer(driver,
    attempt)``: after a transfer completed and was verified, before teardown (the bench
    takes its measurements here).
    """
    before_verify: Optional[Callable[[RamFd], None]] = None
    before_stop_samplers: Optional[Callable[["PairDriver"], None]] = None
    after_transfer: Optional[Callable[["PairDriver", Attempt], None]] = None


def run_scenario(sc: Scenario, cfg: RunConfig, artifacts_dir: str,
                 observer: Observer = NULL_OBSERVER, hooks: Hooks = Hooks(),
                 plan: EvidencePlan = FULL) -> PairResult:
    """Run ``sc`` on a fresh QEMU pair; logs and serial output go to ``artifacts_dir``.

    :raise Unsupported: the binaries or the host lack what the case needs (a skip).
    :raise HarnessError: the harness could not reach a verdict (a typed error).
    """
    with observer.step("probe QEMU binaries"):
        setup = prepare(sc, cfg)
    with PairDriver.session(setup, artifacts_dir, observer, hooks, plan) as d:
        d.run()
    return d.r


class PairDriver(Aftermath):
    """The two sides of one case and every phase between them."""

    def __init__(self, setup: CaseSetup, artifacts: str, workdir: str,
                 shm_dir: Optional[str], observer: Observer = NULL_OBSERVER,
                 hooks: Hooks = Hooks(), plan: EvidencePlan = FULL):
        from harness.run.handover import for_mode

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
        self.r.evidence = self.ev.data
        self.workdir, self.artifacts = workdir, artifacts
        self.epoch = time.monotonic()
        self.src: Optional[QemuProcess] = None
        self.dst: Optional[QemuProcess] = None
        self.old_dsts: List[QemuProcess] = []
        self.chans: List[Channel] = []
        self.relays: List[Relay] = []
        self._phase_stack: List[List[float]] = []
        #: When the first target was seen in its final run state (monotonic seconds).
        self.resumed_at: Optional[float] = None
        #: QEMUs whose death an observation window already reported.
        self.window_deaths: set = set()
        self._diagnosed: dict = {}
        #: When the target was first seen in its final run state, per attempt (ns).
        self.seen_running_ns: dict = {}
        self.handover = for_mode(sc.mode, self)

    @classmethod
    @contextmanager
    def session(cls, setup: CaseSetup, artifacts: str, observer: Observer = NULL_OBSERVER,
                hooks: Hooks = Hooks(), plan: EvidencePlan = FULL) -> Iterator["PairDriver"]:
        """A driver with its private 0700 dirs, torn down and removed whatever happens."""
        os.makedirs(artifacts, exist_ok=True)
        sc = setup.scenario
        kind = backends.BACKENDS[sc.backend]
        huge = hugepages.reserved(sc.ram_mb // 2) if kind.hugetlb else nullcontext()
        workdir = private_tmpdir()
        shm_dir = private_tmpdir("shm", base="/dev/shm") \
            if kind.qom_type == "memory-backend-file" else None
        try:
            with huge:
                d = cls(setup, artifacts, workdir, shm_dir, observer, hooks, plan)
                try:
                    yield d
                finally:
                    with d.phase("teardown", "tear down both sides"):
                        d.teardown()
        finally:
            remove_tmpdir(workdir)
            if shm_dir:
                remove_tmpdir(shm_dir)

    # -- the run --------------------------------------------------------------------

    def run(self) -> None:
        with case_deadline(self.cfg.case_timeout, f"case {self.sc.id}"):
            with self.phase("start-src", "start src and boot the guest"):
                self.start_src()
            self.transfer()

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

    def start_src(self) -> None:
        self.ev.spawn_sampler()  # its interpreter starts while the source boots
        self.src = self.launch("src", self.vm_args("src"))
        qmp = self.src.connect_qmp(self.t.start)
        self.mark("src_start")
        boot = self.t.guest * (4 if self.setup.guest.kind == "linux" else 1)
        self.g.wait_moving(self.src, boot)
        self.mark("src_guest_up")
        if self.sc.paused:
            qmp.cmd("stop")
        self.r.src_status_before = qmp.cmd("query-status")["status"]
        with self.phase("fill", "fill guest RAM with the seeded pattern"):
            self.ev.prepare(self.src.pid)
        with self.phase("sampler", "start the pause sampler on the guest's counter"):
            self.ev.start_sampler()
        if self.ev.samplers and self.plan.noise_s > 0:
            with self.phase("noise", "noise floor on the idle pair"):
                self.ev.noise_window()

    def transfer(self) -> None:
        """The first attempt, then (after a refusal) survival checks and the retry."""
        before = self.work_area(self.source)
        self.r.counter_before, self.r.boots_before = before.counter, before.boots
        first = Attempt("first")
        self.handover.prepare_source(first)
        if not first.settled:
            with self.phase("transfer", "transfer"):
                self.attempt(first, side_kinds(self.sc))
        self.r.record_first(first)
        if first.observed in (Observed.COMPLETED, Observed.SRC_CRASHED, Observed.SRC_LOST):
            return
        with self.phase("survival", "check the source survived the refusal"):
            self.check_src_survived()
        # A refusal scenario proves the source can still hand over; a positive one that
        # failed has its verdict already.
        if self.sc.retry and not self.sc.positive and \
                self.r.src_status_after in ("running", "paused"):
            impossible = self.setup.bins.no_valid_retry()
            if impossible:
                self.r.retry = {"tag": "retry", "observed": "", "not_applicable": impossible}
                return
            with self.phase("retry", "retry a valid transfer from the same source"):
                self.retry()

    def attempt(self, a: Attempt, kinds: tuple) -> None:
        """One hand-over to a new target; a completed one is verified."""
        self.handover.attempt(a, kinds)
        if a.observed is Observed.COMPLETED and not a.fault:
            self.mark(f"{a.tag}_completed")
            with self.phase("verify", "verify the transfer on the target"):
                self.after_completion(a)
            if self.hooks.after_transfer is not None:
                self.hooks.after_transfer(self, a)

    def retry(self) -> None:
        """After a refusal: a valid transfer from the same source must still work."""
        sq = self.source.qmp
        assert sq is not None
        if self.sc.capabilities:
            sq.try_cmd("migrate-set-capabilities", {"capabilities": [
                {"capability": c, "state": False} for c in self.sc.capabilities]})
        self.retire_dst()
        retry = Attempt("retry")
        self.attempt(retry, VALID_KINDS)
        self.r.retry = retry.to_dict()

    # -- sides ----------------------------------------------------------------------

    @property
    def source(self) -> QemuProcess:
        assert self.src is not None, "the source is not running"
        return self.src

    @property
    def target(self) -> QemuProcess:
        assert self.dst is not None, "no target"
        return self.dst

    def vm_args(self, side: str, sockdir: Optional[str] = None,
                machine: Optional[str] = None) -> List[str]:
        serial = os.path.join(self.artifacts, f"{side}.serial")
        self.r.artifacts[f"{side}.serial"] = serial
        return render_vm_args(self.sc, self.dialect, self.mem, self.bins.accel,
                              self.g.qemu_args(side, serial, sockdir or self.workdir), side,
                              machine=machine or self.bins.machine)

    def launch(self, side: str, args: List[str], tag: str = "first",
               pass_fds: tuple = (), sockdir: Optional[str] = None) -> QemuProcess:
        """Start one side's QEMU; its command line and log are recorded under its name."""
        name = side if tag == "first" else f"{side}-{tag}"
        binary = self.cfg.qemu_src if side == "src" else self.cfg.qemu_dst
        caps = self.bins.src if side == "src" else self.bins.dst
        # Where the binary has it, QEMU exits with its parent by itself (PDEATHSIG and
        # the janitor cover the rest).
        vm = QemuProcess(side, binary, args, sockdir or self.workdir, self.artifacts,
                         pass_fds=pass_fds, log_name=f"{name}.log", epoch=self.epoch,
                         exit_with_parent=caps.has_exit_with_parent)
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
        machine = self.bins.target_machine(retry=a.tag != "first")
        name = "dst" if a.tag == "first" else f"dst-{a.tag}"
        vm = QemuProcess("dst", self.cfg.qemu_dst, self.vm_args("dst", sockdir, machine)
                         + incoming, sockdir, self.artifacts, log_name=f"{name}.log",
                         epoch=self.epoch, exit_with_parent=self.bins.dst.has_exit_with_parent)
        self.r.cmdlines[name] = vm.cmdline
        return vm

    def retire_dst(self) -> None:
        """Stop the current target (a refused one) before the next attempt."""
        if self.dst is not None:
            self.shutdown_quietly(self.dst)
            self.old_dsts.append(self.dst)
            self.dst = None

    def work_area(self, vm: QemuProcess) -> WorkArea:
        """The guest's progress (counter, boot count), whatever the kind of guest."""
        return self.g.read(vm)

    # -- faults -----------------------------------------------------------------------

    def fault_for(self, a: Attempt) -> Optional[Fault]:
        """Faults hit the first attempt only."""
        return self.sc.fault if a.tag == "first" else None

    def after_fault(self, a: Attempt, f: Fault) -> None:
        """Observe the survivor after a fault: it must notice, in bounded time."""
        if f.victim == "dst":
            sq = self.source.qmp
            assert sq is not None
            try:
                status = self.wait_migration(sq)
            except WaitTimeout as exc:
                # The RFC's own comment: "will loop forever if the target dies". Name the
                # stage, cancel, and let the survival checks run.
                a.settle(Observed.HUNG, f"source still migrating after the target died "
                                        f"({f.name}): {exc}")
                sq.try_cmd("migrate_cancel")
                return
            a.query_migrate = sq.cmd("query-migrate")
            a.settle(Observed.FAILED if status != "completed" else Observed.COMPLETED,
                     f"{f.name}: source migration {status}: "
                     + str(a.query_migrate.get("error-desc", "")))
            return
        dst = self.target
        try:
            code = dst.wait_exit(self.t.exit)
        except WaitTimeout as exc:
            a.settle(Observed.HUNG, f"target still alive after its source died "
                                    f"({f.name}): {exc}")
            return
        dst.expect_exit()
        a.dst_exitcode = code
        a.src_status_after = "dead"
        a.settle(Observed.SRC_LOST, f"{f.name}: target {describe_exit(code)}; "
                                    + tail(dst.log_path, 5))

    # -- waits and outcomes ---------------------------------------------------------

    def wait_migration(self, qmp: Any) -> str:
        """The source's migration status once it ends (completed, failed, cancelled).

        :raise WaitTimeout: still going after the transfer timeout (names the target's
            state too).
        """
        def status() -> str:
            return qmp.cmd("query-migrate").get("status", "")

        try:
            return wait_until(status, what="migration to complete", timeout=self.t.transfer,
                              goal=lambda s: s in MIGRATION_ENDS, side="src", interval=0.01,
                              log_path=self.source.log_path).value
        except WaitTimeout as exc:
            dst = "target exited" if self.dst and not self.dst.is_running() else "target alive"
            exc.last_state = f"{exc.last_state} ({dst})"
            raise

    def wait_status(self, vm: QemuProcess, want: str, timeout: float) -> str:
        """``query-status`` once it says ``want``, or what it says once another state has
        held for :data:`STATE_SETTLED_S` (a QEMU out of migration does not leave it by
        itself), or after ``timeout``: a wrong state is a verdict, not an error."""
        assert vm.qmp is not None
        held = {"state": None, "since": 0.0}

        def settled_elsewhere(state: str) -> bool:
            now = time.monotonic()
            if state != held["state"]:
                held["state"], held["since"] = state, now
            return state not in TRANSIENT_STATES and now - held["since"] >= STATE_SETTLED_S

        try:
            return wait_until(lambda: vm.qmp.cmd("query-status")["status"],  # type: ignore
                              what=f"the {vm.side} run state {want!r}", timeout=timeout,
                              goal=lambda s: s == want, terminal=settled_elsewhere,
                              side=vm.side, interval=0.01).value
        except WaitTimeout:
            return vm.qmp.cmd("query-status")["status"]

    def dst_exited(self, a: Attempt) -> None:
        """The target exited on its own (a refusal): its log says why; the source sees
        its migration end and carries on."""
        dst = self.target
        dst.expect_exit()
        try:
            a.dst_exitcode = dst.wait_exit(self.t.exit)
        except WaitTimeout:
            a.dst_exitcode = None
        a.settle(Observed.DST_REFUSED, tail(dst.log_path, 10))
        sq = self.src.qmp if self.src is not None else None
        if sq is None:
            return
        # A source blocked writing to a channel whose reader died with the target (an
        # exec pipe that was never opened) is let go: its write then fails.
        self.handover.release_channels()
        try:
            wait_until(lambda: sq.cmd("query-migrate").get("status"),
                       what="the source's migration to end", timeout=self.t.settle,
                       goal=lambda s: s in (None, "none") + MIGRATION_ENDS, side="src")
            a.query_migrate = sq.cmd("query-migrate")
        except WaitTimeout:
            pass  # judged by the survival checks
        except QMPConnectionLost:
            self.crashed(a, self.source)  # the source died too: that is the outcome

    def crashed(self, a: Attempt, vm: QemuProcess) -> None:
        """A QEMU died under us (not on purpose): say which, how, and show its log."""
        try:
            code: Optional[int] = vm.wait_exit(self.t.exit)
        except WaitTimeout:
            code = None
        observed = Observed.SRC_CRASHED if vm.side == "src" else Observed.DST_CRASHED
        crash = self.diagnose(vm)
        a.settle(observed, f"{vm.side} QEMU {describe_exit(code)} during the transfer"
                           + (f"; {crash.describe()}" if crash else "")
                           + f"; log {vm.log_path}: " + essential(tail(vm.log_path, 5)))
        if vm.side == "src":
            a.src_status_after = "dead"

    # -- after the transfer -----------------------------------------------------------

    def after_completion(self, a: Attempt) -> None:
        """States, the guest moving on the target, then the observation window with the
        in-place RAM evidence gathered inside it, and the RAM verified at its end."""
        self.settle_states(a)
        self.ev.mark(M_RESUMED)
        self.ev.relax()
        window = Window(self, self.target, self.cfg.observe_s, self.sc.paused) \
            if self.plan.observe else None
        title = f"observe the target for {self.cfg.observe_s:g} s" if window else "evidence"
        with self.phase("observe", title):
            with self.unless_target_died():
                self.evidence_in_window(a)
            if window is not None:
                window.watch()
            else:
                time.sleep(0.05)  # a short tail so the sampler sees the counter move on
        self.ev.mark(M_WINDOW_END)
        if self.hooks.before_stop_samplers is not None:
            self.hooks.before_stop_samplers(self)
        self.ev.stop_samplers(a.query_migrate, self.cfg.pause_budget_ms(self.sc.max_pause_ms))
        self.r.artifacts.update(self.ev.files)
        if window is not None and window.record["death"] is not None:
            self.window_deaths.add(id(self.target))
        # Through the target's RAM fd; if the target died (even meanwhile), through the
        # source's: both map the one RAM file.
        for through in (vm for vm in (self.target, self.source) if vm.is_running()):
            with self.unless_target_died(), self.obs.step(
                    f"verify RAM intact at the window's end (through the "
                    f"{'target' if through is self.target else 'source'})"):
                self.ev.verify_after(self.source.pid, through.pid, self.hooks.before_verify)
                break  # verified; a target that died meanwhile: on to the source
        if window is not None:
            window.progress(a.counter_after)
            a.window = window.record

    @contextmanager
    def unless_target_died(self) -> Iterator[None]:
        """Reading a target that dies meanwhile (its /proc entries, its monitor) fails:
        that is no harness error, the observation window reports the death."""
        try:
            yield
        except (HarnessError, OSError) as exc:
            # A process being killed loses its /proc entries before it can be reaped:
            # give it a moment to be seen dead before calling this a harness error.
            try:
                self.target.wait_exit(2.0)
            except WaitTimeout:
                raise exc from None

    def evidence_in_window(self, a: Attempt) -> None:
        """What a completed transfer shows at once: no RAM in the stream, the target on
        the source's RAM file, the guest answering on its console."""
        self.ev.check_stream(a.query_migrate, self.r.extra.get("state_file_bytes"))
        if not self.target.is_running():
            return  # dead already: the window says so
        if self.target.pid == self.source.pid:  # cpr-exec: the same process, before/after
            self.ev.check_same_memory_across_exec(self.target.pid)
        else:
            self.ev.check_same_memory(self.source.pid, self.target.pid)
        extra = self.g.after_transfer(self.target, self.t.settle)
        if extra:
            with self.obs.step("check the guest on the target's console"):
                self.r.evidence["guest" if a.tag == "first" else f"guest_{a.tag}"] = extra

    def settle_states(self, a: Attempt) -> None:
        dst, src = self.target, self.source
        assert dst.qmp is not None and src.qmp is not None
        want = "paused" if self.sc.paused else "running"
        try:
            self._settle_target(a, dst, want)
        except QMPConnectionLost:
            # It died right after the switch-over: the observation window reports it.
            a.dst_status_after, a.counter_moved_on_dst = "dead", False
        a.src_status_after = src.qmp.cmd("query-status")["status"] if src.qmp.connected \
            else ("exec'd" if src.intent == EXECED else "quit")  # cpr-exec, cpr-reboot

    def _settle_target(self, a: Attempt, dst: QemuProcess, want: str) -> None:
        assert dst.qmp is not None
        a.dst_status_after = self.wait_status(dst, want, self.t.settle)
        self.seen_running_ns[a.tag] = time.monotonic_ns()
        self.resumed_at = self.resumed_at or time.monotonic()
        self.mark(f"{a.tag}_dst_{want}")
        self.r.evidence.setdefault("dst_query_migrate", dst.qmp.cmd("query-migrate"))
        if self.sc.paused or a.dst_status_after != want:
            # Not running (as asked, or wrongly): its counter is read, not waited for.
            wa = self.work_area(dst)
            time.sleep(0.2)
            again = self.work_area(dst)
            a.counter_moved_on_dst = again.counter != wa.counter
            wa = again
        else:
            # Moving on the target, after the switch-over: a value above the one read
            # before the transfer is not enough (the source ran on until it stopped).
            try:
                wa = self.g.wait_moving(dst, self.t.settle, above=self.r.counter_before)
                a.counter_moved_on_dst = True
            except WaitTimeout:
                a.counter_moved_on_dst = False
                wa = self.work_area(dst)
        a.counter_after, a.boots_after = wa.counter, wa.boots

    def check_src_survived(self) -> None:
        """After a refusal the source must still run its guest, in its prior state."""
        src = self.source
        want = "paused" if self.sc.paused else "running"
        self.r.src_status_after = self.wait_status(src, want, self.t.settle)
        self.ev.verify_after(src.pid, None)
        if self.r.src_status_after == "running":
            try:
                wa = self.g.wait_moving(src, self.t.settle, above=self.r.counter_before)
                self.r.src_counter_after_refusal = wa.counter
            except WaitTimeout:
                self.r.src_counter_after_refusal = None

    # -- teardown -------------------------------------------------------------------

    def teardown(self) -> None:
        """Stop every QEMU; each teardown runs even if an earlier one raises."""
        self.ev.close()
        for relay in self.relays:
            relay.close()
        vms = [("dst", self.dst)] + [(f"dst-{i}", v) for i, v in enumerate(self.old_dsts)] \
            + [("src", self.src)]
        self.record_deaths([vm for _, vm in vms if vm is not None])
        try:
            for _name, vm in vms:
                if vm is not None:
                    self.shutdown_quietly(vm)
        finally:
            for c in self.chans:
                c.close()
            self.write_transcripts([vm for _, vm in vms if vm is not None])

    def shutdown_quietly(self, vm: QemuProcess) -> None:
        """Shut ``vm`` down; a QEMU that had to be killed is recorded, not raised."""
        try:
            vm.shutdown()
        except AbnormalShutdown as exc:
            self.r.abnormal_shutdowns.append(str(exc))
        except HarnessError as exc:  # teardown goes on with the other side
            self.r.abnormal_shutdowns.append(f"{vm.side}: shutdown failed: {exc}")

def source_mode_readback(qmp: Any, mode: str) -> None:
    """Set the migration mode and read it back. :raise HarnessError: it did not stick."""
    qmp.cmd("migrate-set-parameters", {"mode": mode})
    got = qmp.cmd("query-migrate-parameters").get("mode")
    if got != mode:
        raise HarnessError(f"src: mode reads back as {got!r} after setting {mode}")


def refused(a: Attempt, qmp: Any, exc: QMPCommandFailed) -> None:
    """The source refused: its QMP ``desc`` is the message."""
    a.settle(Observed.SRC_REFUSED, exc.desc)
    try:
        a.query_migrate = qmp.cmd("query-migrate")
    except (QMPConnectionLost, WaitTimeout):
        pass
