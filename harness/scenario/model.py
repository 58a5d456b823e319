"""Scenarios: one frozen value per case, its expected outcome stated as data.

A scenario says what to launch (mode, channels, back-end, incoming mode, machine,
accel, guest, a fault) and what a conforming QEMU must do with it. The id reads like a
path: ``transfer/unix-unix-memfd-immediate-q35``.

Two vocabularies, kept apart: :class:`Expect` is what a scenario requires,
:class:`Observed` is what a pair did; :meth:`Expect.accepts` says which observations
fulfil a requirement.
"""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, FrozenSet, Optional, Tuple

from harness.core.errors import HarnessError, UsageError
from harness.cpr.faults import Fault
from harness.cpr.netdevs import ARRANGEMENTS


class Observed(str, enum.Enum):
    """What one transfer attempt did, as the pair driver saw it."""
    COMPLETED = "completed"         # migration completed
    SRC_REFUSED = "src-refused"     # the source's set-up or migrate was refused
    DST_REFUSED = "dst-refused"     # the target exited (or refused migrate-incoming)
    FAILED = "failed"               # the migration failed (or a fault made it fail)
    SRC_LOST = "src-lost"           # the source died (a fault) and the target gave up
    SRC_CRASHED = "src-crashed"     # the source died, not on purpose
    DST_CRASHED = "dst-crashed"     # the target died, not on purpose
    HUNG = "hung"                   # a side never noticed a fault, in bounded time

    def __str__(self) -> str:
        return self.value


class Expect(str, enum.Enum):
    """What a conforming QEMU must do with a scenario."""
    COMPLETES = "completes"
    SRC_REFUSES = "src-refuses"     # refused at the source with a message
    DST_REFUSES = "dst-refuses"     # the target exits with a message; the source carries on
    FAILS = "fails"                 # (fault) the transfer fails, whoever notices
    SRC_LOST = "src-lost"           # (source killed) the target gives up; nothing hangs

    def accepts(self, observed: Optional[Observed]) -> bool:
        return observed in _ACCEPTS[self]

    def __str__(self) -> str:
        return self.value


class Verdict(enum.StrEnum):
    """A case's verdict, in the order a reader should look at them."""
    FAIL = "fail"
    ERROR = "error"
    XPASS = "xpass"
    XFAIL = "xfail"
    SKIP = "skip"
    PASS = "pass"

    @property
    def meaning(self) -> str:
        return _MEANING[self]

    @property
    def bad(self) -> bool:
        """A verdict that needs attention (a regression when it is new)."""
        return self in (Verdict.FAIL, Verdict.ERROR)


_MEANING = {
    Verdict.PASS: "QEMU did what the scenario requires",
    Verdict.FAIL: "QEMU did not: a conformance check failed (a QEMU that crashed or hung "
                  "included)",
    Verdict.ERROR: "the harness could not reach a verdict (its own fault, or the host's)",
    Verdict.XFAIL: "a known deviation of this QEMU, reproduced as recorded",
    Verdict.XPASS: "a known deviation no longer reproduces: QEMU changed (or the entry is "
                   "stale)",
    Verdict.SKIP: "not run: a capability this QEMU or host lacks",
}


_ACCEPTS: Dict[Expect, FrozenSet[Observed]] = {
    Expect.COMPLETES: frozenset({Observed.COMPLETED}),
    Expect.SRC_REFUSES: frozenset({Observed.SRC_REFUSED}),
    Expect.DST_REFUSES: frozenset({Observed.DST_REFUSED}),
    # With a fault injected, whoever noticed, the transfer failed as it must.
    Expect.FAILS: frozenset({Observed.FAILED, Observed.SRC_REFUSED, Observed.DST_REFUSED}),
    Expect.SRC_LOST: frozenset({Observed.SRC_LOST}),
}

#: Migration modes a pair can run (the bench compares the last two with cpr-transfer).
MODES = ("cpr-transfer", "cpr-exec", "precopy", "cpr-reboot")


