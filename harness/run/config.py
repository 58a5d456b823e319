"""The run's configuration, resolved once: options, else ``CPRH_*`` environment, else
defaults.

Every adapter (the command line, pytest's conftest, avocado's test, the bench) declares
its options from :data:`OPTIONS` and builds the one frozen :class:`RunConfig` with
:func:`resolve`. Nothing else in the library reads the environment for run settings.
A bad value is a :class:`~harness.core.errors.UsageError` naming the option, the
variable and the accepted form.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from harness.core.cleanup import check_tmp_base
from harness.core.errors import UsageError
from harness.cpr import dialect as dialects
from harness.evidence.pause import Budgets

ROOT = Path(__file__).resolve().parents[2]
ACCELS = ("auto", "kvm", "tcg")
DEFAULT_EXPECTATIONS = ROOT / "expectations" / "known-deviations.toml"
DEFAULT_REPORTS = ROOT / "reports"
#: The per-case deadline: below pytest-timeout's 300 s (pyproject.toml) and avocado's.
DEFAULT_CASE_TIMEOUT = 240.0
#: The observation window after each switch-over (seconds), and its floor.
DEFAULT_OBSERVE_S = 1.0
MIN_OBSERVE_S = 0.5
#: What a case accepts of the guest's stalls when neither the run nor the scenario says
#: otherwise, per accelerator: chosen from the stalls of healthy cases on the 2-core
#: reference host under the heaviest load the project puts on it (docs/pause-budget.md).
DEFAULT_BUDGETS = {
    "kvm": Budgets(max_pause_ms=250.0, stall_floor_ms=150.0, stall_factor=2.0,
                   max_stutter=0.25),
    # TCG judges correctness; its guests share two cores with their translators and
    # the other worker's QEMUs: under ./run tests one aarch64 case stalled 211 ms and
    # 40 % of its window, with a quiet baseline (docs/pause-budget.md).
    "tcg": Budgets(max_pause_ms=1000.0, stall_floor_ms=500.0, stall_factor=2.0,
                   max_stutter=0.6),
}
DEFAULT_MAX_PAUSE_MS = DEFAULT_BUDGETS["kvm"].max_pause_ms


@dataclass(frozen=True)
class Timeouts:
    """Every harness wait is bounded by one of these (seconds), and by the case deadline."""
    start: float = 30.0      # QEMU launched and its QMP monitor up
    guest: float = 30.0      # guest booted, counter moving
    listen: float = 15.0     # target listening on its cpr channel
    transfer: float = 60.0   # migrate issued -> completed/failed
    settle: float = 15.0     # target running / source state after the transfer
    exit: float = 15.0       # a refusing target exits

    def scaled(self, factor: float) -> "Timeouts":
        return Timeouts(**{k: v * factor for k, v in asdict(self).items()})


def _choice(name: str, choices: Sequence[str]) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return v
    parse.__name__ = name
    return parse


def _flag(v: str) -> bool:
    return str(v).strip().lower() not in ("", "0", "no", "false", "off")


def _positive_int(v: str) -> int:
    n = int(v)
    if n < 1:
        raise ValueError("expected a whole number >= 1")
    return n


def _positive_float(v: str) -> float:
    x = float(v)
    if not x > 0:
        raise ValueError("expected a number of seconds > 0")
    return x


def _share(v: str) -> float:
    x = float(v)
    if not 0 <= x <= 1:
        raise ValueError("expected a share between 0 and 1")
    return x


def _at_least(minimum: float, unit: str) -> Callable[[str], float]:
    def parse(v: str) -> float:
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"expected a number of {unit} >= {minimum:g}") from None
        if not x >= minimum:
            raise ValueError(f"expected a number of {unit} >= {minimum:g}")
        return x
    return parse


@dataclass(frozen=True)
class Option:
    """One run setting: its option, its environment variable, its default, its parser."""
    name: str
    flag: str
    env: str
    default: Any
    metavar: str
    help: str
    parse: Callable[[str], Any] = str
    #: A true/false switch on the command line (``--slow``), a value in the environment.
    switch: bool = False

    def value(self, given: Any, environ: Mapping[str, str]) -> Any:
        """The given value, else the environment's, else the default, parsed."""
        raw, where = given, self.flag
        if raw in (None, ""):
            raw, where = environ.get(self.env), self.env
        if raw in (None, ""):
            return self.default
        if isinstance(raw, (bool, int, float)) and not isinstance(raw, str):
            return raw
        try:
            return self.parse(str(raw))
        except ValueError as exc:
            raise UsageError(f"{where}: {raw!r} is not valid: {exc}") from None


