"""How the guest is handed over to a new QEMU, one class per migration mode.

Each runs one :class:`~harness.run.result.Attempt` in phases and settles it with what
it observed; the driver (:mod:`harness.run.driver`) verifies a completed one.

* :class:`CprTransfer`: launch the target (two ``-incoming``), wait until it listens on
  its cpr channel, hand over (``getfd``, ``migrate`` with a main and a cpr channel),
  connect to the target (its monitor exists only once it has read CPR state;
  ``migrate-incoming`` for ``-incoming defer``), await the outcome. Faults fire at
  their stage.
* :class:`CprExec`: the source exec's the new QEMU in place and it loads the state file.
* :class:`Precopy` and :class:`CprReboot`: what the bench compares cpr-transfer with.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional

from harness.core.errors import QMPCommandFailed, QMPConnectionLost, VMLaunchFailure, WaitTimeout
from harness.core.wait import wait_until
from harness.cpr import channels
from harness.cpr.channels import Channel
from harness.cpr.faults import BAD_DEVICE_ARGS, Action, Fault, Stage
from harness.cpr.relay import Relay
from harness.evidence.collector import M_TRANSFER
from harness.evidence.memory import find_ram_fd
from harness.qemu.states import RunState
from harness.run import outcomes
from harness.run.attempt import Attempt
from harness.run.outcomes import refused, source_mode_readback
from harness.run.pair import Pair
from harness.run.plan import render_channels
from harness.scenario.model import Observed

#: A target whose cpr channel cannot be watched gets this long to refuse (exit).
REFUSE_GRACE_S = 2.0


@dataclass
class Links:
    """The channels of one attempt, as each side sees them, and where it stands."""
    src_main: Channel
    dst_main: Channel
    src_cpr: Channel
    dst_cpr: Channel
    relay: Optional[Relay] = None
    #: The source's ``migrate`` was issued.
    migrated: bool = False
    #: The fault fired in this attempt (its survivor is watched once migrate is issued).
    fired: Optional[Fault] = None


class HandOver:
    mode = ""

    def __init__(self, d: Pair):
        self.d = d

    def prepare_source(self, a: Attempt) -> None:
        """Source-side set-up before the first attempt (may settle it: a refusal): the
        scenario's migration parameters."""
        if self.d.sc.parameters:
            self.d.source.qmp.cmd("migrate-set-parameters", dict(self.d.sc.parameters))

    def attempt(self, a: Attempt, kinds: tuple) -> None:
        raise NotImplementedError

    def _attempt_dir(self, a: Attempt) -> str:
        wd = os.path.join(self.d.workdir, a.tag)
        os.makedirs(wd, mode=0o700)
        return wd


