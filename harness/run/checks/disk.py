"""The guest's disk across the live update: every write it made is in the image, and
nothing changed under it, verified from the host once both QEMUs are gone.

Only memory travels on the cpr channel: the target opens the guest's image itself
while the source still has it open (CPR.rst: "the user must not modify the contents of
guest block devices"). A scenario with ``Scenario.disk`` has the Linux guest write its
virtio-blk disk through the transfer (a numbered, checksummed block every 100 ms,
O_DIRECT, each acknowledged before the next: docs/guest.md), and the family, through
the check protocol (checks/base.py):

* ``setup``: the image filled with a seeded pattern before the source starts (zeros
  where the guest's blocks go);
* ``prepare`` (the first attempt, the source running the guest): the guest's writer
  started; it waits until blocks are in the image, so writes are in flight at the
  hand-over;
* ``conclude``: on the QEMU that runs the guest at the end (the target; the source
  after a refused transfer): the writer stopped (how many blocks it wrote), the guest's
  own read-back, and QEMU's image-lock bytes of both QEMUs then;
* ``after_teardown``: the image verified block by block against the guest's count,
  and the pattern everywhere the guest never writes.

Its checks: ``disk.intact`` (no write lost, torn or reordered, none beyond the guest's
count, not a byte changed where the guest never writes, the guest's read-back agrees)
and ``disk.locks`` (at the end, the QEMU that runs the guest holds the image's write
permission and the other holds none: the locks went over with the guest).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, Iterable, Optional, Tuple

from harness.core.errors import Check, UsageError
from harness.core.wait import wait_until
from harness.evidence import devices
from harness.evidence.diskseq import DiskRecord, describe_locks, image_locks
from harness.run.checks.base import (ConcludeContext, Family, PrepareContext, SetupContext,
                                     TeardownContext, define)
from harness.run.result import PairResult

INTACT = define("disk.intact", "the guest's disk writes are all in the image, nothing "
                "else changed", "device")
LOCKS = define("disk.locks", "the image's locks went over with the guest", "device")

#: Blocks that must be in the image before the hand-over (writes in flight at it).
LEAD_BLOCKS = 3
LEAD_S = 60.0
#: QEMU's lock byte for "uses write" (harness.evidence.diskseq.PERMISSIONS).
WRITE = 101


@dataclass(frozen=True)
class DiskCaseRecord:
    """The guest's disk through one case: where the writer was stopped (``dst``, ``src``,
    "" nowhere), the guest's counts, the image as verified after teardown (None: not
    verified), each QEMU's lock bytes on the image at the end (None: it did not have
    the image open, or was gone), and why anything was not measured."""
    measured_on: str
    completed: bool
    written: Optional[int] = None
    write_errors: int = 0
    guest_read: Optional[Tuple[int, int, int, int]] = None
    image: Optional[DiskRecord] = None
    src_locks: Optional[Tuple[int, ...]] = None
    dst_locks: Optional[Tuple[int, ...]] = None
    note: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


class DiskCase:
    """One case's image and the guest's writer on it."""

    def __init__(self, image: str, layout: Any):
        self.probe = devices.DiskProbe(image, layout)

    def start(self, console: devices.Console) -> None:
        self.probe.start(console)
        lay = self.probe.layout
        want = lay.block_of(LEAD_BLOCKS)
        at = lay.start + (LEAD_BLOCKS - 1) * lay.block

        def block() -> bool:
            with open(self.probe.image, "rb") as f:
                f.seek(at)
                return f.read(lay.block) == want
        wait_until(block, what=f"the guest's first {LEAD_BLOCKS} disk blocks in the image "
                   f"before the transfer", timeout=LEAD_S, goal=bool, side="src",
                   interval=0.1)


class Disk(Family):
    name = "disk"

    def setup(self, ctx: SetupContext) -> Optional[DiskCase]:
        if not ctx.scenario.disk:
            return None
        image, lay = getattr(ctx.guest, "disk", None), getattr(ctx.guest, "lay", None)
        if not image or not lay or "DISK_FIRST_BLOCK" not in lay:
            raise UsageError(f"{ctx.scenario.id}: a disk scenario needs a guest with the "
                             f"disk writer (linux-x86), not {ctx.scenario.guest}")
        case = DiskCase(image, lay)
        case.probe.prepare()
        return case

    def prepare(self, ctx: PrepareContext) -> None:
        case = ctx.case
        if isinstance(case, DiskCase) and not case.probe.started:
            case.start(lambda cmd: ctx.guest.command("src", cmd, devices.COMMAND_S))

    def conclude(self, ctx: ConcludeContext) -> Optional[DiskCaseRecord]:
        case = ctx.case
        if not isinstance(case, DiskCase) or not case.probe.started:
            return None
        image = case.probe.image
        locks = {vm.side: image_locks(vm.pid, image) for vm in (ctx.source, ctx.target)
                 if vm is not None and vm.is_running()}
        vm = ctx.running
        if vm is None:
            return DiskCaseRecord("", ctx.completed, src_locks=locks.get("src"),
                                  dst_locks=locks.get("dst"),
                                  note="no QEMU ran the guest at the end: its count of "
                                       "blocks written is unknown")
        case.probe.stop(lambda cmd: ctx.guest.command(vm.side, cmd, devices.COMMAND_S))
        p = case.probe
        return DiskCaseRecord(vm.side, ctx.completed, p.written, p.errors, p.guest_read,
                              src_locks=locks.get("src"), dst_locks=locks.get("dst"))

    def after_teardown(self, ctx: TeardownContext) -> Optional[DiskCaseRecord]:
        rec, case = ctx.record, ctx.case
        if not isinstance(rec, DiskCaseRecord) or rec.written is None:
            return None
        return replace(rec, image=case.probe.verify())

    def judge_case(self, r: PairResult) -> Iterable[Check]:
        rec = r.devices.get(self.name)
        if not isinstance(rec, DiskCaseRecord):
            return []
        return [judge_intact(rec), judge_locks(rec)]


def judge_intact(rec: DiskCaseRecord) -> Check:
    where = "through the switch-over" if rec.completed else \
        "on the source, which carried on after the refused transfer"
    expected = (f"every block the guest wrote {where} is whole in its place, none lost, "
                f"torn or reordered; nothing changed where the guest never writes; its "
                f"own read-back agrees")
    img = rec.image
    if img is None:
        return INTACT(False, expected, "not verified", rec.note or "the guest's count of "
                      "blocks written is unknown")
    wrong = []
    if not img.intact:
        wrong.append("the image does not hold what the guest wrote")
    if not img.written:
        wrong.append("the guest wrote no block")
    if img.guest_read is not None and img.guest_read[1:] != (0, 0, 0):
        wrong.append("the guest's own read-back found damage")
    return INTACT(not wrong, expected, img.describe(),
                  "; ".join(wrong) + " (CPR.rst: nothing may change the guest's block "
                  "devices; cpr-transfer must not lose a write in flight)")


def _holds(locks: Optional[Tuple[int, ...]], which: str) -> str:
    return f"{which} {describe_locks(locks)}"


def judge_locks(rec: DiskCaseRecord) -> Check:
    runs, other = ("dst", "src") if rec.completed and rec.measured_on == "dst" else \
        ("src", "dst")
    held = {"src": rec.src_locks, "dst": rec.dst_locks}
    name = {"src": "the source", "dst": "the target"}
    observed = "; ".join(_holds(held[s], name[s]) for s in ("src", "dst")
                         if s in (runs, other))
    ok = rec.measured_on == runs and WRITE in (held[runs] or ()) and \
        not any(b >= 100 for b in (held[other] or ()))
    return LOCKS(ok, f"at the end {name[runs]} (running the guest) holds the image's "
                     f"write permission, {name[other]} holds no lock on it",
                 observed, "QEMU's image locking did not follow the guest"
                 + ("" if rec.measured_on else ": no QEMU ran the guest at the end"))
