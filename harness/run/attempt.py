"""One attempt in flight: filled phase by phase while the hand-over runs, then frozen
into its :class:`~harness.run.records.AttemptRecord`.

The hand-over settles it (:meth:`Attempt.settle`: the outcome, after which its later
phases do not run); the driver adds what a completed one shows (states, the guest's
progress, the window, the evidence)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from harness.evidence.memory import SameMemfdEvidence
from harness.evidence.pattern import PatternReport
from harness.evidence.pause import PauseFigures
from harness.evidence.stream import StreamFigures
from harness.qemu.hang import Hang
from harness.qemu.states import RunState
from harness.run.records import (AttemptEvidence, AttemptRecord, LinuxConsole, Role,
                                 WindowRecord)
from harness.scenario.model import Observed


@dataclass
class Attempt:
    """One try at a transfer from the (single) source to one target, while it runs."""
    role: Role
    tag: str = ""
    observed: Optional[Observed] = None
    message: str = ""
    query_migrate: Dict[str, Any] = field(default_factory=dict)
    dst_exitcode: Optional[int] = None
    src_state: RunState = RunState.UNKNOWN
    dst_state: RunState = RunState.UNKNOWN
    counter_reference: Optional[int] = None
    counter_after: Optional[int] = None
    boots_after: Optional[int] = None
    counter_moved: Optional[bool] = None
    fault: str = ""
    hang: Optional[Hang] = None
    window: Optional[WindowRecord] = None
    # The evidence, piece by piece (AttemptEvidence once frozen).
    same_memory: Optional[SameMemfdEvidence] = None
    stream: Optional[StreamFigures] = None
    pattern: Optional[PatternReport] = None
    console: Optional[LinuxConsole] = None
    pause: Optional[PauseFigures] = None
    dst_query_migrate: Dict[str, Any] = field(default_factory=dict)
    not_applicable: str = ""

    def __post_init__(self) -> None:
        self.tag = self.tag or self.role.value

    @property
    def first(self) -> bool:
        return self.role is Role.FIRST

    @property
    def settled(self) -> bool:
        return self.observed is not None

    def settle(self, observed: Observed, message: str = "") -> None:
        """Record the outcome; later phases of this attempt do not run."""
        self.observed, self.message = observed, message

    def record(self, applicable: bool, pattern_applicable: bool) -> AttemptRecord:
        """The frozen record of this attempt (``applicable``: the RAM evidence is)."""
        ev = AttemptEvidence(applicable, pattern_applicable, self.same_memory, self.stream,
                             self.pattern, self.console, self.pause,
                             dict(self.dst_query_migrate))
        return AttemptRecord(self.role, self.tag, self.observed, self.message,
                             dict(self.query_migrate), self.dst_exitcode, self.src_state,
                             self.dst_state, self.counter_reference, self.counter_after,
                             self.boots_after, self.counter_moved, self.fault, self.hang,
                             self.window, ev, self.not_applicable)
