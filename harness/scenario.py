"""Scenarios: one frozen value per case, its expected outcome stated as data.

A scenario says what to launch (channels, back-end, incoming mode, machine, accel,
guest) and what a conforming QEMU must do with it. The id reads like a path:
``transfer/unix-unix-memfd-immediate-q35``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Optional

from harness.errors import HarnessError, UsageError

COMPLETES = "completes"
SRC_REFUSES = "src-refuses"   # the source's migrate (or set-up) is refused with a message
DST_REFUSES = "dst-refuses"   # the target exits with a message; the source carries on
FAILS = "fails"               # (fault injected) the transfer fails, the source carries on
SRC_LOST = "src-lost"         # (source killed) the target gives up; nothing hangs

#: Fault injection stages (harness.pair injects them; see docs/faults.md).
FAULTS = {
    "dst-killed-before-cpr": "target killed while listening, before it reads the cpr channel",
    "dst-killed-after-cpr": "target killed after reading CPR state, before the main channel",
    "dst-killed-during-main": "target killed while the main channel streams",
    "dst-fails-after-cpr": "target exits on a bad argument after reading CPR state",
    "src-killed-during-main": "source killed while the main channel streams",
}


@dataclass(frozen=True)
class Outcome:
    kind: str = COMPLETES
    #: A substring QEMU's error must contain (the QMP ``desc`` or the target's log).
    message: str = ""

    def __post_init__(self) -> None:  # noqa: D105
        if self.kind not in (COMPLETES, SRC_REFUSES, DST_REFUSES, FAILS, SRC_LOST):
            raise UsageError(f"unknown outcome kind {self.kind!r}")

    def __str__(self) -> str:
        return self.kind + (f": {self.message}" if self.message else "")


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str = ""
    main: str = "unix"            # main channel kind, see harness.channels.MAIN_KINDS
    cpr: str = "unix"             # cpr channel kind, see harness.channels.CPR_KINDS
    #: Per-side overrides for error paths (None: same as ``main``/``cpr``).
    src_main: Optional[str] = None
    dst_main: Optional[str] = None
    src_cpr: Optional[str] = None
    dst_cpr: Optional[str] = None
    backend: str = "memfd"        # see harness.backends.BACKENDS
    prealloc: bool = False
    aux_ram_share: bool = True
    incoming: str = "immediate"   # "immediate" or "defer"
    machine: str = "q35"
    accel: str = "auto"           # "auto" (the run's choice), "kvm" or "tcg"
    smp: int = 1
    ram_mb: int = 256
    paused: bool = False          # stop the VM before the transfer; it must stay paused
    capabilities: tuple = ()      # migration capabilities to set on the source
    guest: str = "x86-bios"
    #: Behavioural features both binaries must have (harness.features); else a skip.
    requires: tuple = ()
    #: After a refusal, retry a valid transfer from the same source (which must work).
    retry: bool = True
    #: A fault to inject (a key of FAULTS), or "".
    fault: str = ""
    #: A long case, run only when CPRH_SLOW=1 (tox -e nightly).
    slow: bool = False
    area: str = "transfer"        # report grouping: transfer, channel, memory, ...
    expect: Outcome = field(default_factory=Outcome)

    def __post_init__(self) -> None:
        if self.fault and self.fault not in FAULTS:
            raise UsageError(f"unknown fault {self.fault!r}; known: {', '.join(FAULTS)}")

    @property
    def positive(self) -> bool:
        return self.expect.kind == COMPLETES

    def side_main(self, side: str) -> str:
        return (self.src_main if side == "src" else self.dst_main) or self.main

    def side_cpr(self, side: str) -> str:
        return (self.src_cpr if side == "src" else self.dst_cpr) or self.cpr

    def with_(self, **changes: Any) -> "Scenario":
        return replace(self, **changes)

    def params(self) -> Dict[str, Any]:
        """The parameters a report shows for this case."""
        d = asdict(self)
        d["expect"] = str(self.expect)
        try:
            from harness.guest import arch_of
            d["arch"] = arch_of(self.guest)
        except HarnessError:
            d["arch"] = "?"
        return d
