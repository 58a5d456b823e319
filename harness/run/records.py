"""What a run of a scenario observed, as typed frozen records.

One :class:`AttemptRecord` per target an attempt handed the guest to (the first, a
retry after a refusal, each hop of a soak chain), each with the observation window it
ran (:class:`WindowRecord`: one :class:`WatchRecord` per QEMU watched, and what each
device check gathered) and its evidence (:class:`AttemptEvidence`). A QEMU that died
unasked is a :class:`Death`; one that hung, a :class:`harness.qemu.hang.Hang`.

Records are built once and never changed; they become plain data (``asdict``) only
where they are written (result.json). Judging them is :mod:`harness.run.verdict`'s job.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Tuple

from harness.core.sides import Side
from harness.evidence.collector import RamSetup
from harness.evidence.memory import SameMemfdEvidence
from harness.evidence.pattern import PatternReport
from harness.evidence.stream import StreamFigures
from harness.guest.linux import LinuxConsole
from harness.evidence.pause import PauseFigures
from harness.qemu.hang import Hang
from harness.qemu.states import RunState
from harness.scenario.model import Observed


class Role(enum.StrEnum):
    """What an attempt is for."""
    FIRST = "first"    # the scenario's own transfer (its fault, its channels)
    RETRY = "retry"    # after a refusal: a valid transfer from the same source
    HOP = "hop"        # one live update of a soak chain


@dataclass(frozen=True)
class Death:
    """A QEMU that ended without the harness ending it or expecting it to end.

    ``name``: its artifact name (``dst``, ``dst-retry``, ``src``); ``since_switchover_s``:
    from when the target was first seen running the guest to when the harness noticed;
    ``noticed``: where (``in the observation window``, ``at teardown``)."""
    name: str
    side: Side
    exitcode: Optional[int]
    how: str
    since_switchover_s: Optional[float]
    log_tail: str
    log_path: str
    noticed: str

    def describe(self) -> str:
        when = f", {self.since_switchover_s:.2f} s after the switch-over" \
            if self.since_switchover_s is not None else ""
        tail = " | ".join(ln for ln in self.log_tail.splitlines()[-3:] if ln.strip())
        return (f"{self.side} QEMU {self.how}{when} ({self.noticed}); log {self.log_path}"
                + (f": {tail}" if tail else ""))


@dataclass(frozen=True)
class StateSeen:
    """A run state a watched QEMU was seen in, and when (seconds into the window)."""
    state: RunState
    at_s: float


@dataclass(frozen=True)
class EventSeen:
    """A QMP event a watched QEMU must not send, and when: seconds after the moment it
    is counted from (its RESUME for a target, its completion for a source; None: that
    moment was not seen)."""
    event: str
    after_s: Optional[float]
    data: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return self.event + (f" +{self.after_s:.2f} s" if self.after_s is not None else "")


@dataclass(frozen=True)
class GuestSeen:
    """The guest's progress on a watched QEMU at the window's end: its counter from the
    start of the window to its end, its boot count."""
    counter_start: Optional[int]
    counter_end: Optional[int]
    boots_end: Optional[int]


@dataclass(frozen=True)
class WatchRecord:
    """What the observation window saw on one QEMU, against what it had to do.

    ``role``: ``target`` or ``source``; ``want``: the run state it must hold; ``polls``:
    each state answered to ``query-status`` and how often; ``first_wrong``: the first
    answer that was not ``want``; ``events``: forbidden events it sent; ``death``: it
    died meanwhile; ``held_s``/``hold_expired``: a self-test wrapper's hold on the
    window (a real QEMU never holds it). The rest is role-specific: ``guest`` (a target
    runs the guest), ``vcpu_ms`` (CPU time its vCPU threads used in the window: a
    stopped source uses none) and ``console_bytes_after`` (what it printed on the
    guest's console after the switch-over: a stopped source prints nothing)."""
    role: str
    name: str
    side: Side
    want: RunState
    polls: Tuple[Tuple[str, int], ...] = ()
    first_wrong: Optional[StateSeen] = None
    events: Tuple[EventSeen, ...] = ()
    #: The moment events are counted from was seen (the target's RESUME, the source's
    #: completed migration).
    anchor_seen: bool = False
    death: Optional[Death] = None
    #: It stopped answering its monitor: what it was doing (states, backtraces).
    hang: Optional[Hang] = None
    observed_s: float = 0.0
    held_s: float = 0.0
    hold_expired: str = ""
    guest: Optional[GuestSeen] = None
    vcpu_ms: Optional[float] = None
    console_bytes_after: Optional[int] = None
    #: Why part of the watch could not be done (said, never guessed).
    note: str = ""

    def polls_text(self) -> str:
        return ", ".join(f"{k} x{v}" for k, v in self.polls) or "never answered"


@dataclass(frozen=True)
class WindowRecord:
    """One attempt's observation window: every QEMU it watched, and what each device
    check gathered (keyed by the check family's name)."""
    seconds: float
    observed_s: float
    watches: Tuple[WatchRecord, ...]
    devices: Mapping[str, Any] = field(default_factory=dict)

    def watch(self, role: str) -> Optional[WatchRecord]:
        return next((w for w in self.watches if w.role == role), None)

    @property
    def target(self) -> Optional[WatchRecord]:
        return self.watch("target")

    @property
    def source(self) -> Optional[WatchRecord]:
        return self.watch("source")


@dataclass(frozen=True)
class AttemptEvidence:
    """The in-place RAM evidence of one completed attempt (docs/ram-evidence.md).

    ``applicable``: guest RAM is a shareable file (same memory, stream);
    ``pattern_applicable``: the guest also leaves RAM alone (the seeded pattern, the
    pause sampler). Each piece is None when it was not gathered."""
    applicable: bool = False
    pattern_applicable: bool = False
    same_memory: Optional[SameMemfdEvidence] = None
    stream: Optional[StreamFigures] = None
    pattern: Optional[PatternReport] = None
    console: Optional[LinuxConsole] = None
    pause: Optional[PauseFigures] = None
    dst_query_migrate: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttemptRecord:
    """One try at a transfer from the source to one target, as it ended.

    ``counter_reference``: the guest's counter the target must get past (before the
    transfer; for a retry, where the source's guest was after the refusal);
    ``counter_moved``: the counter was seen changing on the target after the transfer;
    ``fault``: the fault that fired ("" none: its outcome is the survivor's view);
    ``not_applicable``: why this attempt could not exist (a retry no target can take)."""
    role: Role
    tag: str
    observed: Optional[Observed] = None
    message: str = ""
    query_migrate: Mapping[str, Any] = field(default_factory=dict)
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
    evidence: AttemptEvidence = field(default_factory=AttemptEvidence)
    not_applicable: str = ""

    @property
    def label(self) -> str:
        """How a check names the attempt it judges ("" for the scenario's own)."""
        return "" if self.role is Role.FIRST else self.tag


@dataclass(frozen=True)
class Survival:
    """After a refused or failed transfer: the source's state, its guest's counter
    (None: not seen moving), its RAM pattern (None: not applicable or not verified),
    what it was doing when it stopped answering (None: it answered)."""
    src_state: RunState
    counter_after: Optional[int]
    pattern: Optional[PatternReport] = None
    hang: Optional[Hang] = None


__all__ = ["Role", "Death", "StateSeen", "EventSeen", "GuestSeen", "WatchRecord",
           "WindowRecord", "LinuxConsole", "AttemptEvidence", "AttemptRecord", "Survival",
           "RamSetup"]
