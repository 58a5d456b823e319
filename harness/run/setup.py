"""Resolve what one scenario runs on, once: the binaries for its guest's architecture,
their probes, the dialect, the accelerator, the timeouts, the guest image.

Every consumer asks here: the pair driver, the known-deviation lookup (at collection,
for every adapter), the report's run facts and the adapters' labels.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from harness.core.errors import HarnessError, Unsupported, UsageError
from harness.cpr import backends
from harness.cpr import dialect as dialects
from harness.cpr.dialect import Dialect
from harness.guest.images import GuestImage, arch_of, image
from harness.qemu import features
from harness.qemu.probe import Capabilities, probe
from harness.run.config import RunConfig, Timeouts
from harness.scenario import expectations
from harness.scenario.model import Expect, Scenario


@dataclass(frozen=True)
class Binaries:
    """The two QEMUs a scenario runs on and what they speak (no guest built)."""
    scenario: Scenario
    arch: str
    cfg: RunConfig            # with qemu_src/qemu_dst for the guest's architecture
    src: Capabilities
    dst: Capabilities
    dialect: Dialect
    accel: str
    #: The machine type both sides run: the scenario's, or across versions the older
    #: side's versioned type behind it (``q35`` -> ``pc-q35-10.0``).
    machine: str = ""
    #: ``machine`` was pinned from the scenario's alias (the sides differ in version).
    pinned: bool = False

    @property
    def cross_version(self) -> bool:
        return self.src.version != self.dst.version

    @property
    def versions(self) -> str:
        s, d = self.src.version_str, self.dst.version_str
        return s if s == d else f"src {s} / dst {d}"

    def run_info(self) -> expectations.RunInfo:
        return expectations.RunInfo(
            qemu_src=".".join(map(str, self.src.version)),
            qemu_dst=".".join(map(str, self.dst.version)),
            accel=self.accel, machine=self.scenario.machine, arch=self.arch)

    def target_machine(self, retry: bool) -> str:
        """What a target runs: the case's machine; a retry after an unpinned refusal
        runs the source's resolved type (a valid transfer must match it)."""
        if retry and not self.scenario.pin_machine:
            return self.src.resolve_machine(self.machine)
        return self.machine

    def no_valid_retry(self) -> Optional[str]:
        """Why no valid transfer can follow from this source, or None. An unpinned newer
        source runs a machine type an older target does not have: nothing can take its
        guest over, so a retry would judge the pair, not the refusal."""
        machine = self.target_machine(retry=True)
        if self.dst.has_machine(machine):
            return None
        return (f"no valid transfer can follow from this source: it runs {machine}, which "
                f"the {self.dst.version_str} target does not have (a machine type goes to "
                f"the same or a newer QEMU only)")


@dataclass(frozen=True)
class CaseSetup:
    """Everything decided before any QEMU of the case starts."""
    bins: Binaries
    guest: GuestImage
    timeouts: Timeouts

    @property
    def scenario(self) -> Scenario:
        return self.bins.scenario

    @property
    def cfg(self) -> RunConfig:
        return self.bins.cfg


def resolve_accel(run_accel: str, sc: Scenario, src: Capabilities, dst: Capabilities) -> str:
    """The accelerator the case runs: the scenario's own, else the run's; auto -> KVM when
    both sides can use it. :raise Unsupported: the one asked for is missing."""
    want = sc.accel if sc.accel != "auto" else run_accel
    if want == "auto":
        return "kvm" if (src.kvm_usable and dst.kvm_usable) else "tcg"
    if want == "kvm":
        for caps in (src, dst):
            if not caps.kvm_usable:
                raise Unsupported(f"KVM not usable with {caps.path}: {caps.kvm_reason}")
    elif want == "tcg":
        for caps in (src, dst):
            if "tcg" not in caps.accels:
                raise Unsupported(f"{caps.path} has no TCG")
    else:
        raise UsageError(f"unknown accel {want!r}")
    return want