OPTIONS: Tuple[Option, ...] = (
    Option("qemu_src", "--qemu-src", "CPRH_QEMU_SRC", "qemu-system-x86_64", "PATH",
           "source QEMU (a wrapper script that execs QEMU is fine)"),
    Option("qemu_dst", "--qemu-dst", "CPRH_QEMU_DST", "qemu-system-x86_64", "PATH",
           "target QEMU"),
    Option("qemu_aarch64_src", "--qemu-aarch64-src", "CPRH_QEMU_AARCH64_SRC",
           "qemu-system-aarch64", "PATH", "source QEMU for the aarch64 guest's cases"),
    Option("qemu_aarch64_dst", "--qemu-aarch64-dst", "CPRH_QEMU_AARCH64_DST",
           "qemu-system-aarch64", "PATH", "target QEMU for the aarch64 guest's cases"),
    Option("accel", "--accel", "CPRH_ACCEL", "auto", "auto|kvm|tcg",
           "accelerator: kvm when /dev/kvm opens, else tcg (auto), or forced; a case "
           "that names TCG always runs TCG", _choice("accel", ACCELS)),
    Option("dialect", "--dialect", "CPRH_DIALECT", "auto", "auto|" + "|".join(dialects.DIALECTS),
           "cpr-transfer interface: from the probed QMP schema (auto), or forced",
           _choice("dialect", ("auto",) + dialects.DIALECTS)),
    Option("reports", "--reports", "CPRH_REPORTS", str(DEFAULT_REPORTS), "DIR",
           "where results go"),
    Option("expectations", "--expectations", "CPRH_EXPECTATIONS", str(DEFAULT_EXPECTATIONS),
           "FILE", "known deviations (TOML): matching cases run as strict expected failures"),
    Option("slow", "--slow", "CPRH_SLOW", False, "", "also run the slow cases", _flag,
           switch=True),
    Option("soak_hops", "--soak-hops", "CPRH_SOAK_HOPS", 5, "N",
           "hops of the soak chain", _positive_int),
    Option("observe_s", "--observe", "CPRH_OBSERVE_S", DEFAULT_OBSERVE_S, "SECONDS",
           "how long the target is watched after each switch-over: alive, running, the "
           "guest's counter moving, no reset/stop/shutdown/panic event, RAM intact at the "
           "end", _at_least(MIN_OBSERVE_S, "seconds")),
    Option("max_pause_ms", "--max-pause-ms", "CPRH_MAX_PAUSE_MS", None, "MS",
           "the longest pause a case accepts at the switch-over (and the most any stall "
           "after it may reach); default: the scenario's own, else "
           f"{DEFAULT_BUDGETS['kvm'].max_pause_ms:g} ms under KVM, "
           f"{DEFAULT_BUDGETS['tcg'].max_pause_ms:g} under TCG (docs/pause-budget.md)",
           _at_least(1.0, "ms")),
    Option("stall_floor_ms", "--stall-floor-ms", "CPRH_STALL_FLOOR_MS", None, "MS",
           "a stall after the switch-over up to this long is always accepted; default "
           f"{DEFAULT_BUDGETS['kvm'].stall_floor_ms:g} ms under KVM, "
           f"{DEFAULT_BUDGETS['tcg'].stall_floor_ms:g} under TCG", _at_least(1.0, "ms")),
    Option("stall_factor", "--stall-factor", "CPRH_STALL_FACTOR", None, "X",
           "...and up to this many times the longest stall of the guest's own baseline "
           "before the transfer, if that is more (never above --max-pause-ms); default "
           f"{DEFAULT_BUDGETS['kvm'].stall_factor:g}", _at_least(1.0, "times")),
    Option("max_stutter", "--max-stutter", "CPRH_MAX_STUTTER", None, "SHARE",
           "the share of the observation window the guest may spend stalled beyond its "
           "baseline's share (0.25: 25 points more); default "
           f"{DEFAULT_BUDGETS['kvm'].max_stutter:g} under KVM, "
           f"{DEFAULT_BUDGETS['tcg'].max_stutter:g} under TCG", _share),
    Option("case_timeout", "--case-timeout", "CPRH_CASE_TIMEOUT", DEFAULT_CASE_TIMEOUT,
           "SECONDS", "every harness wait of one case ends by this deadline (keep it below "
           "the runner's own per-test limit, 300 s)", _positive_float),
)
BY_NAME = {o.name: o for o in OPTIONS}