class CprTransfer(HandOver):
    mode = "cpr-transfer"

    def prepare_source(self, a: Attempt) -> None:
        sq = self.d.source.qmp
        source_mode_readback(sq, "cpr-transfer")
        super().prepare_source(a)
        caps = self.d.sc.capabilities
        if caps:
            try:
                sq.cmd("migrate-set-capabilities", {"capabilities": [
                    {"capability": c, "state": True} for c in caps]})
            except QMPCommandFailed as exc:
                refused(a, sq, exc)

    def attempt(self, a: Attempt, kinds: tuple) -> None:
        links = self.links(a, kinds)
        for step in (self.launch_dst, self.hand_over, self.connect_dst, self.mid_stream,
                     self.await_outcome):
            step(a, links)
            if a.settled:
                return

    def links(self, a: Attempt, kinds: tuple) -> Links:
        """Render the attempt's channels; a mid-stream fault puts our relay between."""
        d = self.d
        wd = self._attempt_dir(a)
        sm, dm, scpr, dc = render_channels(*kinds, wd)
        relay = None
        fault = d.fault_for(a)
        if fault is not None and fault.needs_relay:
            # The source talks to our relay, which holds the stream after a few KiB.
            assert dm.kind == "unix", "mid-stream faults relay a unix main channel"
            relay_path = os.path.join(wd, "relay.sock")
            relay = Relay(relay_path, dm.src_addr["path"])  # type: ignore[index]
            d.relays.append(relay)
            sm = Channel("main", "unix", {"transport": "socket", "type": "unix",
                                          "path": relay_path}, None)
        d.chans += list({id(c): c for c in (dm, sm, dc, scpr)}.values())
        d.in_flight = [sm, dm]
        return Links(sm, dm, scpr, dc, relay)

    # -- phases -----------------------------------------------------------------------

    def launch_dst(self, a: Attempt, ln: Links) -> None:
        """Launch the target; a target that exits before it is ready refused."""
        d = self.d
        fault = d.fault_for(a)
        extra = list(BAD_DEVICE_ARGS) if fault is not None and \
            fault.action is Action.BAD_ARGUMENT else []
        incoming = d.dialect.target_incoming(ln.dst_main, ln.dst_cpr, self.defer(a))
        sockdir = os.path.join(d.workdir, a.tag)
        machine = d.bins.target_machine(retry=not a.first)
        with d.phase("launch-dst", f"start dst ({a.tag})"):
            dst = d.launch("dst", d.vm_args("dst", sockdir, machine) + extra + incoming, a.tag,
                           ln.dst_main.dst_pass_fds + ln.dst_cpr.dst_pass_fds, sockdir)
            for c in (ln.dst_main, ln.dst_cpr):  # our copies of fds handed over now live there
                if c.dst_pass_fds and not c.src_getfd:
                    c.close()
            try:
                self._wait_ready(ln.dst_cpr, dst)
            except VMLaunchFailure:
                outcomes.dst_exited(d, a)
                return
        d.mark(f"{a.tag}_dst_listening")
        self.fault(Stage.LISTENING, a, ln)

    def defer(self, a: Attempt) -> bool:
        """``-incoming defer`` is the first attempt's (retries and hops are immediate)."""
        return a.first and self.d.sc.incoming == "defer"

    def _wait_ready(self, cpr: Channel, dst) -> None:
        alive = lambda: dst.check_alive("before it was ready for the transfer")  # noqa: E731
        if cpr.listen_path is not None or cpr.listen_port is not None:
            cpr.wait_listening(self.d.t.listen, alive)
            return
        # Nothing to watch for (a cpr channel the target should refuse, or none): give a
        # refusing target the time to exit; one that stays is handed over to as it is.
        try:
            wait_until(alive, what="a refusing target to exit", timeout=REFUSE_GRACE_S,
                       goal=lambda _: False, side="dst")
        except WaitTimeout:
            pass

    def fault(self, stage: Stage, a: Attempt, ln: Links) -> None:
        """Fire the scenario's fault if it belongs to ``stage``; once the source's
        ``migrate`` is out, the survivor is watched and settles the attempt."""
        d = self.d
        f = d.fault_for(a)
        if f is None or f.stage is not stage or f.action is not Action.KILL:
            return
        victim = d.source if f.victim == "src" else d.target
        with d.obs.step(f"fault: {f.title}"):
            if ln.relay is not None:
                ln.relay.wait_held(d.t.transfer)
            victim.kill()
            if ln.relay is not None:
                ln.relay.close()
        ln.fired = f
        a.fault = f.name
        if ln.migrated:
            outcomes.after_fault(d, a, f)

    def hand_over(self, a: Attempt, ln: Links) -> None:
        """The source's fds, cpr preparation and ``migrate``; a QMP error is a refusal."""
        d = self.d
        sq = d.source.qmp
        try:
            for name, fd in {**ln.src_main.src_getfd, **ln.src_cpr.src_getfd}.items():
                sq.send_fd(name, fd)
            for c in d.dialect.source_prepare(ln.src_cpr):
                sq.cmd(c.name, c.args)
            migrate = d.dialect.source_migrate(ln.src_main, ln.src_cpr)
            d.ev.mark(M_TRANSFER)
            sq.cmd(migrate.name, migrate.args)
        except QMPCommandFailed as exc:
            refused(a, sq, exc)
            return
        d.mark(f"{a.tag}_migrate_issued")
        ln.migrated = True
        if ln.fired is not None:
            outcomes.after_fault(d, a, ln.fired)

    def connect_dst(self, a: Attempt, ln: Links) -> None:
        """The target's monitor (up once it read CPR state); defer: migrate-incoming."""
        d = self.d
        try:
            dq = d.target.connect_qmp(d.t.start)
        except VMLaunchFailure:
            outcomes.dst_exited(d, a)
            return
        d.mark(f"{a.tag}_dst_monitor_up")
        self.fault(Stage.CPR_READ, a, ln)
        if a.settled:
            return
        if self.defer(a):
            try:
                c = d.dialect.target_migrate_incoming(ln.dst_main)
                dq.cmd(c.name, c.args)
            except QMPCommandFailed as exc:
                a.query_migrate = d.source.qmp.cmd("query-migrate")
                a.settle(Observed.DST_REFUSED, exc.desc)

    def mid_stream(self, a: Attempt, ln: Links) -> None:
        self.fault(Stage.MID_STREAM, a, ln)

    def await_outcome(self, a: Attempt, ln: Links) -> None:
        """Completed, failed, or a side that died; each named."""
        d = self.d
        sq = d.source.qmp
        try:
            status = outcomes.wait_migration(d, sq)
            a.query_migrate = sq.cmd("query-migrate")
        except QMPConnectionLost:
            outcomes.crashed(d, a, d.source)
            return
        if not d.target.is_running():
            # Exited on its own: a refusal, even where the source (without a return
            # path) already called the migration completed.
            outcomes.dst_exited(d, a)
            return
        if status == "completed":
            a.settle(Observed.COMPLETED)
            return
        try:
            a.dst_state = RunState(d.target.qmp.cmd("query-status")["status"])
        except QMPConnectionLost:  # it exited right after the failed load
            outcomes.dst_exited(d, a)
            return
        a.settle(Observed.FAILED, a.query_migrate.get("error-desc", status))