def choose_dialect(cfg: RunConfig, src: Capabilities, dst: Capabilities) -> Dialect:
    """Each side's own dialect (a :class:`~harness.cpr.dialect.Mixed` pair when they
    differ: the cpr-transfer series and a released QEMU), unless ``--dialect`` forces
    one on both."""
    return dialects.choose(src.dialect, cfg.dialect, dst.dialect)


def in_dialect(sc: Scenario, dialect: Dialect) -> Scenario:
    """``sc`` with the error message it requires in ``dialect``'s QEMU's words."""
    side = "dst" if sc.expect.kind is Expect.DST_REFUSES else "src"
    message = dialect.message(sc.id, sc.expect.message, side)
    if message == sc.expect.message:
        return sc
    return sc.with_(expect=dataclasses.replace(sc.expect, message=message))


def _mode_problems(caps: Capabilities, sc: Scenario, dialect: Dialect) -> Sequence[str]:
    if sc.mode != "cpr-transfer":
        mode = "normal" if sc.mode == "precopy" else sc.mode
        return [] if mode in caps.mig_modes else [f"MigMode has no {mode!r}"]
    return caps.dialect_problems(dialect.name)


def check_supported(caps: Capabilities, sc: Scenario, dialect: Dialect,
                    side: str = "both") -> None:
    """:raise Unsupported: this binary (or the host), on ``side`` of the pair, cannot
    run ``sc``, and why."""
    spoken = dialect.for_side("dst" if side == "dst" else "src")
    problems = _mode_problems(caps, sc, spoken)
    if problems:
        raise Unsupported(f"{caps.path} ({caps.version_str}) cannot run {sc.mode}: "
                          + "; ".join(problems))
    why = spoken.unsupported(sc.backend)
    if why and sc.positive:
        raise Unsupported(f"{caps.path} ({caps.version_str}), the {side} side: {why}")
    kind = backends.BACKENDS.get(sc.backend)
    qom = kind.qom_type if kind is not None else None
    if sc.backend == "epc":
        # SGX enclave memory needs both: say which of the two is missing.
        missing = []
        if not caps.has_object_type("memory-backend-epc"):
            missing.append(f"{caps.path} has no object type memory-backend-epc")
        if not os.path.exists("/dev/sgx_enclave"):
            missing.append("the host has no SGX (/dev/sgx_enclave absent)")
        if missing:
            raise Unsupported("memory-backend-epc case not runnable: " + "; ".join(missing))
    elif qom and not caps.has_object_type(qom):
        raise Unsupported(f"{caps.path} has no object type {qom}")
    for feature in sc.requires:
        if not features.needed_on(feature, side):
            continue
        ok, reason = features.check(feature, caps.path)
        if not ok:
            raise Unsupported(reason)


def resolve_machine(sc: Scenario, src: Capabilities, dst: Capabilities) -> Tuple[str, bool]:
    """(machine type both sides run, pinned?). Same version: the scenario's own. Across
    versions, the versioned type the older side's alias stands for, as libvirt pins it,
    unless the scenario asks for it unpinned.

    :raise Unsupported: the newer side has no such machine type.
    """
    if src.version == dst.version or not sc.pin_machine:
        return sc.machine, False
    older, newer = (src, dst) if src.version < dst.version else (dst, src)
    pinned = older.resolve_machine(sc.machine)
    if not newer.has_machine(pinned):
        raise Unsupported(f"{newer.path} ({newer.version_str}) has no machine type {pinned} "
                          f"(the {older.version_str} side's {sc.machine}): no common "
                          f"versioned machine to pin")
    return pinned, pinned != sc.machine


def resolve_binaries(sc: Scenario, cfg: RunConfig) -> Binaries:
    """Probe both binaries for ``sc``'s architecture; pick dialect, accel and machine.

    :raise Unsupported: a capability the case needs is missing.
    :raise HarnessError: a probe failed (missing or foreign binary).
    """
    arch = arch_of(sc.guest)
    acfg = cfg.for_arch(arch)
    src, dst = probe(acfg.qemu_src), probe(acfg.qemu_dst)
    if sc.cross_version and src.version == dst.version:
        raise Unsupported(f"needs two QEMU versions (this run has {src.version_str} on both "
                          f"sides): pass --qemu-src and --qemu-dst of different versions, "
                          f"or use 'python -m harness versions'")
    dialect = choose_dialect(acfg, src, dst)
    sc = in_dialect(sc, dialect)
    check_supported(src, sc, dialect, "src")
    check_supported(dst, sc, dialect, "dst")
    accel = resolve_accel(acfg.accel, sc, src, dst)
    machine, pinned = resolve_machine(sc, src, dst)
    return Binaries(sc, arch, acfg, src, dst, dialect, accel, machine, pinned)


