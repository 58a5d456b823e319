"""What a run of a scenario observed: the :class:`PairResult` of a case (every attempt
as a frozen :class:`~harness.run.records.AttemptRecord`, the source's survival after a
refusal, the deaths, crashes and the files it left), the :class:`ChainResult` of a soak
chain (one :class:`HopRecord` per live update). Judging is
:mod:`harness.run.verdict`'s job; :meth:`PairResult.to_dict` is where the records
become plain data."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

from harness.core.plain import plain
from harness.qemu.crash import Crash
from harness.qemu.states import RunState
from harness.run.records import (AttemptRecord, Death, RamSetup, Role, Survival,
                                 WindowRecord)
from harness.scenario.model import Observed, Scenario


@dataclass
class PairResult:
    """One case as it ran. Filled by the pair driver phase by phase; its records are
    frozen once made."""
    scenario: Scenario
    accel: str = ""
    dialect: str = ""
    qemu_src_version: str = ""
    qemu_dst_version: str = ""
    #: The versioned machine type the source ran (``pc-q35-10.0``), and whether it was
    #: pinned because the sides differ in version.
    machine_type: str = ""
    machine_pinned: bool = False
    src_state_before: RunState = RunState.UNKNOWN
    #: The guest's counter and boot count before the transfer.
    counter_before: Optional[int] = None
    boots_before: Optional[int] = None
    ram: RamSetup = field(default_factory=RamSetup)
    #: Every attempt, in order: the scenario's own first, then a retry or the hops.
    attempts: List[AttemptRecord] = field(default_factory=list)
    #: After a refused or failed first attempt: how the source carried on.
    survival: Optional[Survival] = None
    #: Seconds from the case's start to named points (``first_completed``...).
    timings: Dict[str, float] = field(default_factory=dict)
    #: Seconds spent in each phase (launch, boot, fill, noise, transfer, verify, ...).
    phases: Dict[str, float] = field(default_factory=dict)
    artifacts: Dict[str, str] = field(default_factory=dict)
    cmdlines: Dict[str, List[str]] = field(default_factory=dict)
    transcripts: Dict[str, str] = field(default_factory=dict)
    #: QEMUs that died before teardown, not on purpose, and not seen by a window.
    deaths: List[Death] = field(default_factory=list)
    #: QEMUs that ended before teardown because the case ended them or expected them to
    #: end (a fault's victim, a refusing target), in words: not deaths, but said.
    ended: List[str] = field(default_factory=list)
    #: Backtraces of QEMUs that died by a core-dumping signal (harness.qemu.crash).
    crashes: List[Crash] = field(default_factory=list)
    #: QEMUs that did not quit on request at teardown (``AbnormalShutdown``).
    abnormal_shutdowns: List[str] = field(default_factory=list)
    #: Each check family's record of the case as a whole, by the family's name (a
    #: device measured from before the transfer to after it: harness.run.checks.base).
    devices: Dict[str, Any] = field(default_factory=dict)
    #: What a tool measuring the pair added (the bench's figures, cpr-exec's state file).
    extra: Dict[str, Any] = field(default_factory=dict)

    # -- the attempts -------------------------------------------------------------------

    @property
    def first(self) -> Optional[AttemptRecord]:
        return self.attempts[0] if self.attempts else None

    @property
    def retry(self) -> Optional[AttemptRecord]:
        return next((a for a in self.attempts if a.role is Role.RETRY), None)

    @property
    def observed(self) -> Optional[Observed]:
        """The case's outcome: its first attempt's."""
        return self.first.observed if self.first is not None else None

    @property
    def observed_message(self) -> str:
        return self.first.message if self.first is not None else ""

    @property
    def window(self) -> Optional[WindowRecord]:
        return self.first.window if self.first is not None else None

    def to_dict(self) -> Dict[str, Any]:
        """Plain data for result.json (the transcripts have files of their own)."""
        d = {f.name: plain(getattr(self, f.name)) for f in fields(self)
             if f.name != "transcripts"}
        d["scenario"] = self.scenario.params()
        d["observed"] = plain(self.observed)
        d["observed_message"] = self.observed_message
        return d


@dataclass(frozen=True)
class HopRecord:
    """One live update of a soak chain, and what the live QEMU held after it."""
    hop: int
    attempt: AttemptRecord
    ram_inode: Optional[int] = None
    open_fds: Optional[int] = None
    rss_anon_kib: Optional[int] = None
    threads: Optional[int] = None


@dataclass
class ChainResult:
    """A chain of live updates of one guest: A -> B -> C -> ..."""
    hops_wanted: int
    scenario: Optional[Scenario] = None
    accel: str = ""
    qemu_src_version: str = ""
    qemu_dst_version: str = ""
    machine_type: str = ""
    boots_before: Optional[int] = None
    hops: List[HopRecord] = field(default_factory=list)
    failed_hop: Optional[int] = None
    failure: str = ""
    pattern: Optional[Any] = None
    ram_inode: Optional[int] = None
    artifacts: Dict[str, str] = field(default_factory=dict)
    phases: Dict[str, float] = field(default_factory=dict)
    deaths: List[Death] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: plain(getattr(self, f.name)) for f in fields(self)}
        d["scenario"] = self.scenario.params() if self.scenario is not None else None
        return d
