"""Run one scenario on a real pair of QEMU processes, in phases.

:func:`run_scenario` resolves the case (:mod:`harness.run.setup`), then the
:class:`PairDriver` starts the source and boots the guest, hands the guest over to a
target (:mod:`harness.run.handover`: launch target, hand over, connect target, await
outcome), verifies what a completed transfer must show (its states, the observation
window on both QEMUs, the evidence), checks that a refusing source survived and
retries, and always tears down every QEMU, whatever happens (:mod:`harness.run.pair`).
Every wait is inside the case's deadline; a wait a QEMU runs out is that QEMU's
failure (:func:`harness.run.outcomes.qemu_waits`). The result is a
:class:`~harness.run.result.PairResult` of frozen records; judging it is
:mod:`harness.run.verdict`'s job.

Faults are data (:class:`harness.cpr.faults.Fault`): the hand-over fires the
scenario's fault at its stage.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext
from typing import Iterator, List, Optional, Tuple

from harness.core.errors import HarnessError, QMPConnectionLost, WaitTimeout
from harness.core.observe import NULL_OBSERVER, Observer
from harness.core.wait import case_deadline, sleep
from harness.evidence.collector import FULL, EvidencePlan
from harness.evidence.console import heartbeat_format
from harness.evidence.pause import M_RESUMED, M_WINDOW_END
from harness.qemu.process import QemuProcess
from harness.qemu.states import Intent, RunState
from harness.run import outcomes
from harness.run.attempt import Attempt
from harness.run.checks import FAMILIES, ConcludeContext, PrepareContext, WatchContext
from harness.run.handover import for_mode
from harness.run.observe import (Expectation, Window, event_time, source_expectation,
                                 target_expectation)
from harness.run.pair import Hooks, Pair
from harness.run.plan import VALID_KINDS, side_kinds
from harness.run.records import Death, Role, Survival
from harness.run.result import PairResult
from harness.run.setup import CaseSetup, prepare
from harness.scenario.model import Observed, Scenario
from harness.run.config import RunConfig

__all__ = ["run_scenario", "PairDriver", "Hooks"]

#: A wall clock that moved this much against the monotonic one between the migrate and
#: the target seen running was stepped: QEMU's event times cannot be placed.
CLOCK_STEP_NS = 2_000_000


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


class PairDriver(Pair):
    """The phases of one case on its pair."""

    def __init__(self, setup: CaseSetup, artifacts: str, workdir: str,
                 shm_dir: Optional[str], observer: Observer = NULL_OBSERVER,
                 hooks: Hooks = Hooks(), plan: EvidencePlan = FULL):
        super().__init__(setup, artifacts, workdir, shm_dir, observer, hooks, plan)
        #: When the target was first seen in its final run state, per attempt (ns).
        self.seen_running_ns: dict = {}
        #: Monotonic minus wall-clock ns, read around the first switch-over.
        self.clock_offsets: List[int] = []
        self.handover = for_mode(self.sc.mode, self)
        self.ev.on_transfer = self.clock_offset

    # -- the run --------------------------------------------------------------------

    def run(self) -> None:
        with case_deadline(self.cfg.case_timeout, f"case {self.sc.id}"):
            t = time.monotonic()
            self.set_up_cases()
            if self.cases:  # a phase only for a case whose families set something up
                self.r.phases["set-up"] = round(time.monotonic() - t, 4)
            with self.phase("start-src", "start src and boot the guest"):
                self.start_src()
            self.transfer()
            with self.phase("conclude", "end what the check families measured through "
                                        "the case") if self.cases else nullcontext():
                self.conclude()

    def conclude(self) -> None:
        """Each family's end of the case, on the QEMU that runs the guest now: the last
        target if the last attempt completed, else the source if it carried on."""
        last = self.r.attempts[-1] if self.r.attempts else None
        completed = last is not None and last.observed is Observed.COMPLETED
        survival = self.r.survival
        running: Optional[QemuProcess] = None
        if completed:
            running = self.dst if self.dst is not None and self.dst.is_running() else None
        elif survival is not None and survival.src_state is RunState.RUNNING:
            running = self.src if self.src is not None and self.src.is_running() else None
        first = self.r.first
        switch = self.switch_ns() if completed and self.dst is not None else None
        for fam in FAMILIES:
            rec = fam.conclude(ConcludeContext(
                self.sc, self.src, self.dst, running, self.g, self.artifacts,
                first is not None and first.observed is Observed.COMPLETED, switch,
                self.cases.get(fam.name)))
            if rec is not None:
                self.r.devices[fam.name] = rec

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
        self.r.src_state_before = RunState(qmp.cmd("query-status")["status"])
        with self.phase("fill", "fill guest RAM with the seeded pattern"):
            self.ev.prepare(self.src.pid)
        self.r.ram = self.ev.setup
        with self.phase("sampler", "start the pause sampler on the guest's counter"):
            self.ev.start_sampler()
        if self.ev.samplers and self.plan.baseline_s > 0:
            with self.phase("baseline", f"the guest's baseline for "
                                        f"{self.plan.baseline_s:g} s before the transfer"):
                self.ev.baseline(self.watch_baseline if self.plan.observe else None)

    def watch_baseline(self, seconds: float) -> None:
        """What the observation window does, on the source before the transfer: the
        guest's baseline is taken under the same harness activity."""
        w = Window([(self.source, Expectation("baseline", RunState.RUNNING, ()))], seconds,
                   self.window_death, self.g, self.t.settle, self.artifacts)
        w.watch()

    def transfer(self) -> None:
        """The first attempt, then (after a refusal) survival checks and the retry."""
        before = self.work_area(self.source)
        self.r.counter_before, self.r.boots_before = before.counter, before.boots
        first = Attempt(Role.FIRST, counter_reference=before.counter)
        with outcomes.qemu_waits(self, first):
            self.handover.prepare_source(first)
        if not first.settled:
            with self.phase("transfer", "transfer"):
                self.attempt(first, side_kinds(self.sc))
        self.keep(first)
        if not outcomes.source_must_carry_on(first):
            return
        with self.phase("survival", "check the source survived the refusal"):
            self.check_src_survived()
        # A refusal scenario proves the source can still hand over; a positive one that
        # failed has its verdict already.
        survival = self.r.survival
        if self.sc.retry and not self.sc.positive and survival is not None and \
                survival.src_state in (RunState.RUNNING, RunState.PAUSED):
            impossible = self.setup.bins.no_valid_retry()
            if impossible:
                self.keep(Attempt(Role.RETRY, not_applicable=impossible))
                return
            with self.phase("retry", "retry a valid transfer from the same source"):
                self.retry()

    def keep(self, a: Attempt) -> None:
        """Freeze an attempt into the result."""
        self.r.attempts.append(a.record(self.ev.setup.applicable,
                                        self.ev.setup.pattern_applicable))

    def attempt(self, a: Attempt, kinds: tuple) -> None:
        """One hand-over to a new target; a completed one is verified."""
        fmt = heartbeat_format(self.setup.guest)
        if fmt is not None and self.ev.samplers:
            # The consoles' heartbeats stamped on the pause sampler's clock, from now.
            self.ev.tail_consoles(fmt, self.serial_of(self.source) or "",
                                  os.path.join(self.artifacts,
                                               f"{self.name_of('dst', a.tag)}.serial"))
        prepared = {fam.name: fam.prepare(PrepareContext(
            self.sc, self.source, self.g, self.artifacts, self.shared_dir, a.tag,
            self.name_of("dst", a.tag), self.ports, self.cases.get(fam.name)))
            for fam in FAMILIES}
        try:
            with outcomes.qemu_waits(self, a):
                self.handover.attempt(a, kinds)
            if a.observed is Observed.COMPLETED and not a.fault:
                self.mark(f"{a.tag}_completed")
                with self.phase("verify", "verify the transfer on the target"):
                    self.after_completion(a, prepared)
                if self.hooks.after_transfer is not None:
                    self.hooks.after_transfer(self, a)
        finally:
            for p in prepared.values():
                if hasattr(p, "close"):
                    p.close()

    def retry(self) -> None:
        """After a refusal: a valid transfer from the same source must still work."""
        sq = self.source.qmp
        assert sq is not None
        if self.sc.capabilities:
            sq.try_cmd("migrate-set-capabilities", {"capabilities": [
                {"capability": c, "state": False} for c in self.sc.capabilities]})
        self.retire_dst()
        survival = self.r.survival
        retry = Attempt(Role.RETRY, counter_reference=survival.counter_after
                        if survival is not None else None)
        self.attempt(retry, VALID_KINDS)
        self.keep(retry)

    # -- after the transfer -----------------------------------------------------------

    def after_completion(self, a: Attempt, prepared: Optional[dict] = None) -> None:
        """States, the guest moving on the target, then the observation window on both
        QEMUs with the in-place RAM evidence gathered inside it, and the RAM verified at
        its end."""
        self.settle_states(a)
        self.ev.mark(M_RESUMED)
        self.ev.relax()
        window = self.open_window(a, prepared or {}) \
            if self.plan.observe and a.hang is None else None
        title = f"observe the target for {self.cfg.observe_s:g} s" if window else "evidence"
        with self.phase("observe", title):
            with self.unless_target_died():
                self.evidence_in_window(a)
            if window is not None:
                window.watch()
            else:
                sleep(0.05)  # a short tail so the sampler sees the counter move on
        self.ev.mark(M_WINDOW_END)
        if self.hooks.before_stop_samplers is not None:
            self.hooks.before_stop_samplers(self)
        a.pause = self.ev.stop_samplers(a.query_migrate,
                                        self.cfg.budgets(self.bins.accel, self.sc.max_pause_ms),
                                        self.switch_ns())
        self.r.artifacts.update(self.ev.files)
        a.pattern = self.verify_ram()
        if window is not None:
            a.window = window.finish(a.counter_after)

    def switch_ns(self) -> Optional[Tuple[int, int]]:
        """When QEMU says the source stopped for the switch-over (its last STOP) and the
        target resumed the guest (its first RESUME), on the monotonic clock; None when
        either event is missing."""
        def events(vm: Optional[QemuProcess], name: str) -> List[float]:
            qmp = vm.qmp if vm is not None else None
            return [event_time(e) for e in (qmp.all_events if qmp is not None else [])
                    if e.get("event") == name]

        resumes = events(self.dst, "RESUME")
        stops = [t for t in events(self.src, "STOP") if resumes and t <= resumes[0]]
        offsets = self.clock_offsets
        # QEMU stamps events on the wall clock, which a host may step: convert with the
        # offsets read just before the migrate and when the target was seen running;
        # if the wall clock stepped in between, the events cannot be placed.
        if not resumes or not stops or len(offsets) < 2 or \
                abs(offsets[0] - offsets[-1]) > CLOCK_STEP_NS:
            return None
        return int(stops[-1] * 1e9) + offsets[0], int(resumes[0] * 1e9) + offsets[-1]

    def clock_offset(self) -> None:
        """Note monotonic minus wall-clock time now (see :meth:`switch_ns`)."""
        self.clock_offsets.append(time.monotonic_ns() - time.time_ns())

    def verify_ram(self):
        """The pattern through the target's RAM fd; if the target died (even meanwhile),
        through the source's: both map the one RAM file."""
        for through in (vm for vm in (self.target, self.source) if vm.is_running()):
            with self.unless_target_died(), self.obs.step(
                    f"verify RAM intact at the window's end (through the "
                    f"{'target' if through is self.target else 'source'})"):
                return self.ev.verify_after(self.source.pid, through.pid,
                                            self.hooks.before_verify)
        return None

    def open_window(self, a: Attempt, prepared: dict) -> Window:
        """The window on this attempt's target and its source (the old QEMU), with the
        registered check families' watchers."""
        watches: List[Tuple[QemuProcess, Expectation]] = [
            (self.target, target_expectation(self.sc.paused))]
        if self.sc.mode == "cpr-transfer":
            watches.append((self.source, source_expectation(self.serial_of(self.source))))
        # The target's console by the name it was launched under: a cpr-exec target is
        # the source's process exec'd in place (same QemuProcess, named src), its console
        # the dst file its new command line names.
        serial = {"src": self.serial_of(self.source) or "",
                  "dst": self.r.artifacts.get(f"{self.name_of('dst', a.tag)}.serial")
                  or self.serial_of(self.target) or ""}
        devices = {}
        for fam in FAMILIES:
            w = fam.watcher(WatchContext(
                self.sc, self.source, self.target, self.g, self.artifacts,
                self.seen_running_ns.get(a.tag, time.monotonic_ns()), serial,
                self.shared_dir, prepared.get(fam.name), self.ports,
                self.cases.get(fam.name)))
            if w is not None:
                devices[fam.name] = w
        return Window(watches, self.cfg.observe_s, self.window_death, self.g,
                      self.t.settle, self.artifacts, devices)

    def window_death(self, vm: QemuProcess) -> Death:
        """A QEMU the window saw die: reaped, recorded once (not again at teardown)."""
        try:
            vm.wait_exit(2.0)
        except WaitTimeout:
            pass
        self.window_deaths.add(id(vm))
        return self.death_of(vm, "seen in the observation window")

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
        a.stream = self.ev.check_stream(a.query_migrate, self.r.extra.get("state_file_bytes"))
        if not self.target.is_running():
            return  # dead already: the window says so
        if self.target.pid == self.source.pid:  # cpr-exec: the same process, before/after
            a.same_memory = self.ev.check_same_memory_across_exec(self.target.pid)
        else:
            a.same_memory = self.ev.check_same_memory(self.source.pid, self.target.pid)
        console = self.g.after_transfer(self.target, self.t.settle)
        if console is not None:
            with self.obs.step("check the guest on the target's console"):
                a.console = console

    def settle_states(self, a: Attempt) -> None:
        dst, src = self.target, self.source
        assert dst.qmp is not None and src.qmp is not None
        want = RunState.PAUSED if self.sc.paused else RunState.RUNNING
        try:
            self._settle_target(a, dst, want)
        except QMPConnectionLost:
            # It died right after the switch-over: the observation window reports it.
            a.dst_state, a.counter_moved = RunState.DEAD, False
        except WaitTimeout as exc:
            # Alive, not answering: it hung once it had the guest.
            if not dst.is_running():
                a.dst_state, a.counter_moved = RunState.DEAD, False
            else:
                outcomes.diagnose_into(self, a, dst, exc)
                a.dst_state, a.counter_moved = RunState.NO_ANSWER, False
        a.src_state = RunState(src.qmp.cmd("query-status")["status"]) if src.qmp.connected \
            else (RunState.EXECED if src.intent is Intent.EXECED else RunState.QUIT)

    def _settle_target(self, a: Attempt, dst: QemuProcess, want: RunState) -> None:
        assert dst.qmp is not None
        a.dst_state = outcomes.wait_status(dst, want, self.t.settle)
        self.seen_running_ns[a.tag] = time.monotonic_ns()
        self.clock_offset()
        self.resumed_at = self.resumed_at or time.monotonic()
        self.mark(f"{a.tag}_dst_{want}")
        a.dst_query_migrate = dst.qmp.cmd("query-migrate")
        if self.sc.paused or a.dst_state != want:
            # Not running (as asked, or wrongly): its counter is read, not waited for.
            wa = self.work_area(dst)
            time.sleep(0.2)
            again = self.work_area(dst)
            a.counter_moved = again.counter != wa.counter
            wa = again
        else:
            # Moving on the target, after the switch-over: a value above the one read
            # before the transfer is not enough (the source ran on until it stopped).
            try:
                wa = self.g.wait_moving(dst, self.t.settle, above=self.r.counter_before)
                a.counter_moved = True
            except WaitTimeout:
                a.counter_moved = False
                wa = self.work_area(dst)
        a.counter_after, a.boots_after = wa.counter, wa.boots

    def check_src_survived(self) -> None:
        """After a refusal the source must still run its guest, in its prior state; one
        that stopped answering hung (diagnosed, never a harness error)."""
        src = self.source
        want = RunState.PAUSED if self.sc.paused else RunState.RUNNING
        try:
            state = outcomes.wait_status(src, want, self.t.settle)
        except WaitTimeout as exc:
            if not src.is_running():
                raise
            probe = Attempt(Role.FIRST)
            outcomes.diagnose_into(self, probe, src, exc)
            self.r.survival = Survival(RunState.NO_ANSWER, None, None, probe.hang)
            return
        pattern = self.ev.verify_after(src.pid, None)
        counter = None
        if state is RunState.RUNNING:
            try:
                counter = self.g.wait_moving(src, self.t.settle,
                                             above=self.r.counter_before).counter
            except WaitTimeout:
                counter = None
        self.r.survival = Survival(state, counter, pattern)