@dataclass(frozen=True)
class Outcome:
    kind: Expect = Expect.COMPLETES
    #: A substring QEMU's error must contain (the QMP ``desc`` or the target's log).
    message: str = ""

    def __post_init__(self) -> None:  # noqa: D105
        if not isinstance(self.kind, Expect):
            try:
                object.__setattr__(self, "kind", Expect(self.kind))
            except ValueError:
                raise UsageError(f"unknown outcome kind {self.kind!r}") from None

    def __str__(self) -> str:
        return self.kind.value + (f": {self.message}" if self.message else "")


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str = ""
    mode: str = "cpr-transfer"    # see MODES
    main: str = "unix"            # main channel kind, see harness.cpr.channels.MAIN_KINDS
    cpr: str = "unix"             # cpr channel kind, see harness.cpr.channels.CPR_KINDS
    #: Per-side overrides for error paths (None: same as ``main``/``cpr``).
    src_main: Optional[str] = None
    dst_main: Optional[str] = None
    src_cpr: Optional[str] = None
    dst_cpr: Optional[str] = None
    backend: str = "memfd"        # see harness.cpr.backends.BACKENDS
    prealloc: bool = False
    aux_ram_share: bool = True
    incoming: str = "immediate"   # "immediate" or "defer"
    machine: str = "q35"
    accel: str = "auto"           # "auto" (the run's choice), "kvm" or "tcg"
    smp: int = 1
    ram_mb: int = 256
    paused: bool = False          # stop the VM before the transfer; it must stay paused
    capabilities: tuple = ()      # migration capabilities to set on the source
    #: Migration parameters set on the source before the transfer: (name, value) pairs.
    parameters: tuple = ()
    guest: str = "x86-bios"
    #: Behavioural features both binaries must have (harness.qemu.features); else a skip.
    requires: tuple = ()
    #: After a refusal, retry a valid transfer from the same source (which must work).
    retry: bool = True
    #: A fault to inject at its stage, or None.
    fault: Optional[Fault] = None
    #: A long case, run only when CPRH_SLOW=1 (tox -e nightly).
    slow: bool = False
    #: Across QEMU versions, both sides run the versioned machine type the older side's
    #: ``machine`` stands for (as libvirt pins it); False: both run ``machine`` as given.
    pin_machine: bool = True
    #: The case needs two different QEMU versions (a skip on a same-version run).
    cross_version: bool = False
    #: This scenario's pause budget (ms) where its method costs more (TCG, prealloc...);
    #: None: the run's default for its accelerator (harness.run.config.DEFAULT_BUDGETS).
    max_pause_ms: Optional[float] = None
    area: str = "transfer"        # report grouping: transfer, channel, memory, ...
    expect: Outcome = field(default_factory=Outcome)
    #: Options a user puts on a QEMU command line, the same on both sides ("the same
    #: arguments plus -incoming"): ``{dir}`` is a directory both sides share, ``{name}``
    #: the QEMU's own name (src, dst, dst-retry...).
    extra_args: Tuple[str, ...] = ()
    #: What a management layer gives the target instead (None: the same as the source).
    dst_extra_args: Optional[Tuple[str, ...]] = None
    #: What the option must keep doing across the update (harness.run.checks.args).
    arg_checks: Tuple[str, ...] = ()
    #: Where the guest's console goes: "" each QEMU its own file (the harness's way);
    #: "file" both in one file (``console.log`` in the case's directory), as a user gives "the same
    #: arguments"; "file-append" the same with ``append=on``.
    console: str = ""
    #: The option an ``args/`` scenario judges (``-pidfile``): the report's table per option.
    option: str = ""
    #: What a management layer must do about it, in words (the report says it).
    advice: str = ""
    #: The guest's network, measured from the host through the transfer
    #: (harness.run.checks.net): how a management layer gives each side its NIC's
    #: back-end, an arrangement of harness.cpr.netdevs ("" none).
    net: str = ""
    #: The guest writes its disk through the transfer, verified in the image after both
    #: QEMUs are gone (harness.run.checks.disk).
    disk: bool = False

    def __post_init__(self) -> None:
        if self.console not in ("", "file", "file-append"):
            raise UsageError(f"unknown console {self.console!r}; known: file, file-append")
        if self.net and self.net not in ARRANGEMENTS:
            raise UsageError(f"unknown network arrangement {self.net!r}; known: "
                             f"{', '.join(ARRANGEMENTS)}")
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; known: {', '.join(MODES)}")
        if self.fault is not None and not isinstance(self.fault, Fault):
            raise UsageError(f"fault must be a harness.cpr.faults.Fault, not {self.fault!r}")

    @property
    def positive(self) -> bool:
        return self.expect.kind is Expect.COMPLETES

    def side_main(self, side: str) -> str:
        return (self.src_main if side == "src" else self.dst_main) or self.main

    def side_cpr(self, side: str) -> str:
        return (self.src_cpr if side == "src" else self.dst_cpr) or self.cpr

    def args_of(self, side: str) -> Tuple[str, ...]:
        """The extra options of ``side``'s command line, before templating."""
        if side != "src" and self.dst_extra_args is not None:
            return self.dst_extra_args
        return self.extra_args

    def with_(self, **changes: Any) -> "Scenario":
        return replace(self, **changes)

    def params(self) -> Dict[str, Any]:
        """The parameters a report shows for this case (plain JSON values)."""
        d = asdict(self)
        d["expect"] = str(self.expect)
        d["fault"] = self.fault.name if self.fault is not None else ""
        try:
            from harness.guest.images import arch_of
            d["arch"] = arch_of(self.guest)
        except HarnessError:
            d["arch"] = "?"
        return d
