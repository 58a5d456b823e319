"""What one QEMU binary offers for cpr-transfer: the :class:`Capabilities` a probe
(:mod:`harness.qemu.probe`) returns, with what follows from it (the dialect, and why a
binary cannot run cpr-transfer)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Tuple

DIALECT_RELEASED = "released-10x"
DIALECT_RFC_V1 = "rfc-v1"
DIALECT_NONE = "none"


@dataclass(frozen=True)
class Capabilities:
    """What one QEMU binary offers for cpr-transfer. Immutable; build it with :func:`probe`.

    Every field after ``version_str`` has a default so that tests and reports can
    build one by hand (``Capabilities(binary=..., path=..., version=..., version_str=...,
    mig_modes=(...))``).
    """

    binary: str
    """The name or path as the caller gave it."""
    path: str
    """Absolute path of the file that was run (looked up on PATH when ``binary`` has no
    ``/``); a wrapper script stays the script."""
    version: Tuple[int, int, int]
    version_str: str
    """All of ``--version``'s first line after ``QEMU emulator version``."""
    accels: Tuple[str, ...] = ()
    kvm_usable: bool = False
    kvm_reason: str = ""
    machines: Tuple[str, ...] = ()
    #: (alias, machine type) pairs from ``-machine help``: ``("q35", "pc-q35-10.0")``.
    machine_aliases: Tuple[Tuple[str, str], ...] = ()
    object_types: FrozenSet[str] = frozenset()
    mig_modes: Tuple[str, ...] = ()
    migrate_has_channels: bool = False
    channel_types: Tuple[str, ...] = ()
    migparams_has_cpr_uri: bool = False
    machine_props: FrozenSet[str] = frozenset()
    has_exit_with_parent: bool = False
    # Beyond the brief: where the facts came from.
    props_machine: str = ""
    """The machine type whose properties ``machine_props`` lists, e.g. ``pc-q35-10.0``."""
    default_machine: str = ""
    notes: Tuple[str, ...] = ()
    """Oddities met on the way that did not stop the probe."""

    # -- derived ---------------------------------------------------------------

    @property
    def has_cpr_transfer(self) -> bool:
        return "cpr-transfer" in self.mig_modes

    @property
    def dialect(self) -> str:
        """``released-10x``, ``rfc-v1`` or ``none``: which cpr-transfer interface the
        binary speaks (whether it is complete is :meth:`cpr_transfer_problems`)."""
        if not self.has_cpr_transfer:
            return DIALECT_NONE
        if self.migrate_has_channels and "cpr" in self.channel_types:
            return DIALECT_RELEASED
        if self.migparams_has_cpr_uri or "anon-alloc" in self.machine_props:
            return DIALECT_RFC_V1
        return DIALECT_NONE

    def has_object_type(self, name: str) -> bool:
        return name in self.object_types

    def resolve_machine(self, name: str) -> str:
        """The versioned machine type behind ``name`` (``q35`` -> ``pc-q35-10.0``); a
        type that is no alias is itself."""
        return dict(self.machine_aliases).get(name, name)

    def has_machine(self, name: str) -> bool:
        return name in self.machines

    def cpr_transfer_problems(self) -> List[str]:
        """Why this binary cannot run the released (QEMU >= 10.0) cpr-transfer
        interface; empty when it can."""
        problems: List[str] = []
        if not self.mig_modes:
            problems.append(
                "no 'cpr-transfer' migration mode: the QMP schema has no MigMode enum "
                "(migrate-set-parameters has no 'mode' parameter), so this QEMU "
                "predates CPR")
        elif not self.has_cpr_transfer:
            problems.append(
                f"MigMode has no 'cpr-transfer' (modes: {', '.join(self.mig_modes)})")
        if self.dialect == DIALECT_RFC_V1:
            rfc_bits = []
            if self.migparams_has_cpr_uri:
                rfc_bits.append("migrate-set-parameters 'cpr-uri'")
            if "anon-alloc" in self.machine_props:
                rfc_bits.append("-machine anon-alloc")
            problems.append(
                "this is the RFC v1 cpr-transfer dialect (" + ", ".join(rfc_bits) +
                "), not the released 10.x interface (a 'cpr' channel in migrate's "
                "'channels', -machine aux-ram-share)")
        if not self.migrate_has_channels:
            problems.append("the 'migrate' command has no 'channels' argument")
        elif "cpr" not in self.channel_types:
            shown = ", ".join(self.channel_types) if self.channel_types else "none found"
            problems.append(
                f"MigrationChannelType has no 'cpr' channel type (types: {shown})")
        if "aux-ram-share" not in self.machine_props:
            where = f"machine type {self.props_machine!r}" if self.props_machine \
                else "the machine"
            extra = " (it has 'anon-alloc', the RFC v1 spelling)" \
                if "anon-alloc" in self.machine_props else ""
            if not self.machine_props:
                extra = " (no machine properties could be listed)"
            problems.append(f"{where} has no 'aux-ram-share' property{extra}")
        return problems

    def rfc_v1_problems(self) -> List[str]:
        """Why this binary cannot run the RFC v1 / cpr-transfer series interface
        (``cpr-uri``, ``-cpr-uri``, ``-machine anon-alloc``); empty when it can."""
        problems: List[str] = []
        if not self.has_cpr_transfer:
            problems.append("MigMode has no 'cpr-transfer'"
                            + (f" (modes: {', '.join(self.mig_modes)})" if self.mig_modes
                               else " (no MigMode at all)"))
        if not self.migparams_has_cpr_uri:
            problems.append("migrate-set-parameters has no 'cpr-uri' (the rfc-v1 cpr "
                            "channel)")
        if self.machine_props and "anon-alloc" not in self.machine_props:
            problems.append("the machine has no 'anon-alloc' property")
        return problems

    def dialect_problems(self, dialect: str = "") -> List[str]:
        """Why this binary cannot run cpr-transfer in ``dialect`` (default: the one it
        speaks); empty when it can. A binary of no known dialect is judged against the
        released interface."""
        if (dialect or self.dialect) == DIALECT_RFC_V1:
            return self.rfc_v1_problems()
        return self.cpr_transfer_problems()

    # -- output ----------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """JSON-serialisable; frozensets become sorted lists, derived facts included."""
        d: Dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, frozenset):
                v = sorted(v)
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        d["has_cpr_transfer"] = self.has_cpr_transfer
        d["dialect"] = self.dialect
        d["cpr_transfer_problems"] = self.cpr_transfer_problems()
        d["dialect_problems"] = self.dialect_problems()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Capabilities":
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        kw: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if f.name in ("object_types", "machine_props"):
                v = frozenset(v)
            elif f.name == "machine_aliases":
                v = tuple(tuple(pair) for pair in v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[f.name] = v
        return cls(**kw)

    def summary(self) -> str:
        """A few readable lines for the CLI; the last says whether cpr-transfer works."""

        def yn(b: bool) -> str:
            return "yes" if b else "no"

        def lst(xs: Iterable[str]) -> str:
            xs = list(xs)
            return ", ".join(xs) if xs else "(none)"

        where = self.path if self.path == self.binary else f"{self.binary} -> {self.path}"
        kvm = "usable" if self.kvm_usable else f"not usable: {self.kvm_reason}"
        backends = sorted(t for t in self.object_types if t.startswith("memory-backend-"))
        lines = [
            f"QEMU {self.version_str}",
            f"  binary:            {where}",
            f"  accelerators:      {lst(self.accels)} (KVM {kvm})",
            f"  machine types:     {len(self.machines)}"
            + (f" (default {self.default_machine})" if self.default_machine else "")
            + (f"; properties read from {self.props_machine}" if self.props_machine else ""),
            f"  machine props:     aux-ram-share: {yn('aux-ram-share' in self.machine_props)}, "
            f"anon-alloc: {yn('anon-alloc' in self.machine_props)}",
            f"  migration modes:   {lst(self.mig_modes)}",
            f"  migrate channels:  {yn(self.migrate_has_channels)}"
            + (f" (channel types: {lst(self.channel_types)})" if self.migrate_has_channels else ""),
            f"  cpr-uri parameter: {yn(self.migparams_has_cpr_uri)}",
            f"  memory backends:   {lst(backends)}",
            f"  exit-with-parent:  {yn(self.has_exit_with_parent)}",
            f"  dialect:           {self.dialect}",
        ]
        for n in self.notes:
            lines.append(f"  note: {n}")
        problems = self.dialect_problems()
        if problems:
            lines.append("cpr-transfer: NOT supported: " + "; ".join(problems))
        elif self.dialect == DIALECT_RFC_V1:
            lines.append("cpr-transfer: supported, in the rfc-v1 dialect (cpr-uri, -cpr-uri, "
                         "-machine anon-alloc=memfd)")
        else:
            lines.append("cpr-transfer: supported")
        return "\n".join(lines)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.summary()


