"""Known deviations: where a given QEMU does not do what its documentation says.

A case stays strict. An entry here marks it as a *known* failure under stated
conditions, with a reason and a link; adapters run it as a strict expected failure, so
an unexpected pass (QEMU got fixed) is reported. An entry naming a case that does not
exist is an error, not silently ignored.

File format (TOML), one table per entry::

    [[deviation]]
    case = "channel/main-inet-port0-dst"      # a scenario id
    reason = "QEMU 10.0.2 accepts port 0 on the target's main channel"
    link = "docs/deviations.md#port-0"
    [deviation.when]                          # all conditions must hold; all optional
    qemu = ">=10.0,<10.1"                     # both sides' QEMU version (PEP 440 set)
    accel = ["kvm", "tcg"]                    # one value or a list
    machine = "q35"
    arch = "x86_64"
    kernel = ">=6.0"                          # host kernel release (major.minor.patch)
"""
from __future__ import annotations

import platform
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from harness.core.errors import UsageError

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "expectations" / "known-deviations.toml"
_VERSIONED = ("qemu", "kernel")
_EXACT = ("accel", "machine", "arch")


@dataclass(frozen=True)
class RunInfo:
    """What an expectation may be conditioned on, for one case in one run."""
    qemu_src: str          # "10.0.2"
    qemu_dst: str
    accel: str
    machine: str
    arch: str = field(default_factory=platform.machine)
    kernel: str = field(default_factory=lambda: _kernel_version(platform.release()))


def _kernel_version(release: str) -> str:
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    return ".".join(x or "0" for x in m.groups()) if m else "0"


@dataclass(frozen=True)
class Deviation:
    case: str
    reason: str
    link: str
    when: Dict[str, Any]
    source: str

    def matches(self, case: str, info: RunInfo) -> bool:
        if case != self.case:
            return False
        for key, cond in self.when.items():
            if key == "qemu":
                spec = SpecifierSet(cond)
                if not (Version(info.qemu_src) in spec and Version(info.qemu_dst) in spec):
                    return False
            elif key == "kernel":
                if Version(info.kernel) not in SpecifierSet(cond):
                    return False
            else:
                allowed = [cond] if isinstance(cond, str) else list(cond)
                if getattr(info, key) not in allowed:
                    return False
        return True

    def describe(self) -> str:
        return f"known deviation: {self.reason} ({self.link})"


def load(path: Path = DEFAULT_FILE, known_cases: Optional[Iterable[str]] = None) -> List[Deviation]:
    """Read and validate an expectations file. Any problem is a UsageError."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"expectations file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    unknown_top = set(data) - {"deviation"}
    if unknown_top:
        raise UsageError(f"{path}: unknown top-level keys {sorted(unknown_top)}; "
                         f"use [[deviation]] tables")
    known = set(known_cases) if known_cases is not None else None
    out: List[Deviation] = []
    for i, raw in enumerate(data.get("deviation", []), 1):
        where = f"{path}: deviation #{i}"
        for key in ("case", "reason", "link"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise UsageError(f"{where}: '{key}' is required (a non-empty string)")
        extra = set(raw) - {"case", "reason", "link", "when"}
        if extra:
            raise UsageError(f"{where}: unknown keys {sorted(extra)}")
        when = raw.get("when", {})
        for key, cond in when.items():
            if key in _VERSIONED:
                try:
                    SpecifierSet(cond)
                except (InvalidSpecifier, TypeError):
                    raise UsageError(f"{where}: when.{key} = {cond!r} is not a version "
                                     f"range like '>=10.0,<10.1'") from None
            elif key not in _EXACT:
                raise UsageError(f"{where}: unknown condition when.{key}; known: "
                                 f"{', '.join(_VERSIONED + _EXACT)}")
        if known is not None and raw["case"] not in known:
            raise UsageError(f"{where}: case {raw['case']!r} matches no scenario "
                             f"(see 'python -m harness list')")
        out.append(Deviation(raw["case"], raw["reason"].strip(), raw["link"], dict(when),
                             str(path)))
    return out


def find(deviations: Sequence[Deviation], case: str, info: RunInfo) -> Optional[Deviation]:
    for d in deviations:
        if d.matches(case, info):
            return d
    return None
