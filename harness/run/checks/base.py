"""The shape every check has: a stable id, a title, a category, one protocol.

A check is defined once (:func:`define`) with an id that never changes (categories,
self-tests and reports key on it, never on the title) and the category its failures are
filed under. A *family* (:class:`Family`) is one module's checks and what they need:

* ``setup(ctx)``: once per case, before the source starts: what must exist on the host
  when a QEMU launches (a network namespace and its taps, a disk image's content); its
  result is the family's *case* (``ctx.case`` in every later hook) and is closed (when
  it has a ``close()``) after teardown, once no QEMU holds it, whatever happens;
* ``qemu_args(ctx, side)``: what it adds to each side's command line (a device, a
  chardev); the same on both sides as cpr-transfer's contract says, unless the case
  gives the target something else (another tap, another host port);
* ``launch(ctx, side)``: how each side's QEMU is started, beyond its arguments
  (:class:`Launch`): a prefix that execs QEMU in place (``nsenter --net=... --``: the
  pid, PDEATHSIG and the janitor's watch hold) and fds it inherits;
* ``prepare(ctx)``: before each attempt's target starts (the source runs the guest):
  what must be taken or started before the hand-over (a file's content, a stream's
  receiver); its result reaches the watcher as ``ctx.prepared``, and is closed (when it
  has a ``close()``) when the attempt ends, whatever happens;
* ``watcher(ctx)``: for a check that watches over time, a :class:`Watcher` the
  observation window polls with every QEMU it watches, and ends into a frozen record
  (kept under the family's name in :attr:`WindowRecord.devices`);
* ``conclude(ctx)``: once per case, when the transfer is over (the last window closed,
  or the source carried on after a refusal), before teardown, with the QEMU that runs
  the guest now: what ran through the whole case ends; its result is the family's
  case record (``PairResult.devices[name]``);
* ``after_teardown(ctx)``: once per case, after every QEMU is gone: what can only be
  read then (an image no QEMU writes any more); a result other than None replaces the
  case record;
* ``judge(result, attempt)``: the checks of one completed attempt, from its records;
* ``judge_case(result)``: the checks of the case as a whole, from its case record
  (a refused transfer's too: the source carried on, its devices must have).

The driver and the verdict iterate the registered families
(:data:`harness.run.checks.FAMILIES`); neither names a check. A new device check is one
module with a :class:`Family` and one line in that tuple.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Protocol, Tuple)

from harness.core.errors import Check
from harness.core.sides import Side

if TYPE_CHECKING:  # types only: records sit beside this package, not below it
    from harness.guest.driver import GuestDriver
    from harness.qemu.process import QemuProcess
    from harness.run.records import AttemptRecord
    from harness.run.result import PairResult
    from harness.scenario.model import Scenario


@dataclass(frozen=True)
class Category:
    """Where failures of a kind are filed (Allure's categories, the report's causes)."""
    id: str
    name: str
    description: str = ""


#: In the order a reader should look at them: a failed case goes to the first category
#: one of its failed checks belongs to.
CATEGORIES: Dict[str, Category] = {c.id: c for c in (
    Category("crash", "QEMU crashed",
             "a QEMU process died during the transfer (signal or unexpected exit)"),
    Category("hang", "QEMU hung",
             "a QEMU stayed alive but stopped answering or never went on (its state, "
             "threads and backtraces are in the check)"),
    Category("refused-valid", "QEMU refused a transfer it should accept",
             "outcome mismatch: the scenario must complete, QEMU refused or failed it"),
    Category("not-refused", "QEMU did not refuse as documented",
             "outcome mismatch on an error path: QEMU accepted, or refused on the other "
             "side"),
    Category("message", "QEMU refused with another message"),
    Category("split-brain", "The old QEMU ran after the switch-over",
             "the source resumed, printed or ran its vCPUs after it handed the guest "
             "over: two QEMUs on one RAM"),
    Category("ram-place", "RAM not kept in place",
             "the target did not map the source's RAM, or RAM pages went through the "
             "migration stream"),
    Category("ram-content", "RAM changed",
             "guest RAM content check failed (the seeded pattern, a changed page)"),
    Category("guest-reset", "Guest reset"),
    Category("run-state", "Wrong run state after the transfer"),
    Category("death", "A QEMU died after the switch-over",
             "a QEMU ended on its own after it took the guest over, or before teardown"),
    Category("guest-stalled", "Guest stalled",
             "the guest's progress counter did not move on"),
    Category("pause", "Guest paused too long",
             "the guest stalled longer than the budget at the switch-over or after it"),
    Category("pause-unmeasured", "Guest pause not measured"),
    Category("device", "A device did not carry on",
             "the console, network or disk of the guest did not continue across the "
             "live update"),
    Category("arguments", "An option did not carry on to the new QEMU",
             "with the same command line on both sides (cpr-transfer's contract), what an "
             "option provides (a pid file, a socket, a log file, a forwarded port, an "
             "image) did not pass to the new QEMU intact, or the old QEMU took it away "
             "when it quit"),
    Category("retry", "Retry after a refusal failed"),
    Category("harness", "The harness's own checks",
             "a self-test's wrapper that never acted, and other checks of the harness"),
)}

#: Every check ever defined, by id.
REGISTRY: Dict[str, "CheckDef"] = {}


@dataclass(frozen=True)
class CheckDef:
    """One check's identity. Calling it judges: ``defn(ok, expected, observed, detail,
    attempt)`` is the :class:`Check` (``detail`` only said when it fails)."""
    id: str
    title: str
    category: str

    def __call__(self, ok: bool, expected: str, observed: str, detail: str = "",
                 attempt: str = "") -> Check:
        return Check(self.id, self.title, bool(ok), expected, observed,
                     "" if ok else detail, attempt)


def define(id: str, title: str, category: str) -> CheckDef:
    """Register a check; an id is defined once, in one module."""
    if id in REGISTRY:
        raise ValueError(f"check id {id!r} is defined twice")
    if category not in CATEGORIES:
        raise ValueError(f"check {id!r}: unknown category {category!r}")
    REGISTRY[id] = defn = CheckDef(id, title, category)
    return defn


def category_of(check_id: str) -> Optional[Category]:
    d = REGISTRY.get(check_id)
    return CATEGORIES.get(d.category) if d else None


# --------------------------------------------------------------------------- protocol

class Watcher(Protocol):
    """What a check gathers during an observation window: polled with the window, then
    ended into a frozen record (kept under its family's name)."""

    def poll(self) -> None: ...

    def finish(self) -> Any: ...


@dataclass(frozen=True)
class SetupContext:
    """What a family may use to set a case up before its source starts: the scenario,
    the guest's driver (no QEMU runs yet), the case's directories."""
    scenario: "Scenario"
    guest: "GuestDriver"
    workdir: str
    artifacts: str


@dataclass(frozen=True)
class ArgsContext:
    """What a family may know when it adds to a side's command line (``shared``: the
    directory both sides' options name as ``{dir}``; ``ports``: the loopback ports the
    case picked for its ``{port0}``, ``{port1}``...; ``case``: what its
    :meth:`Family.setup` made, None in a dry run, which sets nothing up)."""
    scenario: "Scenario"
    workdir: str
    artifacts: str
    shared: str = ""
    ports: Tuple[int, ...] = ()
    case: Any = None


@dataclass(frozen=True)
class Launch:
    """How one side's QEMU is started beyond its arguments: ``prefix`` goes before the
    binary and must exec it in place (the pid stays QEMU's); ``fds`` it inherits."""
    prefix: Tuple[str, ...] = ()
    fds: Tuple[int, ...] = ()


@dataclass(frozen=True)
class PrepareContext:
    """What a family may use before an attempt's target starts: the source, the guest,
    the case's directories (``shared``: the one both sides' options name as ``{dir}``),
    the attempt's tag and the name its target will have."""
    scenario: "Scenario"
    source: "QemuProcess"
    guest: "GuestDriver"
    artifacts: str
    shared: str
    tag: str
    target_name: str
    ports: Tuple[int, ...] = ()
    case: Any = None


@dataclass(frozen=True)
class WatchContext:
    """What a family may use to watch one attempt's window: both QEMUs, the guest, the
    case's directories, when the target was first seen running (monotonic ns), the
    consoles' files, what the family prepared before the hand-over, and the case's
    loopback ports."""
    scenario: "Scenario"
    source: "QemuProcess"
    target: "QemuProcess"
    guest: "GuestDriver"
    artifacts: str
    switchover_ns: int
    serial: Mapping[str, str]
    shared: str = ""
    prepared: Any = None
    ports: Tuple[int, ...] = ()
    case: Any = None


@dataclass(frozen=True)
class ConcludeContext:
    """What a family may use when the transfer is over, before teardown: the source,
    the last target (None: none was started), the QEMU that runs the guest now (None:
    neither does), whether the scenario's transfer completed, the switch-over as QEMU
    placed it (its source's STOP and its target's RESUME, monotonic ns; None: no
    switch-over, or it could not be placed), and the family's case."""
    scenario: "Scenario"
    source: Optional["QemuProcess"]
    target: Optional["QemuProcess"]
    running: Optional["QemuProcess"]
    guest: "GuestDriver"
    artifacts: str
    completed: bool
    switch_ns: Optional[Tuple[int, int]]
    case: Any = None


@dataclass(frozen=True)
class TeardownContext:
    """What a family may use after every QEMU is gone: its case and its case record."""
    scenario: "Scenario"
    artifacts: str
    case: Any = None
    record: Any = None


class Family:
    """One module's checks. Subclasses override what they need."""
    name = ""

    def setup(self, ctx: SetupContext) -> Any:
        return None

    def qemu_args(self, ctx: ArgsContext, side: Side) -> List[str]:
        return []

    def launch(self, ctx: ArgsContext, side: Side) -> Launch:
        return Launch()

    def prepare(self, ctx: PrepareContext) -> Any:
        return None

    def watcher(self, ctx: WatchContext) -> Optional[Watcher]:
        return None

    def conclude(self, ctx: ConcludeContext) -> Any:
        return None

    def after_teardown(self, ctx: TeardownContext) -> Any:
        return None

    def judge(self, r: "PairResult", a: "AttemptRecord") -> Iterable[Check]:
        return ()

    def judge_case(self, r: "PairResult") -> Iterable[Check]:
        return ()


JudgeFn = Callable[["PairResult", "AttemptRecord"], Iterable[Check]]


def text(value: Any, none: str = "not seen") -> str:
    """A value as a reader reads it: numbers and words as they are, nothing as ``none``,
    a sequence joined by commas."""
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v, none) for v in value) or "none"
    return str(value)