@dataclass(frozen=True)
class RunConfig:
    """One run's settings. Build it with :func:`resolve` (or directly, in tests)."""
    qemu_src: str = "qemu-system-x86_64"
    qemu_dst: str = "qemu-system-x86_64"
    #: Binaries for guests of other architectures, by arch (default: qemu-system-ARCH).
    other_arch: Mapping[str, Tuple[str, str]] = field(default_factory=dict)
    accel: str = "auto"
    #: "auto" (from the probed QMP schema), or a dialect name to force.
    dialect: str = "auto"
    reports: str = str(DEFAULT_REPORTS)
    expectations: str = str(DEFAULT_EXPECTATIONS)
    slow: bool = False
    soak_hops: int = 5
    observe_s: float = DEFAULT_OBSERVE_S
    #: The run's budgets (harness.evidence.pause.Budgets); None: each scenario's own,
    #: else the accelerator's default.
    max_pause_ms: Optional[float] = None
    stall_floor_ms: Optional[float] = None
    stall_factor: Optional[float] = None
    max_stutter: Optional[float] = None
    case_timeout: float = DEFAULT_CASE_TIMEOUT
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if self.accel not in ACCELS:
            raise UsageError(f"unknown accel {self.accel!r}; use one of: {', '.join(ACCELS)}")
        if self.dialect != "auto":
            dialects.get(self.dialect)  # UsageError for an unknown name
        check_tmp_base()

    def binaries(self, arch: str) -> Tuple[str, str]:
        """(src, dst) QEMU for a guest of ``arch``."""
        if arch == "x86_64":
            return self.qemu_src, self.qemu_dst
        default = f"qemu-system-{arch}"
        return tuple(self.other_arch.get(arch, (default, default)))  # type: ignore[return-value]

    def for_arch(self, arch: str) -> "RunConfig":
        """This config with qemu_src/qemu_dst set for a guest of ``arch``."""
        src, dst = self.binaries(arch)
        return replace(self, qemu_src=src, qemu_dst=dst)

    def with_(self, **changes: Any) -> "RunConfig":
        return replace(self, **changes)

    def budgets(self, accel: str, scenario_max_pause_ms: Optional[float] = None) -> Budgets:
        """A case's budgets: the run's, else the scenario's pause budget, else the
        default of its accelerator."""
        d = DEFAULT_BUDGETS["tcg" if accel == "tcg" else "kvm"]
        pause = self.max_pause_ms if self.max_pause_ms is not None else \
            scenario_max_pause_ms if scenario_max_pause_ms is not None else d.max_pause_ms
        pick = lambda mine, default: default if mine is None else mine  # noqa: E731
        return Budgets(pause, pick(self.stall_floor_ms, d.stall_floor_ms),
                       pick(self.stall_factor, d.stall_factor),
                       pick(self.max_stutter, d.max_stutter))


def resolve(given: Optional[Mapping[str, Any]] = None,
            environ: Optional[Mapping[str, str]] = None) -> RunConfig:
    """The run's config: each option's given value, else its ``CPRH_*`` variable, else its
    default. ``given`` maps option names (:data:`OPTIONS`) to values (None: not given).

    :raise UsageError: a value does not parse, or names an unknown accel/dialect, or the
        temp dir base is unusable.
    """
    given = dict(given or {})
    env = os.environ if environ is None else environ
    unknown = set(given) - set(BY_NAME)
    if unknown:
        raise UsageError(f"unknown run option(s): {', '.join(sorted(unknown))}")
    v = {o.name: o.value(given.get(o.name), env) for o in OPTIONS}
    return RunConfig(qemu_src=v["qemu_src"], qemu_dst=v["qemu_dst"],
                     other_arch={"aarch64": (v["qemu_aarch64_src"], v["qemu_aarch64_dst"])},
                     accel=v["accel"], dialect=v["dialect"], reports=v["reports"],
                     expectations=v["expectations"], slow=v["slow"],
                     soak_hops=v["soak_hops"], observe_s=v["observe_s"],
                     max_pause_ms=v["max_pause_ms"], stall_floor_ms=v["stall_floor_ms"],
                     stall_factor=v["stall_factor"], max_stutter=v["max_stutter"],
                     case_timeout=v["case_timeout"])


def option_values(cfg: RunConfig) -> Dict[str, Any]:
    """Each option's value in ``cfg`` (None: not set), by option name: what a child run
    (pytest, an avocado recipe) must be given to resolve the same config."""
    aarch = cfg.binaries("aarch64")
    values = {o.name: getattr(cfg, o.name, None) for o in OPTIONS}
    values["qemu_aarch64_src"], values["qemu_aarch64_dst"] = aarch
    return values


def argparse_options(parser: Any, names: Optional[Sequence[str]] = None) -> None:
    """Declare the options on an argparse parser (values default to None: not given)."""
    for o in OPTIONS:
        if names is not None and o.name not in names:
            continue
        env_default = f"[env {o.env}; default: {o.default}]"
        if o.switch:
            parser.add_argument(o.flag, dest=o.name, action="store_const", const=True,
                                default=None, help=f"{o.help} {env_default}")
        else:
            parser.add_argument(o.flag, dest=o.name, metavar=o.metavar, default=None,
                                help=f"{o.help} {env_default}")


def from_namespace(ns: Any, names: Optional[Sequence[str]] = None) -> RunConfig:
    """:func:`resolve` from an argparse namespace made with :func:`argparse_options`."""
    return resolve({o.name: getattr(ns, o.name, None) for o in OPTIONS
                    if names is None or o.name in names})
