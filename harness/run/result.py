"""What a run of a scenario observed, as plain data: one :class:`Attempt` per target,
the :class:`PairResult` of the case, the :class:`ChainResult` of a soak chain. Judging
is :mod:`harness.run.verdict`'s job."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from harness.scenario.model import Observed, Scenario


@dataclass
class Attempt:
    """One try at a transfer from the (single) source to one target."""
    tag: str
    observed: Optional[Observed] = None
    message: str = ""
    query_migrate: Dict[str, Any] = field(default_factory=dict)
    dst_exitcode: Optional[int] = None
    dst_status_after: str = ""
    src_status_after: str = ""
    counter_after: Optional[int] = None
    boots_after: Optional[int] = None
    #: The guest's counter was seen changing on the target after the transfer.
    counter_moved_on_dst: Optional[bool] = None
    #: The fault that fired in this attempt ("" none): its outcome is the survivor's view,
    #: and a "completed" one is not verified (the target is dead).
    fault: str = ""
    #: What the observation window saw on the target (harness.run.observe.Window.record).
    window: Optional[Dict[str, Any]] = None

    @property
    def settled(self) -> bool:
        return self.observed is not None

    def settle(self, observed: Observed, message: str = "") -> None:
        """Record the outcome; later phases of this attempt do not run."""
        self.observed, self.message = observed, message

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["observed"] = self.observed.value if self.observed is not None else None
        return d


@dataclass
class Death:
    """A QEMU that died before teardown without the harness ending it or expecting it
    (``since_resume_s``: from the switch-over to when the harness noticed)."""
    side: str
    exitcode: Optional[int]
    how: str
    since_resume_s: Optional[float]
    log_tail: str
    log_path: str


@dataclass
class PairResult:
    scenario: Scenario
    accel: str = ""
    dialect: str = ""
    qemu_src_version: str = ""
    qemu_dst_version: str = ""
    #: The versioned machine type the source ran (``pc-q35-10.0``), and whether it was
    #: pinned because the sides differ in version.
    machine_type: str = ""
    machine_pinned: bool = False
    observed: Optional[Observed] = None
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
    #: Seconds from the case's start to named points (``first_completed``...).
    timings: Dict[str, float] = field(default_factory=dict)
    #: Seconds spent in each phase (launch, boot, fill, noise, transfer, verify, ...).
    phases: Dict[str, float] = field(default_factory=dict)
    evidence: Dict[str, Any] = field(default_factory=dict)
    artifacts: Dict[str, str] = field(default_factory=dict)
    cmdlines: Dict[str, List[str]] = field(default_factory=dict)
    transcripts: Dict[str, str] = field(default_factory=dict)
    #: What the first target's observation window saw (see Attempt.window).
    window: Optional[Dict[str, Any]] = None
    #: QEMUs that died before teardown, not on purpose (Death records as dicts).
    deaths: List[Dict[str, Any]] = field(default_factory=list)
    #: Backtraces of QEMUs that died by a core-dumping signal (harness.qemu.crash).
    crashes: List[Dict[str, Any]] = field(default_factory=list)
    #: QEMUs that did not quit on request at teardown (``AbnormalShutdown``).
    abnormal_shutdowns: List[str] = field(default_factory=list)
    #: What a tool measuring the pair added (the bench's figures).
    extra: Dict[str, Any] = field(default_factory=dict)

    def record_first(self, a: Attempt) -> None:
        """The first attempt's outcome is the case's."""
        self.observed, self.observed_message = a.observed, a.message
        self.query_migrate = a.query_migrate
        self.dst_exitcode = a.dst_exitcode
        self.dst_status_after, self.src_status_after = a.dst_status_after, a.src_status_after
        self.counter_after, self.boots_after = a.counter_after, a.boots_after
        self.counter_moved_on_dst = a.counter_moved_on_dst
        self.window = a.window

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["scenario"] = self.scenario.params()
        d["observed"] = self.observed.value if self.observed is not None else None
        d.pop("transcripts")
        return d


@dataclass
class ChainResult:
    """A chain of live updates of one guest: A -> B -> C -> ..."""
    hops_wanted: int
    scenario: Optional[Scenario] = None
    accel: str = ""
    qemu_src_version: str = ""
    qemu_dst_version: str = ""
    machine_type: str = ""
    hops: List[Dict[str, Any]] = field(default_factory=list)
    failed_hop: Optional[int] = None
    failure: str = ""
    pattern: Dict[str, Any] = field(default_factory=dict)
    ram_inode: Optional[int] = None
    artifacts: Dict[str, str] = field(default_factory=dict)
    phases: Dict[str, float] = field(default_factory=dict)
    deaths: List[Dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["scenario"] = self.scenario.params() if self.scenario is not None else None
        return d