def prepare(sc: Scenario, cfg: RunConfig) -> CaseSetup:
    """:func:`resolve_binaries`, then build the guest (cached) and scale the timeouts."""
    bins = resolve_binaries(sc, cfg)
    guest = image(sc.guest)
    timeouts = cfg.timeouts if bins.accel == "kvm" else cfg.timeouts.scaled(2.0)
    return CaseSetup(bins, guest, timeouts)


def known_deviation(deviations: Sequence[expectations.Deviation], sc: Scenario,
                    cfg: RunConfig) -> Optional[expectations.Deviation]:
    """The entry that makes ``sc`` a strict expected failure in this run, if any: decided
    on the probed versions of the binaries the case really runs, its accel, machine and
    architecture. A case that cannot resolve has no entry: it skips or errors with its
    own reason."""
    if not deviations:
        return None
    try:
        bins = resolve_binaries(sc, cfg)
    except HarnessError:
        return None
    return expectations.find(deviations, sc.id, bins.run_info())


def check_binaries(cfg: RunConfig) -> None:
    """A missing, foreign or too old QEMU is a usage error up front, not a run of
    cancelled or broken cases. :raise UsageError: naming the option to fix."""
    for side, binary in (("src", cfg.qemu_src), ("dst", cfg.qemu_dst)):
        try:
            caps = probe(binary)
        except HarnessError as exc:
            raise UsageError(f"--qemu-{side}: {exc}") from None
        problems = caps.dialect_problems("" if cfg.dialect == "auto" else cfg.dialect)
        if problems:
            raise UsageError(
                f"--qemu-{side}: {caps.path} ({caps.version_str}) does not support "
                f"cpr-transfer: {'; '.join(problems)}. Install QEMU >= 10.0 "
                f"(scripts/setup-host.sh) or point --qemu-{side} at one.")


def short_version(caps: Capabilities) -> str:
    return ".".join(map(str, caps.version))


def run_facts(cfg: RunConfig) -> Dict[str, Any]:
    """The run's facts for its reports: each binary (x86 and aarch64, both sides), its
    version, the accelerator and dialect an x86 case gets. A binary that does not probe
    is named as such (the cases say why)."""
    facts: Dict[str, Any] = {"accel_requested": cfg.accel, "dialect_requested": cfg.dialect}
    caps: Dict[str, Capabilities] = {}
    for arch, prefix in (("x86_64", "qemu"), ("aarch64", "qemu_aarch64")):
        for side, binary in zip(("src", "dst"), cfg.binaries(arch)):
            key = f"{prefix}_{side}"
            facts[f"{key}_path"] = binary
            try:
                c = probe(binary)
            except HarnessError:
                facts[key] = "unknown (probe failed)"
                continue
            facts[key], facts[f"{key}_path"] = c.version_str, c.path
            facts[f"{key}_version"] = short_version(c)
            if arch == "x86_64":
                caps[side] = c
    if cfg.accel != "auto":
        facts["accel"] = cfg.accel
    elif len(caps) == 2:
        kvm = caps["src"].kvm_usable and caps["dst"].kvm_usable
        facts["accel"] = ("kvm" if kvm else "tcg") + " (auto)"
    else:
        facts["accel"] = "auto"
    if len(caps) == 2:
        try:
            facts["dialect"] = choose_dialect(cfg, caps["src"], caps["dst"]).name
        except HarnessError as exc:
            facts["dialect"] = f"none: {exc}"
        facts["cross_version"] = caps["src"].version != caps["dst"].version
    return facts
