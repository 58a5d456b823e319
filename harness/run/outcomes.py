"""How an attempt ends, named: the waits for a migration's end and a run state, and
what settles an attempt when a side refuses, exits, crashes, hangs, or survives a
fault. Used by every hand-over (:mod:`harness.run.handover`) and by the driver.

A QEMU that is alive but does not do what the harness waits for (its monitor never
comes up, it stops answering, its migration never ends) has *hung*: that is its
failure, settled as :attr:`Observed.HUNG` with what it was doing
(:func:`harness.qemu.hang.diagnose_hang`), never a harness error.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from harness.core.errors import HarnessError, QMPCommandFailed, QMPConnectionLost, WaitTimeout
from harness.core.logs import essential, tail
from harness.core.sides import Side
from harness.core.wait import wait_until
from harness.cpr.faults import Fault
from harness.qemu.hang import diagnose_hang
from harness.qemu.process import QemuProcess, describe_exit
from harness.qemu.states import RunState
from harness.run.attempt import Attempt
from harness.run.pair import Pair
from harness.scenario.model import Observed

#: Migration states that end a wait for the outcome.
MIGRATION_ENDS = ("completed", "failed", "cancelled")
#: A wrong run state held this long is where the QEMU stays.
STATE_SETTLED_S = 1.0


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


def wait_migration(p: Pair, qmp: Any) -> str:
    """The source's migration status once it ends (completed, failed, cancelled).

    :raise WaitTimeout: still going after the transfer timeout (names the target's
        state too).
    """
    def status() -> str:
        return qmp.cmd("query-migrate").get("status", "")

    try:
        return wait_until(status, what="migration to complete", timeout=p.t.transfer,
                          goal=lambda s: s in MIGRATION_ENDS, side="src", interval=0.01,
                          log_path=p.source.log_path).value
    except WaitTimeout as exc:
        dst = "target exited" if p.dst and not p.dst.is_running() else "target alive"
        exc.last_state = f"{exc.last_state} ({dst})"
        raise


def wait_status(vm: QemuProcess, want: RunState, timeout: float) -> RunState:
    """``query-status`` once it says ``want``, or what it says once another state has
    held for :data:`STATE_SETTLED_S` (a QEMU out of migration does not leave it by
    itself), or after ``timeout``: a wrong state is a verdict, not an error."""
    assert vm.qmp is not None
    held = {"state": None, "since": 0.0}

    def settled_elsewhere(state: RunState) -> bool:
        now = time.monotonic()
        if state != held["state"]:
            held["state"], held["since"] = state, now
        return not state.transient and now - held["since"] >= STATE_SETTLED_S

    def probe() -> RunState:
        return RunState(vm.qmp.cmd("query-status")["status"])  # type: ignore[union-attr]

    try:
        return wait_until(probe, what=f"the {vm.side} run state '{want}'", timeout=timeout,
                          goal=lambda s: s == want, terminal=settled_elsewhere,
                          side=vm.side, interval=0.01).value
    except WaitTimeout:
        return probe()


def dst_exited(p: Pair, a: Attempt) -> None:
    """The target exited on its own (a refusal): its log says why; the source sees its
    migration end and carries on."""
    dst = p.target
    dst.expect_exit()
    try:
        a.dst_exitcode = dst.wait_exit(p.t.exit)
    except WaitTimeout:
        a.dst_exitcode = None
    a.settle(Observed.DST_REFUSED, tail(dst.log_path, 10))
    sq = p.src.qmp if p.src is not None else None
    if sq is None:
        return
    # A source blocked writing to a channel whose reader died with the target (an exec
    # pipe that was never opened) is let go: its write then fails.
    p.release_channels()
    try:
        wait_until(lambda: sq.cmd("query-migrate").get("status"),
                   what="the source's migration to end", timeout=p.t.settle,
                   goal=lambda s: s in (None, "none") + MIGRATION_ENDS, side="src")
        a.query_migrate = sq.cmd("query-migrate")
    except WaitTimeout:
        pass  # judged by the survival checks
    except QMPConnectionLost:
        crashed(p, a, p.source)  # the source died too: that is the outcome


def crashed(p: Pair, a: Attempt, vm: QemuProcess) -> None:
    """A QEMU died under us (not on purpose): say which, how, and show its log."""
    try:
        code: Optional[int] = vm.wait_exit(p.t.exit)
    except WaitTimeout:
        code = None
    observed = Observed.SRC_CRASHED if vm.side == "src" else Observed.DST_CRASHED
    crash = p.diagnose(vm)
    a.settle(observed, f"{vm.side} QEMU {describe_exit(code)} during the transfer"
                       + (f"; {crash.describe()}" if crash else "")
                       + f"; log {vm.log_path}: " + essential(tail(vm.log_path, 5)))
    if vm.side == "src":
        a.src_state = RunState.DEAD


def diagnose_into(p: Pair, a: Attempt, vm: QemuProcess, exc: WaitTimeout) -> None:
    """``vm`` is alive but did not do what ``exc`` waited for: what it was doing goes
    into the attempt (the whole backtrace beside its log)."""
    path = os.path.join(p.artifacts, f"{vm.name}.hang.txt")
    with p.obs.step(f"diagnose the hung {vm.side} QEMU"):
        a.hang = diagnose_hang(Side(vm.side), vm.name, vm.pid, vm.exe or _exe(vm.pid),
                               exc.what, exc.elapsed, path, vm.log_path)
    if a.hang.backtrace_path:
        p.r.artifacts[f"{vm.name}.hang"] = a.hang.backtrace_path


def hung(p: Pair, a: Attempt, vm: QemuProcess, exc: WaitTimeout) -> None:
    """``vm`` hung before the attempt ended: that settles it, its states, threads and
    backtraces the message."""
    diagnose_into(p, a, vm, exc)
    assert a.hang is not None
    a.settle(Observed.HUNG, a.hang.describe())


def _exe(pid: int) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


@contextmanager
def qemu_waits(p: Pair, a: Attempt) -> Iterator[None]:
    """Around the steps of an attempt: a wait a QEMU ran out (its monitor, its
    migration, a reply) settles the attempt with that QEMU's failure: it died (a crash,
    or a target that exited: a refusal), or it hung. Only a wait naming no QEMU, or one
    whose QEMU is gone from the pair, is the harness's own error."""
    try:
        yield
    except WaitTimeout as exc:
        vm = {"src": p.src, "dst": p.dst}.get(exc.side or "")
        if vm is None or a.settled:
            raise
        if vm.poll() is not None:
            if vm.side == "dst":
                dst_exited(p, a)
            else:
                crashed(p, a, vm)
            return
        hung(p, a, vm, exc)


def after_fault(p: Pair, a: Attempt, f: Fault) -> None:
    """Observe the survivor after a fault: it must notice, in bounded time."""
    if f.victim == "dst":
        sq = p.source.qmp
        assert sq is not None
        try:
            status = wait_migration(p, sq)
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
    dst = p.target
    try:
        code = dst.wait_exit(p.t.exit)
    except WaitTimeout as exc:
        a.settle(Observed.HUNG, f"target still alive after its source died "
                                f"({f.name}): {exc}")
        return
    dst.expect_exit()
    a.dst_exitcode = code
    a.src_state = RunState.DEAD
    a.settle(Observed.SRC_LOST, f"{f.name}: target {describe_exit(code)}; "
                                + tail(dst.log_path, 5))