class Precopy(HandOver):
    """Normal precopy migration to a second local QEMU with its own memory: the main
    stream carries all RAM. The bench's comparison (it sets ``max-bandwidth`` through the
    scenario's parameters); ``RamEvidence`` samples both files."""
    mode = "precopy"

    def attempt(self, a: Attempt, kinds: tuple) -> None:
        d = self.d
        main = channels.main_channel("unix", self._attempt_dir(a))
        main.listen_path = main.src_addr["path"]  # type: ignore[index]
        d.chans.append(main)
        with d.phase("launch-dst", "start dst (precopy target)"):
            dst = d.launch("dst", d.vm_args("dst") + ["-incoming", str(main.dst_incoming)])
            dst.connect_qmp(d.t.start)
            main.wait_listening(d.t.listen,
                                lambda: dst.check_alive("before it listened on the main channel"))
        d.mark(f"{a.tag}_dst_listening")
        if d.ev.samplers:
            # The target's own memory: a second sampler (the pause spans both files).
            d.ev.start_sampler("dst", find_ram_fd(dst.pid, d.ev.size, d.ev.hint).path)
        sq = d.source.qmp
        d.r.extra["max_bandwidth"] = sq.cmd("query-migrate-parameters").get("max-bandwidth")
        d.ev.mark(M_TRANSFER)
        sq.cmd("migrate", {"channels": [main.qapi()]})
        d.mark(f"{a.tag}_migrate_issued")
        _await_completed(d, a)


class CprReboot(HandOver):
    """cpr-reboot to a file with ``x-ignore-shared``: one ``share=on`` file on /dev/shm;
    the source quits, then the target starts and loads the file."""
    mode = "cpr-reboot"
    SETUP = (("migrate-set-parameters", {"mode": "cpr-reboot"}),
             ("migrate-set-capabilities", {"capabilities": [
                 {"capability": "x-ignore-shared", "state": True}]}))

    def attempt(self, a: Attempt, kinds: tuple) -> None:
        d = self.d
        state = os.path.join(self._attempt_dir(a), "vm.state")
        src = d.source
        for name, args in self.SETUP:
            src.qmp.cmd(name, args)
        d.ev.mark(M_TRANSFER)
        src.qmp.cmd("migrate", {"uri": f"file:{state}"})
        d.mark(f"{a.tag}_migrate_issued")
        status = outcomes.wait_migration(d, src.qmp)
        a.query_migrate = src.qmp.cmd("query-migrate")
        if status != "completed":
            a.settle(Observed.FAILED, a.query_migrate.get("error-desc", status))
            return
        d.r.extra["state_file_bytes"] = os.path.getsize(state)
        with d.phase("src-quit", "quit the source"):
            d.shutdown_quietly(src)
        with d.phase("launch-dst", "start dst (-incoming defer)"):
            dst = d.launch("dst", d.vm_args("dst") + ["-incoming", "defer"])
            dq = dst.connect_qmp(d.t.start)
        d.mark(f"{a.tag}_dst_monitor_up")
        for name, args in self.SETUP:
            dq.cmd(name, args)
        dq.cmd("migrate-incoming", {"uri": f"file:{state}"})
        a.settle(Observed.COMPLETED)


class CprExec(HandOver):
    """cpr-exec: the source stops the guest, writes its state to a file and exec's the
    new QEMU in place (same PID), which maps the same memory and loads the state: from
    ``-incoming file:STATE`` at once, or from ``migrate-incoming`` (``-incoming defer``).
    Memory file descriptors are preserved across the exec; the evidence is the same RAM
    file (inode) before and after, and a state file far smaller than the RAM."""
    mode = "cpr-exec"

    def prepare_source(self, a: Attempt) -> None:
        sq = self.d.source.qmp
        source_mode_readback(sq, "cpr-exec")
        super().prepare_source(a)
        if self.d.sc.capabilities:
            try:
                sq.cmd("migrate-set-capabilities", {"capabilities": [
                    {"capability": c, "state": True} for c in self.d.sc.capabilities]})
            except QMPCommandFailed as exc:
                refused(a, sq, exc)

    def attempt(self, a: Attempt, kinds: tuple) -> None:
        d = self.d
        wd = self._attempt_dir(a)
        state = os.path.join(wd, "vm.state")
        defer = a.first and d.sc.incoming == "defer"
        dst = d.prepare_exec_target(a, wd, ["-incoming", "defer" if defer else f"file:{state}"])
        src = d.source
        try:
            src.qmp.cmd("migrate-set-parameters", {"cpr-exec-command": dst.cmdline})
            d.ev.mark(M_TRANSFER)
            src.qmp.cmd("migrate", {"channels": [{"channel-type": "main", "addr": {
                "transport": "file", "filename": state, "offset": 0}}]})
        except QMPCommandFailed as exc:
            refused(a, src.qmp, exc)
            return
        d.mark(f"{a.tag}_migrate_issued")
        if not self._exec_done(a, src):
            return
        dst.adopt(src)
        d.dst = dst
        with d.phase("launch-dst", "connect to the QEMU the source exec'd into"):
            try:
                dq = dst.connect_qmp(d.t.start)
            except VMLaunchFailure:
                outcomes.dst_exited(d, a)
                return
        if defer:
            dq.cmd("migrate-incoming", {"channels": [{"channel-type": "main", "addr": {
                "transport": "file", "filename": state, "offset": 0}}]})
        d.r.extra["state_file_bytes"] = os.path.getsize(state) if os.path.exists(state) else None
        status = wait_until(lambda: dq.cmd("query-migrate").get("status", ""),
                            what="the exec'd QEMU's incoming migration", timeout=d.t.transfer,
                            goal=lambda st: st == "completed", side="dst",
                            terminal=lambda st: st in ("failed", "cancelled")).value
        a.query_migrate = dq.cmd("query-migrate")
        a.settle(Observed.COMPLETED if status == "completed" else Observed.DST_REFUSED,
                 "" if status == "completed" else a.query_migrate.get("error-desc", status))

    def _exec_done(self, a: Attempt, src) -> bool:
        """The source's monitor goes away when it exec's; a failed migration (or exec)
        leaves it answering with the failure."""
        d = self.d

        def status() -> str:
            try:
                return src.qmp.cmd("query-migrate").get("status", "")
            except QMPConnectionLost:
                return "exec'd" if src.is_running() else "dead"

        st = wait_until(status, what="the source to exec the new QEMU", timeout=d.t.transfer,
                        goal=lambda x: x == "exec'd", side="src", interval=0.005,
                        terminal=lambda x: x in ("dead", "failed", "cancelled")).value
        if st == "dead":
            outcomes.crashed(d, a, src)
        elif st != "exec'd":
            a.query_migrate = src.qmp.cmd("query-migrate")
            a.settle(Observed.SRC_REFUSED, a.query_migrate.get("error-desc", st))
        else:
            src.qmp.close()
        return st == "exec'd"


def _await_completed(d: Pair, a: Attempt) -> None:
    status = outcomes.wait_migration(d, d.source.qmp)
    a.query_migrate = d.source.qmp.cmd("query-migrate")
    a.settle(Observed.COMPLETED if status == "completed" else Observed.FAILED,
             "" if status == "completed" else a.query_migrate.get("error-desc", status))


HANDOVERS: Dict[str, type] = {h.mode: h for h in (CprTransfer, CprExec, Precopy, CprReboot)}


def for_mode(mode: str, d: Pair) -> HandOver:
    return HANDOVERS[mode](d)


__all__: List[str] = ["HandOver", "CprTransfer", "CprExec", "Precopy", "CprReboot", "for_mode"]
